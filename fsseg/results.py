"""``fsseg results``: the paper's tables from run folders (``results.json``) or offline W&B runs.

    fsseg results runs/                                   Table 1/2 layout (mIoU and FB-IoU)
    fsseg results runs/ --table table4                    ablation rows by variant
    fsseg results runs/ --table table3 --davis full=out/global_results-val.csv
    fsseg results runs/ --rows variant --cols benchmark,shots --metric test/fbiou   any pivot
    fsseg results --wandb runs/ --format latex            from the offline W&B runs instead

A cell is the mean over the seeds of its runs, with their spread (``mean ± std (n)``) when there are
several; a single run scored under several evaluation seeds (``hdmnet``'s 10) shows their spread
(``mean ± std (10 test seeds)``); a cell no run fills stays empty; two runs of the same cell and
seed are both shown (``a / b (duplicates)``) and listed under the table, never one replacing the other. Runs tested
at the end of their own fit (``fit+test``) and test-only runs (``test``) are separate rows.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Optional

from fsseg.runs import RESULTS_FILE, RUN_FILE, run_keys

METRIC_NAMES = {"test/miou": "mIoU", "test/fbiou": "FB-IoU"}
BENCHMARK_NAMES = {"pascal5i": "PASCAL-5i", "coco20i": "COCO-20i", "fss1000": "FSS-1000"}
# Table 4 of FS-DINO: the ablation rows, in the paper's order, by fsseg variant (docs/variants)
ABLATION_ROWS = {"ba_pcs": "BA+PCS", "compact": "BA+SVP+PCS", "full": "BA+SVP+PCS+4D", "uino": "UINO-FSS"}


# ------------------------------------------------------------------------------------ reading
def _flatten(prefix: str, value, out: dict) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value


def from_run_folders(roots: Iterable[Path], experiment: Optional[str] = None) -> list[dict]:
    """One record per run folder holding a ``results.json``: its keys, job, metrics and folder."""
    records = []
    for root in roots:
        root = Path(root)
        files = [root / RESULTS_FILE] if (root / RESULTS_FILE).is_file() else sorted(root.rglob(RESULTS_FILE))
        for f in files:
            try:
                res = json.loads(f.read_text())
                run = json.loads((f.parent / RUN_FILE).read_text()) if (f.parent / RUN_FILE).is_file() else {}
            except (OSError, json.JSONDecodeError) as e:
                print(f"fsseg results: skipping {f} ({e})", file=sys.stderr)
                continue
            rec = {**(res.get("keys") or run.get("keys") or {}), "experiment": res.get("experiment", run.get("experiment")),
                   "job": res.get("job", "?"), "source": str(f.parent), "finished": res.get("finished", 0)}
            rec.update(res.get("metrics") or {})
            if experiment is None or rec["experiment"] == experiment:
                records.append(rec)
    return records


def from_wandb(roots: Iterable[Path], experiment: Optional[str] = None) -> list[dict]:
    """One record per offline W&B run whose summary holds test metrics (keys from its logged config)."""
    from fsseg.wandb_records import offline_runs, read_run

    records = []
    for root in roots:
        for d in offline_runs(root):
            run = read_run(d)
            summary = run["summary"]
            if not any(k in summary for k in METRIC_NAMES):
                continue
            rec = {**run_keys(run["config"]), "experiment": run.get("group") or None,
                   "job": summary.get("fsseg/job", run.get("job_type") or "?"), "source": str(d),
                   "finished": summary.get("_timestamp", 0)}
            rec.update({k: v for k, v in summary.items() if k.startswith("test/") and isinstance(v, (int, float))})
            if experiment is None or rec["experiment"] == experiment:
                records.append(rec)
    return records


# ------------------------------------------------------------------------------------- cells
IDENTITY_KEYS = ("experiment", "job", "variant", "objective", "backbone", "image_size", "benchmark", "fold",
                 "shots", "protocol", "model_class")


class Cell:
    """The runs of one table cell, by run identity (every key but the seed) and seed. A cell that
    spans several identities (a pivot over fewer keys) is the mean of their seed means; two runs of
    one identity and seed are duplicates, all shown."""

    def __init__(self) -> None:
        self.runs: dict = defaultdict(lambda: defaultdict(list))
        self.eval_seeds: list[float] = []  # the evaluation seeds' figures of the cell's one run

    def add(self, rec: dict, value: float, source: str, metric: Optional[str] = None) -> None:
        self.runs[tuple(rec.get(k) for k in IDENTITY_KEYS)][rec.get("seed")].append((value, source))
        if metric is not None:
            # HDMNet scores one model under 10 evaluation seeds (test.py:152-175): test/miou_seed{s}
            self.eval_seeds = [float(v) for k, v in sorted(rec.items()) if k.startswith(f"{metric}_seed")]

    def _seed_means(self) -> list[list[float]]:
        return [[runs[0][0] for runs in seeds.values()] for seeds in self.runs.values()]

    def mean(self) -> Optional[float]:
        per_id = [statistics.fmean(v) for v in self._seed_means() if v]
        return statistics.fmean(per_id) if per_id else None

    def duplicates(self) -> list[tuple]:
        return [(seed, runs) for seeds in self.runs.values() for seed, runs in seeds.items() if len(runs) > 1]

    def text(self, digits: int = 1) -> str:
        if not self.runs:
            return ""
        if self.duplicates():
            return " / ".join(f"{v:.{digits}f}" for seeds in self.runs.values() for runs in seeds.values()
                              for v, _ in runs) + " (duplicates)"
        if len(self.runs) > 1:
            return f"{self.mean():.{digits}f} (mean of {len(self.runs)})"
        (vals,) = self._seed_means()
        if len(vals) == 1 and len(self.eval_seeds) > 1:
            return (f"{vals[0]:.{digits}f} ± {statistics.stdev(self.eval_seeds):.{digits}f} "
                    f"({len(self.eval_seeds)} test seeds)")
        if len(vals) == 1:
            return f"{vals[0]:.{digits}f}"
        return f"{statistics.fmean(vals):.{digits}f} ± {statistics.stdev(vals):.{digits}f} ({len(vals)})"


class Table:
    def __init__(self, title: str, columns: list[str]) -> None:
        self.title, self.columns = title, columns
        self.rows: dict[str, dict[str, object]] = {}

    def cell(self, row: str, col: str) -> Cell:
        return self.rows.setdefault(row, {}).setdefault(col, Cell())

    def text(self, row: str, col: str) -> str:
        c = self.rows.get(row, {}).get(col)
        if c is None:
            return ""
        return c if isinstance(c, str) else c.text()

    def duplicates(self) -> list[str]:
        out = []
        for row, cols in self.rows.items():
            for col, c in cols.items():
                if isinstance(c, Cell):
                    for seed, runs in c.duplicates():
                        out.append(f"{row} / {col} (seed {seed}): {len(runs)} runs: "
                                   + ", ".join(f"{v:.2f} {src}" for v, src in runs))
        return out


def _label(rec: dict, keys: list[str]) -> str:
    return " ".join(f"{rec.get(k)}" if k in ("variant", "benchmark") else f"{k}={rec.get(k)}" for k in keys)


def _row_name(rec: dict, row_keys: list[str], jobs: set) -> str:
    name = _label(rec, row_keys)
    return f"{name} (test-only)" if len(jobs) > 1 and rec.get("job") == "test" else name


# ------------------------------------------------------------------------------------ layouts
def table_folds(records: list[dict], metric: str) -> list[Table]:
    """FS-DINO Table 1 / 2: per benchmark, rows = variant, columns = 1-shot Fold0..3 Mean | 5-shot ...
    The mean is over the folds the table has; a row missing one of them has no mean."""
    tables = []
    jobs = {r.get("job") for r in records}
    for bench in sorted({r.get("benchmark") for r in records}, key=str):
        recs = [r for r in records if r.get("benchmark") == bench and metric in r]
        if not recs:
            continue
        folds = sorted({r.get("fold") for r in recs}, key=lambda f: (f is None, f))
        shots = sorted({r.get("shots") for r in recs}, key=lambda s: (s is None, s))
        order = [c for s in shots for c in [f"{s}-shot Fold{f}" for f in folds] + [f"{s}-shot Mean"]]
        t = Table(f"{BENCHMARK_NAMES.get(bench, bench)} {METRIC_NAMES.get(metric, metric)}", order)
        for r in recs:
            t.cell(_row_name(r, ["variant"], jobs), f"{r.get('shots')}-shot Fold{r.get('fold')}").add(
                r, float(r[metric]), r["source"], metric)
        for cells in t.rows.values():
            for s in shots:
                means = [cells.get(f"{s}-shot Fold{f}") for f in folds]
                if all(isinstance(c, Cell) and c.mean() is not None for c in means):
                    cells[f"{s}-shot Mean"] = f"{statistics.fmean(c.mean() for c in means):.1f}"
        tables.append(t)
    return tables


def table_ablation(records: list[dict], metric: str) -> list[Table]:
    """FS-DINO Table 4: rows = the ablation variants in the paper's order, columns = benchmark, fold, shot."""
    jobs = {r.get("job") for r in records}
    recs = [r for r in records if metric in r]
    cols = sorted({(r.get("benchmark"), r.get("fold"), r.get("shots")) for r in recs},
                  key=lambda c: tuple((x is None, str(x)) for x in c))
    names = [f"{BENCHMARK_NAMES.get(b, b)} fold{f} {s}-shot" for b, f, s in cols]
    t = Table(f"Ablation ({METRIC_NAMES.get(metric, metric)})", names)
    order = {v: i for i, v in enumerate(ABLATION_ROWS)}
    for r in sorted(recs, key=lambda r: (order.get(r.get("variant"), len(order)), str(r.get("variant")))):
        row = ABLATION_ROWS.get(r.get("variant"), str(r.get("variant")))
        if len(jobs) > 1 and r.get("job") == "test":
            row += " (test-only)"
        col = names[cols.index((r.get("benchmark"), r.get("fold"), r.get("shots")))]
        t.cell(row, col).add(r, float(r[metric]), r["source"], metric)
    return [t]


