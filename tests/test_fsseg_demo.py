"""`make demo` end to end in its quick form: every stage runs through the CLI and writes its outputs.
(The numbers of a quick run are meaningless; the full demo's figures are in the README.)"""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_demo_quick_runs_every_stage(tmp_path):
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "fsseg.demo", "--quick"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = tmp_path / "outputs" / "demo"
    summary = json.loads((out / "results.json").read_text())
    assert set(summary["results"]) == {"PCS threshold (no training)", "FS-DINO trained", "FS-DINO untrained"}
    for rows in summary["results"].values():
        for shots in ("1", "5"):
            assert 0 <= rows[shots]["test/miou"] <= 100 and 0 <= rows[shots]["test/fbiou"] <= 100
    curve = summary["distillation_val_mse"]
    assert len(curve) == 6 and all(mse > 0 for _, mse in curve)
    assert Path(summary["best_checkpoint"]).exists() and Path(summary["adapter_checkpoint"]).exists()
    assert list((out / "fewshot" / "panels" / "val").glob("*.png"))
    assert len(summary["wandb_runs"]) == 2  # one offline run per training stage
    assert "| FS-DINO trained |" in proc.stdout and "Outputs" in proc.stdout
