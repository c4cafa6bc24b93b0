"""`make demo` end to end in its quick form: every stage runs through the CLI and writes its outputs.
(The numbers of a quick run are meaningless; the full demo's figures are in the README. Seeded, they
are fixed here: a change of behaviour on the demo's path shows.)"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# test/miou and test/fbiou of each row at 1 and 5 shots
QUICK_RESULTS = {
    "PCS threshold (no training)": {"1": (18.81, 50.01), "5": (24.76, 49.74)},
    "FS-DINO trained": {"1": (5.42, 42.14), "5": (5.41, 42.17)},
    "FS-DINO untrained": {"1": (10.93, 36.15), "5": (11.21, 36.29)},
}
QUICK_DISTILLATION_VAL_MSE = [0.528, 0.348, 0.324, 0.255, 0.244, 0.227]  # after epochs 0..5


@pytest.mark.slow
def test_demo_quick_runs_every_stage(tmp_path, repo):
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", PYTHONPATH=str(repo))
    proc = subprocess.run([sys.executable, "-m", "fsseg.demo", "--quick"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = tmp_path / "outputs" / "demo"
    summary = json.loads((out / "results.json").read_text())
    got = {name: {shots: (r["test/miou"], r["test/fbiou"]) for shots, r in rows.items()}
           for name, rows in summary["results"].items()}
    assert got == {name: {shots: pytest.approx(v, abs=0.3) for shots, v in rows.items()}
                   for name, rows in QUICK_RESULTS.items()}, got
    curve = summary["distillation_val_mse"]
    assert [epoch for epoch, _ in curve] == list(range(6))
    assert [mse for _, mse in curve] == pytest.approx(QUICK_DISTILLATION_VAL_MSE, abs=5e-3), curve
    assert Path(summary["best_checkpoint"]).exists() and Path(summary["adapter_checkpoint"]).exists()
    assert list((out / "fewshot" / "panels" / "val").glob("*.png"))
    assert len(summary["wandb_runs"]) == 2  # one offline run per training stage
    assert "| FS-DINO trained |" in proc.stdout and "Outputs" in proc.stdout