def table_cross_domain(records: list[dict], davis: dict) -> list[Table]:
    """FS-DINO Table 3: FSS-1000 mIoU (1-shot, 5-shot) and DAVIS-2017 J&F (x100, from
    ``fsseg davis-eval``'s global_results CSV given per variant with ``--davis VARIANT=CSV``)."""
    fss = [r for r in records if r.get("benchmark") == "fss1000" and "test/miou" in r]
    shots = sorted({r.get("shots") for r in fss})
    cols = [f"FSS-1000 {s}-shot mIoU" for s in shots] + ["DAVIS-17 J&F"]
    t = Table("Cross-dataset", cols)
    jobs = {r.get("job") for r in fss}
    for r in fss:
        t.cell(_row_name(r, ["variant"], jobs), f"FSS-1000 {r.get('shots')}-shot mIoU").add(
            r, float(r["test/miou"]), r["source"], "test/miou")
    for variant, path in davis.items():
        with open(path, newline="") as f:
            row = next(csv.DictReader(f))
        # the official evaluator's CSV holds fractions (davis2017-evaluation); the paper reports x100
        t.cell(variant, "DAVIS-17 J&F").add({"variant": variant}, 100 * float(row["J&F-Mean"]), str(path))
    return [t]


def table_pivot(records: list[dict], rows: list[str], cols: list[str], metric: str) -> list[Table]:
    recs = [r for r in records if metric in r]
    jobs = {r.get("job") for r in recs}
    col_keys = sorted({tuple(r.get(k) for k in cols) for r in recs}, key=lambda c: tuple(str(x) for x in c))
    names = [" ".join(f"{k}={v}" for k, v in zip(cols, c)) for c in col_keys]
    t = Table(f"{METRIC_NAMES.get(metric, metric)} by {', '.join(rows)} x {', '.join(cols)}", names)
    for r in sorted(recs, key=lambda r: _label(r, rows)):
        col = names[col_keys.index(tuple(r.get(k) for k in cols))]
        t.cell(_row_name(r, rows, jobs), col).add(r, float(r[metric]), r["source"], metric)
    return [t]


