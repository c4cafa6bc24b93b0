"""Helpers for tests that run the real ``fsseg`` command line in a subprocess."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.paths import CONFIGS, REPO  # noqa: F401 - CONFIGS re-exported for the tests that build CLI arguments

# Small configurations of the same classes: seconds on a CPU.
# The ``tiny`` preset (fsseg.models.methods), of ``full`` unless "--model.init_args.segmenter.method", "compact"
# follows (with --ckpt_path: of the checkpoint's method).
TINY_FEWSHOT = [
    "--model.init_args.segmenter", "{name: tiny}", "--model.init_args.image_size", "112",
    "--model.init_args.dinov2_checkpoint", "null",
    "--model.init_args.sam_checkpoint", "null", "--model.init_args.adapter_checkpoint", "null",
    "--data.init_args.image_size", "112", "--data.init_args.num_workers", "0",
]
TINY_DISTILL = [
    "--model.init_args.backbone", "dinov2_tiny", "--model.init_args.teacher", "tiny",
    "--model.init_args.dinov2_checkpoint", "null", "--model.init_args.sam_checkpoint", "null",
    "--model.init_args.adapter_init", "null",
    "--data.init_args.root", "null", "--data.init_args.image_size", "128", "--data.init_args.batch_size", "4",
    "--data.init_args.num_workers", "0",
]


def csv_logger(save_dir: Path) -> list[str]:
    return ["--trainer.logger", '{"class_path": "lightning.pytorch.loggers.CSVLogger", '
            f'"init_args": {{"save_dir": "{save_dir}", "name": "csv", "version": "v"}}}}',
            "--trainer.log_every_n_steps", "1"]


def run_fsseg(args: list[str], cwd: Path, timeout: int = 600, check: bool = True, env: dict | None = None):
    """Run ``fsseg ARGS`` as a user would; returns the CompletedProcess (output captured)."""
    e = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", PYTHONPATH=str(REPO),
             OMP_NUM_THREADS="1")
    e.update(env or {})
    # Own session: on a timeout the whole group goes (DDP launches its other ranks as child
    # processes; a hung run must fail the test, not linger).
    with subprocess.Popen([sys.executable, "-m", "fsseg.cli", *args], cwd=cwd, env=e, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, start_new_session=True) as popen:
        try:
            out, err = popen.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(popen.pid, signal.SIGKILL)
            out, err = popen.communicate()
            raise AssertionError(f"fsseg {' '.join(args)} still running after {timeout} s (killed):\n"
                                 f"{out[-3000:]}\n{err[-5000:]}") from None
    proc = subprocess.CompletedProcess(popen.args, popen.returncode, out, err)
    if check and proc.returncode != 0:
        raise AssertionError(f"fsseg {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-5000:]}")
    return proc


def read_metrics(save_dir: Path) -> list[dict]:
    path = Path(save_dir) / "csv" / "v" / "metrics.csv"
    with open(path) as f:
        return list(csv.DictReader(f))


def last_value(rows: list[dict], key: str) -> float:
    vals = [float(r[key]) for r in rows if r.get(key) not in (None, "")]
    if not vals:
        raise AssertionError(f"no {key} in metrics: {rows[:3]}")
    return vals[-1]


def tiny_module_args(method: str = "full", image_size: int = 112, **spec) -> dict:
    """``FewShotModule`` / ``SpecializeModule`` arguments of the ``tiny`` preset (fsseg.models.methods) of
    ``method``; ``spec``: further arguments of that method (e.g. ``mamba_backend``)."""
    return dict(segmenter={"name": "tiny", "method": method, **spec}, image_size=image_size)
