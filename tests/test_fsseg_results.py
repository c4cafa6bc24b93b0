"""``fsseg results`` on run folders the test writes (run.json + results.json, as fit/test write them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fsseg.results import main as results_main
from fsseg.runs import RESULTS_FILE, Run, write_json


def _run(root: Path, name: str, job: str, metrics: dict, **keys) -> Path:
    keys = {"benchmark": "pascal5i", "protocol": "hdmnet", "seed": 0, **keys}
    run = Run(path=root / "paper" / name, experiment="paper", name=name, job="fit" if job == "fit+test" else "test",
              wandb_id=name[:8], keys=keys)
    run.save()
    write_json(run.path / RESULTS_FILE, {"metrics": metrics, "job": job, "experiment": "paper", "run": name,
                                         "keys": keys, "iou_per_class": {}})
    return run.path


def _table(capsys, *args) -> list[str]:
    results_main([*map(str, args)])
    return capsys.readouterr().out.splitlines()


def _row(lines: list[str], name: str) -> list[str]:
    """The cells of row ``name`` in the first table of ``lines``."""
    line = next(ln for ln in lines if ln.startswith(f"| {name} |"))
    return [c.strip() for c in line.strip("|").split("|")][1:]


@pytest.fixture()
def runs(tmp_path):
    root = tmp_path / "runs"
    for fold, (a, b) in enumerate([(60.0, 70.0), (62.0, 72.0), (58.0, 68.0), (64.0, 74.0)]):
        _run(root, f"full-f{fold}-1", "fit+test", {"test/miou": a, "test/fbiou": a + 10}, variant="full", fold=fold, shots=1)
        _run(root, f"full-f{fold}-5", "fit+test", {"test/miou": b, "test/fbiou": b + 10}, variant="full", fold=fold, shots=5)
    # two more seeds of one cell: averaged with their spread
    _run(root, "full-f0-1-s1", "fit+test", {"test/miou": 62.0, "test/fbiou": 72.0}, variant="full", fold=0, shots=1, seed=1)
    _run(root, "full-f0-1-s2", "fit+test", {"test/miou": 64.0, "test/fbiou": 74.0}, variant="full", fold=0, shots=1, seed=2)
    # one hdmnet test scored under 3 evaluation seeds (test/miou_seed{s}): their spread is shown
    _run(root, "uino-f0-1", "fit+test", {"test/miou": 52.0, "test/fbiou": 66.0, "test/miou_seed0": 51.0,
                                         "test/miou_seed1": 52.0, "test/miou_seed2": 53.0}, variant="uino", fold=0, shots=1)
    # an ablation variant with only fold 0: its other cells stay empty and it has no mean
    _run(root, "bapcs-f0-1", "fit+test", {"test/miou": 50.0, "test/fbiou": 65.0}, variant="ba_pcs", fold=0, shots=1)
    return root


def test_table1_layout_means_seeds_and_empty_cells(runs, capsys):
    lines = _table(capsys, runs)
    assert "**PASCAL-5i mIoU**" in lines and "**PASCAL-5i FB-IoU**" in lines
    header = lines[lines.index("**PASCAL-5i mIoU**") + 2]
    assert header == ("|  | 1-shot Fold0 | 1-shot Fold1 | 1-shot Fold2 | 1-shot Fold3 | 1-shot Mean | "
                      "5-shot Fold0 | 5-shot Fold1 | 5-shot Fold2 | 5-shot Fold3 | 5-shot Mean |")
    full = _row(lines, "full")
    assert full[0] == "62.0 ± 2.0 (3)"  # seeds 0, 1, 2: 60, 62, 64
    assert full[1:5] == ["62.0", "58.0", "64.0", "61.5"]  # mean of 62, 62, 58, 64
    assert full[5:] == ["70.0", "72.0", "68.0", "74.0", "71.0"]
    assert _row(lines, "ba_pcs") == ["50.0", "", "", "", "", "", "", "", "", ""]
    assert _row(lines, "uino")[0] == "52.0 ± 1.0 (3 test seeds)"


def test_duplicates_are_shown_not_replaced_and_test_only_runs_are_told_apart(runs, capsys):
    _run(runs, "full-f1-1-again", "fit+test", {"test/miou": 40.0, "test/fbiou": 50.0}, variant="full", fold=1, shots=1)
    _run(runs, "test-full-f2-1", "test", {"test/miou": 57.0, "test/fbiou": 67.0}, variant="full", fold=2, shots=1)
    lines = _table(capsys, runs, "--metric", "test/miou")
    full = _row(lines, "full")
    assert full[1] == "62.0 / 40.0 (duplicates)"  # both runs of fold 1, seed 0
    assert any(ln.startswith("duplicate runs") for ln in lines)
    assert any("full / 1-shot Fold1 (seed 0): 2 runs: 62.00" in ln and "40.00" in ln for ln in lines)
    assert _row(lines, "full (test-only)")[2] == "57.0"
    only = _table(capsys, runs, "--metric", "test/miou", "--job", "test")
    assert "| 1-shot Fold2 | 1-shot Mean |" in only[2] and _row(only, "full") == ["57.0", "57.0"]


def test_table4_ablation_rows_pivot_latex_and_csv(runs, capsys):
    lines = _table(capsys, runs, "--table", "table4")
    assert lines[2] == "|  | PASCAL-5i fold0 1-shot | PASCAL-5i fold0 5-shot | PASCAL-5i fold1 1-shot | " \
                       "PASCAL-5i fold1 5-shot | PASCAL-5i fold2 1-shot | PASCAL-5i fold2 5-shot | " \
                       "PASCAL-5i fold3 1-shot | PASCAL-5i fold3 5-shot |"
    rows = [ln.split("|")[1].strip() for ln in lines[4:7]]
    assert rows == ["BA+PCS", "BA+SVP+PCS+4D", "UINO-FSS"]  # the paper's order
    assert _row(lines, "BA+PCS")[0] == "50.0"
    pivot = _table(capsys, runs, "--rows", "variant", "--cols", "shots", "--metric", "test/fbiou")
    assert _row(pivot, "full") == ["71.5 (mean of 4)", "81.0 (mean of 4)"]  # folds: seed means averaged
    latex = "\n".join(_table(capsys, runs, "--table", "table4", "--format", "latex"))
    assert r"\begin{tabular}{lcccccccc}" in latex and r"62.0 $\pm$ 2.0 (3)" in latex
    csv_lines = _table(capsys, runs, "--table", "table4", "--format", "csv")
    assert csv_lines[0].startswith("Ablation (mIoU),PASCAL-5i fold0 1-shot,")
    assert csv_lines[1] == "BA+PCS,50.0,,,,,,,"


def test_no_results_is_one_clear_line(tmp_path):
    (tmp_path / "runs").mkdir()
    with pytest.raises(SystemExit, match="no test results under .*runs"):
        results_main([str(tmp_path / "runs")])