# ------------------------------------------------------------------------------------ formats
def render(tables: list[Table], fmt: str) -> str:
    out = []
    for t in tables:
        header = ["", *t.columns]
        body = [[row, *(t.text(row, c) for c in t.columns)] for row in t.rows]
        if fmt == "markdown":
            out.append(f"**{t.title}**\n")
            out.append("| " + " | ".join(header) + " |")
            out.append("|" + "---|" * len(header))
            out += ["| " + " | ".join(r) + " |" for r in body]
        elif fmt == "latex":
            esc = lambda s: s.replace("&", r"\&").replace("_", r"\_").replace("±", r"$\pm$")  # noqa: E731
            out.append(f"% {t.title}")
            out.append(r"\begin{tabular}{l" + "c" * len(t.columns) + "}")
            out.append(r"\toprule")
            out.append(" & ".join(esc(h) for h in header) + r" \\")
            out.append(r"\midrule")
            out += [" & ".join(esc(c) for c in r) + r" \\" for r in body]
            out.append(r"\bottomrule")
            out.append(r"\end{tabular}")
        else:
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            w.writerow([t.title, *t.columns])
            w.writerows(body)
            out.append(buf.getvalue().rstrip("\n"))
        dups = t.duplicates()
        if dups:
            prefix = "% " if fmt == "latex" else "# " if fmt == "csv" else ""
            out.append(f"{prefix}duplicate runs (shown side by side, none dropped):")
            out += [f"{prefix}  {d}" for d in dups]
        out.append("")
    return "\n".join(out)


