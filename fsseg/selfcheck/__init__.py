"""Check that fsseg trains, tests and predicts correctly on this machine's devices, in minutes.

Every run is the real ``fsseg`` command line (a subprocess, as a user runs it) on the small model
(DINOv2-tiny at 112, the built-in synthetic dataset), one PASS / FAIL / SKIP line per check:

* CPU (always): ``fit`` + ``test`` in fp32 (the reference); DDP with 2 gloo processes (``fit`` +
  ``test``), whose checkpoint tested on 1 process gives the same metrics (``DDP_TOLERANCE``); a
  ``predict`` run writing one mask per query.
* Each CUDA GPU precision (``32``, ``bf16-mixed``, ``16-mixed``): ``fit`` + ``test`` on the GPU (its
  throughput and peak GPU memory printed), and the CPU reference checkpoint tested on the GPU at that
  precision against the CPU's own test (``GPU_TOLERANCE``, mIoU points); DDP over every visible GPU
  when there are 2 or more; ``predict`` on the GPU.
* ``--full-size`` (GPU): the FS-DINO ``full`` stage-2 training step at 518 in bf16 with the real
  loader (random weights; episodes/s, TFLOP/s counted on the frozen encoder's FLOPs, whether the
  loader or the GPU waits) and 1-shot inference batched on one support set (queries/s).

Without a GPU the GPU checks are listed as SKIP with the reason. Exit status 1 when a check fails.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Optional

from fsseg.selfcheck.check import Check
from fsseg.selfcheck.cli_checks import DDP_TOLERANCE, GPU_LOSS_RTOL, GPU_TOLERANCE, cpu_checks, gpu_checks
from fsseg.selfcheck.full_size import full_size_checks

__all__ = ["full_size_checks", "main"]


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(prog="fsseg selfcheck", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--full-size", action="store_true",
                   help="GPU only: also time the FS-DINO full stage-2 step at 518 in bf16 and batched inference")
    p.add_argument("--work_dir", default=None, help="where the runs are written (default: a temporary folder)")
    p.add_argument("--timeout", type=float, default=900, help="seconds any one run may take")
    a = p.parse_args(argv)
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    checks: list[Check] = []

    def emit(check: Check) -> None:
        checks.append(check)
        print(check.line(), flush=True)

    print(f"fsseg selfcheck: {gpus} CUDA GPU(s) visible"
          + (f" ({torch.cuda.get_device_name(0)})" if gpus else "") + f", torch {torch.__version__}; "
          f"tolerances: GPU vs CPU mIoU/FB-IoU points {GPU_TOLERANCE}, test loss relative {GPU_LOSS_RTOL}; "
          f"DDP vs 1 process {DDP_TOLERANCE} points", flush=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fsseg-selfcheck-") as tmp:
        work = Path(a.work_dir) if a.work_dir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        reference = cpu_checks(work, a.timeout, emit)
        if gpus:
            gpu_checks(work, a.timeout, emit, reference, gpus)
        else:
            for what in ("fit+test on 1 GPU in 32, bf16-mixed and 16-mixed (vs the CPU)", "DDP over the GPUs",
                         "predict on the GPU"):
                emit(Check(what, "SKIP", "no CUDA GPU visible"))
        if a.full_size:
            if gpus:
                full_size_checks(emit)
            else:
                emit(Check("full-size (FS-DINO full step at 518, batched inference)", "SKIP", "needs a CUDA GPU"))
    failed = [c for c in checks if c.status == "FAIL"]
    print(f"fsseg selfcheck: {sum(c.status == 'PASS' for c in checks)} passed, {len(failed)} failed, "
          f"{sum(c.status == 'SKIP' for c in checks)} skipped in {time.perf_counter() - t0:.0f} s")
    if failed:
        raise SystemExit(1)
