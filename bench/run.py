"""Cost benchmark (``make bench``): FS-DINO few-shot segmentation vs dual-encoder (DINOv2 + SAM)
designs, fp32 and bf16, against the machine's measured matrix-multiply peak.

``python -m bench [--quick] [--output-dir DIR] [--sections a,b]`` runs the measurements of
``MEASUREMENTS`` in order (one module each, any subset with ``--sections``: ``--sections reuse``)
and writes ``results.json``, ``results.md`` and PNG plots. Full-size models with random weights
(speed does not depend on weight values), inputs at 518x518 (DINOv2's resolution; SAM resizes to its
1024x1024 input itself); the bf16-vs-fp32 accuracy row uses the trained demo model (``make demo``).

Method
------
* ``bench.machine`` first, in every run: the best GFLOP/s of a 2048^3 matrix product in fp32 and in
  bf16 with the threads the models use. Every inference row carries its FLOPs (counted once per
  model with ``fsseg.flops.count_flops``), achieved GFLOP/s and fraction of the
  peak of its precision.
* Every latency is the median of several timed runs after warm-up runs (``bench.common.timeit``, the
  one timing helper; CUDA events + synchronize on a GPU), under ``torch.inference_mode()``
  (training steps: autograd on, optimiser step included).
* bf16 rows: ``FSDINO.set_precision("bf16-mixed")`` (``fsseg.precision``): the frozen DINOv2 and adapter
  held in bf16 weights, the rest under autocast, cosines / Mamba scan / SAM decoder in fp32.
* Peak memory (CPU): each model is measured in a **fresh subprocess**; before each configuration the
  kernel's peak-RSS counter is reset (``/proc/self/clear_refs`` = 5) and the figure is
  ``VmHWM - RSS after the model and inputs were built``, i.e. the extra resident memory the
  computation needed on top of the weights (fallback where clear_refs is unavailable:
  ``getrusage`` maxrss, configurations run in increasing size). On GPU: ``torch.cuda.max_memory_allocated``
  after ``reset_peak_memory_stats``, minus the memory allocated before the run.
* Dual-encoder rows (Matcher / VRP-SAM style): the same DINOv2 plus a SAM image encoder run on the
  query and on every support. Their latency is composed from passes measured in this run (DINOv2 on
  1+K images, exactly as FS-DINO runs it, + (1+K) x the measured SAM per-image latency, SAM run one
  image at a time as those methods do); the prompt/decoder part of those methods (SAM's prompt
  encoder + mask decoder, a few ms, or Matcher's point sampling) is left out: it is negligible next
  to the encoders, so the dual-encoder rows are a lower bound of those methods' cost.
* Comparisons are ratios of figures measured in the same run.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import time
from pathlib import Path
from typing import List, Optional

from bench.common import log, make_config

# One module per measurement, run in this order by `make bench`; each has
# `measure(cfg, res, devices, **opts)` and runs alone with `python -m bench --sections <name>`.
# `machine` (the matmul peak) always runs first. Only bench/__main__.py imports this module.
MEASUREMENTS = ["machine", "inference", "training", "reuse", "scaling", "specialized", "loader"]
BENCH_DIR = Path(__file__).resolve().parent


def main(argv: Optional[List[str]] = None) -> int:
    from bench import report

    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny models, few reps (< 1 min), for tests")
    ap.add_argument("--output-dir", default=None,
                    help="default: bench/ for the whole benchmark, bench/partial/<sections>/ for a subset")
    ap.add_argument("--sections", default=",".join(MEASUREMENTS[1:]),
                    help=f"comma-separated subset of {', '.join(MEASUREMENTS[1:])} (machine always runs)")
    ap.add_argument("--demo-dir", default=None,
                    help="outputs/demo folder of `make demo` (default: <repo>/outputs/demo) for the bf16 accuracy row")
    ap.add_argument("--override", default=None, metavar="JSON",
                    help='configuration keys to replace for a partial run, e.g. \'{"shots": [1], "variants": ["full"]}\' '
                         "(recorded in results.json; the full benchmark uses none)")
    ap.add_argument("--from-json", default=None, nargs="+",
                    help="re-render results.md, targets and plots from results.json file(s) (merged in order)")
    args = ap.parse_args(argv)
    sections = [s for s in args.sections.split(",") if s and s != "machine"]
    unknown = [s for s in sections if s not in MEASUREMENTS]
    if unknown:
        ap.error(f"unknown section(s) {unknown}; choose from {MEASUREMENTS[1:]}")
    whole = set(sections) >= set(MEASUREMENTS[1:])
    outdir = Path(args.output_dir or (BENCH_DIR if whole else BENCH_DIR / "partial" / "-".join(sections)))
    outdir.mkdir(parents=True, exist_ok=True)
    if args.from_json:
        res = report.merge_results(args.from_json)
        report.finish(res["config"], res, outdir)
        return 0

    import torch

    t_start = time.perf_counter()
    cfg = make_config(args.quick)
    if args.override:
        extra = json.loads(args.override)
        unknown = sorted(set(extra) - set(cfg))
        if unknown:
            ap.error(f"--override: unknown configuration key(s) {unknown}; known: {sorted(cfg)}")
        cfg.update(extra, overrides=extra)
    res: dict = dict(config=dict(cfg), inference={}, skipped=[], sections=sections)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for name in ["machine", *sections]:
        importlib.import_module(f"bench.{name}").measure(cfg, res, devices, sections=frozenset(sections),
                                                         demo_dir=args.demo_dir)
        (outdir / "results.partial.json").write_text(json.dumps(res, indent=1))
        if name == "machine":
            log(f"machine: {res['machine']}")
    try:
        res["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    res["runtime_s"] = time.perf_counter() - t_start
    report.finish(cfg, res, outdir)
    (outdir / "results.partial.json").unlink(missing_ok=True)
    log(f"done in {res['runtime_s'] / 60:.1f} min -> {outdir}/results.md, results.json, {', '.join(res['plots'])}")
    for t in res["targets"]:
        log(f"{'PASS' if t['passed'] else 'MISS'}: {t['name']}: {t['measured']}")
    return 0
