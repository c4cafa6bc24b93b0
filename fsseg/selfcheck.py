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
import csv
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import lightning as L

REPO = Path(__file__).resolve().parent.parent
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


class Throughput(L.Callback):
    """Times the training batches after the first (warm-up): episodes/s, the time the step waited
    for the loader (from one batch's end to the next's start) against the step's own time, and the
    peak GPU memory; rank 0 writes them to ``path`` (JSON) when training ends."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.episodes, self.data_wait, self.compute, self.batches = 0, 0.0, 0.0, 0
        self._last_end: Optional[float] = None
        self._start = 0.0

    def _sync(self, trainer) -> None:
        if trainer.strategy.root_device.type == "cuda":
            import torch

            torch.cuda.synchronize(trainer.strategy.root_device)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._last_end = None  # the loader's start-up is not counted as waiting

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._sync(trainer)
        now = time.perf_counter()
        if self._last_end is not None and self.batches:
            self.data_wait += now - self._last_end
        self._start = now

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._sync(trainer)
        now = time.perf_counter()
        if trainer.global_step > 1:  # the first step (allocation, autotuning) is warm-up
            self.compute += now - self._start
            self.episodes += int(batch["query"].shape[0]) * trainer.world_size
            self.batches += 1
        self._last_end = now

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.global_rank != 0:
            return
        peak = None
        if trainer.strategy.root_device.type == "cuda":
            import torch

            peak = torch.cuda.max_memory_allocated(trainer.strategy.root_device)
        seconds = self.compute + self.data_wait
        with open(self.path, "w") as f:
            json.dump({"episodes": self.episodes, "batches": self.batches, "compute_s": self.compute,
                       "data_wait_s": self.data_wait, "episodes_per_s": self.episodes / seconds if seconds else None,
                       "peak_gpu_bytes": peak}, f)


@dataclass
class Check:
    name: str
    status: str  # PASS | FAIL | SKIP
    detail: str = ""

    def line(self) -> str:
        return f"{self.status:4s}  {self.name}: {self.detail}"


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
                      {"class_path": "fsseg.selfcheck.Throughput", "init_args": {"path": str(d / "throughput.json")}}])
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


def _throughput_text(t: dict) -> str:
    if not t or not t.get("episodes_per_s"):
        return ""
    text = f"{t['episodes_per_s']:.1f} episodes/s"
    busy = t["compute_s"] + t["data_wait_s"]
    if busy:
        text += f" (loader wait {100 * t['data_wait_s'] / busy:.0f}% of the step time)"
    if t.get("peak_gpu_bytes"):
        text += f", peak GPU memory {t['peak_gpu_bytes'] / 2**20:.0f} MiB"
    return text


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


def encoder_flops(model, image_size: int) -> int:
    """FLOPs of the frozen encoder (DINOv2 + adapter) on one image (torch's FLOP counter)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    p = next(model.parameters())
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.extract(torch.rand(1, 3, image_size, image_size, device=p.device))
    return int(counter.get_total_flops())


def full_size_checks(emit, device: str = "cuda", backbone: str = "dinov2_vitb14", image_size: int = 518,
                     batch_size: int = 8, steps: int = 30, precision: str = "bf16-mixed",
                     num_workers: Optional[int] = None, queries: int = 32) -> None:
    """The FS-DINO ``full`` stage-2 training step with the real loader and batched 1-shot inference,
    random weights (in-process; ``device``/``backbone``/``image_size`` smaller for a test on the CPU)."""
    import torch

    from data_modules import EpisodicDataModule
    from fsseg.modules import FewShotModule

    workers = min(8, os.cpu_count() or 1) if num_workers is None else num_workers
    torch.manual_seed(0)
    module = FewShotModule(segmenter={"name": "full", "backbone": backbone}, image_size=image_size,
                           dinov2_checkpoint=None, sam_checkpoint=None, adapter_checkpoint=None)
    dm = EpisodicDataModule(dataset="synthetic", image_size=image_size, synthetic_image_size=image_size,
                            batch_size=batch_size, num_workers=workers, train_episodes_per_epoch=batch_size * steps,
                            val_episodes=1)
    with tempfile.TemporaryDirectory() as tmp:
        meter = Throughput(str(Path(tmp) / "t.json"))
        trainer = L.Trainer(accelerator="gpu" if device == "cuda" else device, devices=1, precision=precision,
                            max_epochs=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, callbacks=[meter])
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        trainer.fit(module, dm)
        t = json.loads((Path(tmp) / "t.json").read_text())
    module.to(device).eval()
    module.model.set_precision(precision, device)
    per_episode = encoder_flops(module.model, image_size) * (1 + dm.shots)  # query + K supports
    rate = t["episodes_per_s"] or 0.0
    emit(Check(f"full-size: FS-DINO full training step at {image_size}, {precision}, batch {batch_size}",
               "PASS" if rate > 0 else "FAIL",
               f"{_throughput_text(t)}; frozen encoder {per_episode * rate / 1e12:.1f} TFLOP/s achieved; "
               f"{'the GPU waits for the loader' if t['data_wait_s'] > 0.1 * t['compute_s'] else 'the loader keeps up'}"
               f" ({workers} workers)"))
    # 1-shot inference batched on one support set
    g = torch.Generator().manual_seed(0)
    support = torch.rand(1, 1, 1, 3, image_size, image_size, generator=g)
    masks = torch.zeros(1, 1, 1, image_size, image_size)
    masks[..., image_size // 4: 3 * image_size // 4, image_size // 4: 3 * image_size // 4] = 1
    batch = torch.rand(min(queries, 16), 3, image_size, image_size, generator=g)
    with torch.inference_mode():
        module.set_support_set(support, masks, ["object"])
        module.segment_queries(batch)  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        t0, done = time.perf_counter(), 0
        while done < queries:
            out = module.segment_queries(batch)
            done += batch.shape[0]
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    finite = bool(torch.isfinite(out["logits"]).all())
    emit(Check(f"full-size: 1-shot inference at {image_size}, {precision}, batches of {batch.shape[0]} queries",
               "PASS" if finite else "FAIL", f"{done / seconds:.1f} queries/s" + ("" if finite else ", non-finite logits")))


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


if __name__ == "__main__":
    main()
