"""``fsseg selfcheck``: its full-size part on a tiny model on the CPU (the GPU run uses the same code at
518), and the whole CPU self-check (slow)."""

from __future__ import annotations

import pytest
import torch

from fsseg.selfcheck import full_size_checks, main


@pytest.mark.slow
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


def test_gpu_part_compares_each_precision_with_the_cpu_run(monkeypatch, tmp_path):
    """The GPU checks' bookkeeping (their runs replaced by recorded results): a GPU test within the
    stated tolerance passes, one outside fails, DDP runs with 2 or more GPUs."""
    from fsseg.selfcheck import cli_checks as sc

    reference = sc.RunOutcome(ok=True, metrics={"test/miou": 40.0, "test/fbiou": 60.0, "test/loss": 1.0}, ckpt="cpu.ckpt")
    shifted = {"32": 0.1, "bf16-mixed": 1.5, "16-mixed": 3.0}  # 16-mixed beyond its 1.0 points
    calls = []

    def fake_fit(work, name, accelerator, devices, precision, timeout):
        calls.append(("fit", accelerator, devices, precision))
        return sc.RunOutcome(ok=True, metrics={"test/miou": 41.0, "test/fbiou": 61.0, "train/loss": 0.5, "test/loss": 1.0},
                      throughput={"episodes_per_s": 100.0, "compute_s": 1.0, "data_wait_s": 0.25,
                                  "peak_gpu_bytes": 2**30}, ckpt=f"{name}.ckpt")

    def fake_test(work, name, ckpt, accelerator, devices, precision, timeout):
        calls.append(("test", ckpt, accelerator, devices, precision))
        d = shifted.get(precision, 0.0) if ckpt == "cpu.ckpt" else 0.0
        base = reference.metrics if ckpt == "cpu.ckpt" else {"test/miou": 41.0, "test/fbiou": 61.0}
        return sc.RunOutcome(ok=True, metrics={"test/miou": base["test/miou"] + d, "test/fbiou": base["test/fbiou"],
                                        "test/loss": 1.001})

    monkeypatch.setattr(sc, "run_fit", fake_fit)
    monkeypatch.setattr(sc, "run_test", fake_test)
    monkeypatch.setattr(sc, "run_predict", lambda work, name, ckpt, acc, timeout: sc.Check(f"predict on {acc}", "PASS"))
    checks = []
    sc.gpu_checks(tmp_path, 60, checks.append, reference, gpus=2)
    status = {c.name: c.status for c in checks}
    assert status["CPU checkpoint tested on the GPU at 32 vs on the CPU at 32"] == "PASS"
    assert status["CPU checkpoint tested on the GPU at bf16-mixed vs on the CPU at 32"] == "PASS"
    assert status["CPU checkpoint tested on the GPU at 16-mixed vs on the CPU at 32"] == "FAIL"
    assert status["DDP checkpoint: test on 1 GPU = on 2 GPUs"] == "PASS"
    assert ("fit", "cuda", 2, "bf16-mixed") in calls and status["predict on cuda"] == "PASS"
    fit32 = next(c for c in checks if c.name == "fit+test on 1 GPU, 32")
    assert "100.0 episodes/s" in fit32.detail and "loader wait 20%" in fit32.detail and "1024 MiB" in fit32.detail
