"""Targets, ``results.md`` and the plots, from the results dict (or ``results.json`` files:
``python -m bench --from-json results.json``): ``targets``, ``markdown``, ``plots``; ``finish`` writes
them all."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import List

from bench.common import log
from bench.report.markdown import write_markdown
from bench.report.plots import make_plots
from bench.report.targets import targets


def fill_pending(res: dict) -> None:
    inf = res.get("inference", {}).get("cpu")
    for r in res.get("scaling", {}).get("resolution", {}).get("rows", []):
        if r.get("pending_main_table") and inf:
            row = next(x for x in inf["rows"] if x["kind"] == "fsdino_full" and x["shots"] == 1)
            fl = next(x for x in inf["rows"] if x["kind"] == "floor" and x["shots"] == 1)
            r.update(fsdino=row["timing"], dinov2_floor=fl["timing"], from_main_table=True)
            r.pop("pending_main_table")
    rows = res.get("scaling", {}).get("resolution", {}).get("rows")
    if rows and inf:
        size = res.get("config", {}).get("size")
        if size and not any(r.get("resolution") == size for r in rows):  # dropped by an older split run
            row = next(x for x in inf["rows"] if x["kind"] == "fsdino_full" and x["shots"] == 1)
            fl = next(x for x in inf["rows"] if x["kind"] == "floor" and x["shots"] == 1)
            rows.append(dict(resolution=size, fsdino=row["timing"], dinov2_floor=fl["timing"], from_main_table=True))
        res["scaling"]["resolution"]["rows"] = sorted((r for r in rows if "fsdino" in r), key=lambda r: r["resolution"])


def merge_results(paths: List[str]) -> dict:
    res = json.loads(Path(paths[0]).read_text())
    for p in paths[1:]:
        other = json.loads(Path(p).read_text())
        measured = set(other.get("sections", []))  # a later run's sections replace the earlier figures
        for k, v in other.items():
            if k == "training":
                res.setdefault("training", {}).update(v)
            elif k in measured or k in ("reuse", "scaling", "specialized_vs_episodic") or k not in res:
                res[k] = v
        res.setdefault("skipped", []).extend(x for x in other.get("skipped", []) if x not in res.get("skipped", []))
        res["runtime_s"] = res.get("runtime_s", 0) + other.get("runtime_s", 0)
        res.setdefault("merged_from", []).append(p)
    return res


def _check_finite(obj, path="") -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_finite(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _check_finite(v, f"{path}[{i}]")
    elif isinstance(obj, float) and not math.isfinite(obj):
        log(f"warning: non-finite value at {path}")


def finish(cfg: dict, res: dict, outdir: Path) -> None:
    """Targets, plots, ``results.json`` and ``results.md`` in ``outdir`` from the results dict."""
    from bench.inference import normalize_dual

    fill_pending(res)
    normalize_dual(cfg, res)
    res["targets"] = targets(cfg, res) if res.get("inference") or res.get("loader") else []
    res["plots"] = make_plots(cfg, res, outdir)
    _check_finite(res)
    (outdir / "results.json").write_text(json.dumps(res, indent=1))
    write_markdown(cfg, res, outdir / "results.md")
    # bench.distillfss (a separate run: it needs `make demo`'s trained model) keeps its section of results.md
    distillfss_json = outdir / "distillfss.json"
    if distillfss_json.is_file():
        from bench.distillfss import to_markdown, write_section

        write_section(outdir / "results.md", to_markdown(json.loads(distillfss_json.read_text())))
