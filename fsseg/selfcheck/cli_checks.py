"""The self-checks that run the real ``fsseg`` command line (a subprocess, as a user runs it) on the
small model: ``fit`` + ``test``, DDP, ``predict``, on the CPU and on each GPU precision, compared with
the CPU's fp32 run."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from fsseg.selfcheck.check import Check
from fsseg.selfcheck.throughput import _throughput_text

REPO = Path(__file__).resolve().parents[2]
SMALL = ["--model.init_args.segmenter", "{name: tiny, method: full}", "--model.init_args.image_size", "112",
         "--model.init_args.dinov2_checkpoint", "null", "--model.init_args.sam_checkpoint", "null",
         "--model.init_args.adapter_checkpoint", "null"]
TRAIN = ["--model.init_args.lr", "0.003"]  # a few dozen steps: enough to leave the all-background start
DATA = ["--data.init_args.dataset", "synthetic", "--data.init_args.image_size", "112",
        "--data.init_args.batch_size", "4", "--data.init_args.num_workers", "0",
        "--data.init_args.train_episodes_per_epoch", "48", "--data.init_args.val_episodes", "8",
        "--data.init_args.test_episodes", "48"]
EPOCHS = 2
# The same checkpoint tested twice: on the GPU at each precision against the CPU in fp32, test mIoU
# and FB-IoU within these points and the test loss within this relative difference (TF32 / bf16 /
# fp16 products round differently; a wrong kernel, cast or mask moves them by far more); DDP's split
# of the episodes against one process: mIoU and FB-IoU within DDP_TOLERANCE points (the metric's
# states are summed across ranks: equal up to summation order).
GPU_TOLERANCE = {"32": 0.5, "bf16-mixed": 2.0, "16-mixed": 1.0}
GPU_LOSS_RTOL = {"32": 0.01, "bf16-mixed": 0.05, "16-mixed": 0.02}
DDP_TOLERANCE = 0.05


@dataclass
class RunOutcome:
    """What one ``fsseg fit`` / ``fsseg test`` subprocess gave (not a run folder: ``fsseg.runs.Run``)."""

    ok: bool
    metrics: dict = field(default_factory=dict)
    throughput: dict = field(default_factory=dict)
    seconds: float = 0.0
    error: str = ""
    ckpt: Optional[str] = None


def _fsseg(args: list[str], cwd: Path, timeout: float) -> tuple[int, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               WANDB_MODE="disabled")
    with subprocess.Popen([sys.executable, "-m", "fsseg.cli", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=True) as proc:
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            out, _ = proc.communicate()
            return 124, (out or "") + f"\n(still running after {timeout:.0f} s: killed)"
    return proc.returncode, out or ""


def _last_metrics(csv_dir: Path) -> dict:
    path = csv_dir / "csv" / "v" / "metrics.csv"
    if not path.is_file():
        return {}
    out: dict = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            for k, v in row.items():
                if v not in (None, ""):
                    out[k] = float(v)
    return out


def _error_tail(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if "Error" in ln or "error:" in ln]
    return (errors[-1] if errors else lines[-1] if lines else "no output")[:300]


def run_fit(work: Path, name: str, accelerator: str, devices: int, precision: str, timeout: float) -> RunOutcome:
    """``fsseg fit`` + ``test`` (``--test_after_fit``) of the small model; the checkpoint kept."""
    d = work / name
    d.mkdir(parents=True, exist_ok=True)
    cbs = json.dumps([{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                       "init_args": {"dirpath": str(d / "ckpt"), "save_last": True}},
                      {"class_path": "fsseg.selfcheck.throughput.Throughput", "init_args": {"path": str(d / "throughput.json")}}])
    logger = json.dumps({"class_path": "lightning.pytorch.loggers.CSVLogger",
                         "init_args": {"save_dir": str(d), "name": "csv", "version": "v"}})
    strategy = ["--trainer.strategy", "ddp"] if devices > 1 else []
    args = ["fit", *SMALL, *TRAIN, *DATA, "--seed_everything", "0", "--trainer.accelerator", accelerator,
            "--trainer.devices", str(devices), *strategy, "--precision", precision,
            "--trainer.max_epochs", str(EPOCHS), "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--trainer.num_sanity_val_steps", "0",
            "--trainer.log_every_n_steps", "1", "--trainer.default_root_dir", str(d), "--trainer.logger", logger,
            "--trainer.callbacks", cbs, "--test_after_fit", "true"]
    t0 = time.perf_counter()
    rc, out = _fsseg(args, d, timeout)
    run = RunOutcome(ok=rc == 0, seconds=time.perf_counter() - t0, error="" if rc == 0 else _error_tail(out))
    run.metrics = _last_metrics(d)
    if (d / "throughput.json").is_file():
        run.throughput = json.loads((d / "throughput.json").read_text())
    ckpt = d / "ckpt" / "last.ckpt"
    run.ckpt = str(ckpt) if ckpt.is_file() else None
    if run.ok and "test/miou" not in run.metrics:
        run.ok, run.error = False, "no test/miou logged"
    return run


def run_test(work: Path, name: str, ckpt: str, accelerator: str, devices: int, precision: str,
             timeout: float) -> RunOutcome:
    d = work / name
    d.mkdir(parents=True, exist_ok=True)
    logger = json.dumps({"class_path": "lightning.pytorch.loggers.CSVLogger",
                         "init_args": {"save_dir": str(d), "name": "csv", "version": "v"}})
    strategy = ["--trainer.strategy", "ddp"] if devices > 1 else []
    args = ["test", *DATA, "--ckpt_path", ckpt, "--trainer.accelerator", accelerator, "--trainer.devices",
            str(devices), *strategy, "--precision", precision, "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(d), "--trainer.logger", logger]
    t0 = time.perf_counter()
    rc, out = _fsseg(args, d, timeout)
    run = RunOutcome(ok=rc == 0, seconds=time.perf_counter() - t0, error="" if rc == 0 else _error_tail(out))
    run.metrics = _last_metrics(d)
    if run.ok and "test/miou" not in run.metrics:
        run.ok, run.error = False, "no test/miou logged"
    return run


def write_predict_folders(root: Path, queries: int = 4) -> tuple[Path, Path]:
    """One support class (2 shots) and ``queries`` query photos rendered by the synthetic dataset."""
    from PIL import Image

    from data_modules.readers.synthetic import render

    cls = 3
    for sub in ("images", "masks"):
        (root / "support" / "object" / sub).mkdir(parents=True, exist_ok=True)
    for k in range(2):
        img, mask = render(cls, k, seed=7, image_size=112)
        Image.fromarray(img).save(root / "support" / "object" / "images" / f"{k}.png")
        Image.fromarray(mask * 255).save(root / "support" / "object" / "masks" / f"{k}.png")
    (root / "query").mkdir(parents=True, exist_ok=True)
    for i in range(queries):
        Image.fromarray(render(cls, 10 + i, seed=7, image_size=112)[0]).save(root / "query" / f"q{i}.png")
    return root / "support", root / "query"


def run_predict(work: Path, name: str, ckpt: str, accelerator: str, timeout: float) -> Check:
    d = work / name
    support, query = write_predict_folders(d / "data")
    out = d / "pred"
    args = ["predict", "--config", str(REPO / "lightning_configs" / "predict.yaml"), "--ckpt_path", ckpt,
            "--data.support_dir", str(support), "--data.query_dir", str(query), "--trainer.accelerator", accelerator,
            "--trainer.enable_progress_bar", "false", "--output_dir", str(out)]
    t0 = time.perf_counter()
    rc, text = _fsseg(args, d, timeout)
    masks = sorted((out / "masks").glob("*.png")) if out.is_dir() else []
    n = len(list(query.iterdir()))
    if rc != 0:
        return Check(f"predict on {accelerator}", "FAIL", _error_tail(text))
    status = "PASS" if len(masks) >= n else "FAIL"
    return Check(f"predict on {accelerator}", status,
                 f"{len(masks)} mask file(s) for {n} queries in {time.perf_counter() - t0:.0f} s ({out})")


def _miou(run: RunOutcome) -> float:
    return run.metrics.get("test/miou", math.nan)


def _fit_check(name: str, run: RunOutcome) -> Check:
    if not run.ok:
        return Check(name, "FAIL", run.error)
    loss = run.metrics.get("train/loss", math.nan)
    if not math.isfinite(loss):
        return Check(name, "FAIL", f"train/loss {loss}")
    return Check(name, "PASS", f"test mIoU {_miou(run):.2f}, train/loss {loss:.3f}, {run.seconds:.0f} s; "
                               + _throughput_text(run.throughput))


def _compare(name: str, run: RunOutcome, reference: RunOutcome, tolerance: float, loss_rtol: Optional[float] = None) -> Check:
    """``run``'s test metrics against ``reference``'s: mIoU and FB-IoU within ``tolerance`` points,
    the test loss within ``loss_rtol`` (relative) when given."""
    if not run.ok:
        return Check(name, "FAIL", run.error)
    parts, ok = [], True
    for key in ("test/miou", "test/fbiou"):
        a, b = run.metrics.get(key, math.nan), reference.metrics.get(key, math.nan)
        ok &= abs(a - b) <= tolerance
        parts.append(f"{key.split('/')[1]} {a:.3f} vs {b:.3f}")
    if loss_rtol is not None:
        a, b = run.metrics.get("test/loss", math.nan), reference.metrics.get("test/loss", math.nan)
        rel = abs(a - b) / max(abs(b), 1e-12)
        ok &= rel <= loss_rtol
        parts.append(f"loss {a:.4f} vs {b:.4f} (rel. {rel:.1e} <= {loss_rtol})")
    return Check(name, "PASS" if ok else "FAIL", ", ".join(parts) + f"; IoUs within {tolerance} points required")


def cpu_checks(work: Path, timeout: float, emit) -> Optional[RunOutcome]:
    ref = run_fit(work, "cpu-32", "cpu", 1, "32", timeout)
    emit(_fit_check("fit+test on cpu, 32", ref))
    ddp = run_fit(work, "cpu-ddp2", "cpu", 2, "32", timeout)
    emit(_fit_check("fit+test with DDP on 2 CPU processes (gloo), 32", ddp))
    if ddp.ok and ddp.ckpt:
        one = run_test(work, "cpu-ddp2-test1", ddp.ckpt, "cpu", 1, "32", timeout)
        emit(_compare("DDP checkpoint: test on 1 process = on 2 processes", one, ddp, DDP_TOLERANCE))
    if ref.ok and ref.ckpt:
        emit(run_predict(work, "cpu-predict", ref.ckpt, "cpu", timeout))
    return ref if ref.ok else None


def gpu_checks(work: Path, timeout: float, emit, reference: Optional[RunOutcome], gpus: int) -> None:
    for precision in ("32", "bf16-mixed", "16-mixed"):
        run = run_fit(work, f"gpu-{precision}", "cuda", 1, precision, timeout)
        emit(_fit_check(f"fit+test on 1 GPU, {precision}", run))
        if reference is not None:
            same = run_test(work, f"gpu-{precision}-cpuckpt", reference.ckpt, "cuda", 1, precision, timeout)
            emit(_compare(f"CPU checkpoint tested on the GPU at {precision} vs on the CPU at 32", same, reference,
                          GPU_TOLERANCE[precision], GPU_LOSS_RTOL[precision]))
    if gpus >= 2:
        ddp = run_fit(work, f"gpu-ddp{gpus}", "cuda", gpus, "bf16-mixed", timeout)
        emit(_fit_check(f"fit+test with DDP on {gpus} GPUs (nccl), bf16-mixed", ddp))
        if ddp.ok and ddp.ckpt:
            one = run_test(work, f"gpu-ddp{gpus}-test1", ddp.ckpt, "cuda", 1, "bf16-mixed", timeout)
            emit(_compare(f"DDP checkpoint: test on 1 GPU = on {gpus} GPUs", one, ddp, GPU_TOLERANCE["32"]))
    else:
        emit(Check("DDP over the GPUs", "SKIP", f"{gpus} GPU visible, needs 2 or more"))
    if reference is not None:
        emit(run_predict(work, "gpu-predict", reference.ckpt, "cuda", timeout))