def build_tables(records: list[dict], table: str, rows: list[str], cols: list[str], metric: Optional[str],
                 davis: dict) -> list[Table]:
    if table == "table1":
        metrics = [metric] if metric else ["test/miou", "test/fbiou"]
        return [t for m in metrics for t in table_folds(records, m)]
    if table == "table4":
        return table_ablation(records, metric or "test/miou")
    if table == "table3":
        return table_cross_domain(records, davis)
    return table_pivot(records, rows, cols, metric or "test/miou")


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(prog="fsseg results", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("folders", nargs="*", default=["runs"], help="run folders or folders above them (default runs/)")
    p.add_argument("--wandb", action="store_true", help="read the offline W&B runs under the folders instead")
    p.add_argument("--experiment", help="only runs of this experiment (W&B group)")
    p.add_argument("--table", default=None, choices=("table1", "table3", "table4", "pivot"),
                   help="table1: benchmark x fold x shot with Mean (Tables 1/2); table3: FSS-1000 mIoU and "
                        "DAVIS J&F; table4: ablation rows by variant; pivot: --rows x --cols (default table1, "
                        "pivot when --rows/--cols are given)")
    p.add_argument("--rows", default="variant", help="pivot rows: comma-separated config keys")
    p.add_argument("--cols", default=None, help="pivot columns: comma-separated config keys "
                                                "(variant, benchmark, fold, shots, protocol, backbone, image_size, seed, job)")
    p.add_argument("--metric", default=None, help="test/miou (default) or test/fbiou (table1: both)")
    p.add_argument("--job", default="all", choices=("all", "fit+test", "test"),
                   help="fit+test: tested at the end of their fit; test: test-only runs")
    p.add_argument("--davis", action="append", default=[], metavar="VARIANT=CSV",
                   help="table3: DAVIS-17 J&F of VARIANT from fsseg davis-eval's global_results-<set>.csv")
    p.add_argument("--format", default="markdown", choices=("markdown", "latex", "csv"))
    a = p.parse_args(argv)
    folders = [Path(f) for f in a.folders]
    for f in folders:
        if not f.exists():
            raise SystemExit(f"fsseg results: {f} does not exist (give the runs/ folder of your fits)")
    records = (from_wandb if a.wandb else from_run_folders)(folders, a.experiment)
    if a.job != "all":
        records = [r for r in records if r.get("job") == a.job]
    if not records:
        raise SystemExit(f"fsseg results: no test results under {', '.join(map(str, folders))}"
                         f"{' for experiment ' + a.experiment if a.experiment else ''} (runs write results.json "
                         "when tested: fsseg test, or fit --test_after_fit true)")
    davis = {}
    for item in a.davis:
        variant, _, path = item.partition("=")
        if not path or not Path(path).is_file():
            raise SystemExit(f"fsseg results: --davis {item}: expected VARIANT=<existing global_results CSV>")
        davis[variant] = path
    table = a.table or ("pivot" if a.cols else "table1")
    if table == "pivot" and not a.cols:
        raise SystemExit("fsseg results: --table pivot needs --cols (e.g. --cols benchmark,shots)")
    rows = [k.strip() for k in a.rows.split(",") if k.strip()]
    cols = [k.strip() for k in (a.cols or "").split(",") if k.strip()]
    print(render(build_tables(records, table, rows, cols, a.metric, davis), a.format))


if __name__ == "__main__":
    main()
