"""``fsseg selfcheck``: its full-size part on a tiny model on the CPU (the GPU run uses the same code at
518), and the whole CPU self-check (slow)."""

from __future__ import annotations

import pytest
import torch

from fsseg.selfcheck import full_size_checks, main


def test_full_size_part_times_training_and_batched_inference():
    checks = []
    full_size_checks(checks.append, device="cpu", backbone="dinov2_tiny", image_size=56, batch_size=2, steps=3,
                     precision="32", num_workers=0, queries=4)
    assert [c.status for c in checks] == ["PASS", "PASS"], [c.line() for c in checks]
    assert "episodes/s" in checks[0].detail and "TFLOP/s" in checks[0].detail
    assert "queries/s" in checks[1].detail


@pytest.mark.slow
def test_selfcheck_on_this_cpu(tmp_path, capsys):
    main(["--work_dir", str(tmp_path), "--full-size"])
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith(("PASS", "FAIL", "SKIP"))]
    assert not any(ln.startswith("FAIL") for ln in lines), out
    # cpu fit+test, DDP fit+test, DDP checkpoint on 1 process, predict (more with a GPU)
    assert sum(ln.startswith("PASS") for ln in lines) >= 4
    if not torch.cuda.is_available():
        assert any(ln.startswith("SKIP") and "full-size" in ln for ln in lines)
