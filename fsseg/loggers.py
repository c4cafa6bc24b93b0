"""Experiment loggers. W&B runs offline unless the user is logged in: a missing key never hangs a run."""

from __future__ import annotations

import csv
from typing import Any, Optional

from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


def wandb_logged_in() -> bool:
    """True when wandb has an API key where ``wandb login`` puts it (``WANDB_API_KEY`` or the netrc
    entry of the W&B host), checked without the network and without prompting."""
    import netrc
    import os
    from urllib.parse import urlparse

    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class FssegWandbLogger(WandbLogger):
    """``WandbLogger`` that decides ``offline`` itself when not told: online only with a key.

    Args:
        offline: ``None`` (default) = offline unless logged in; ``True``/``False`` force it.
        project: W&B project (``fsseg``).
        Other arguments as ``lightning.pytorch.loggers.WandbLogger``.
    """

    def __init__(self, project: str = "fsseg", save_dir: str = "runs", offline: Optional[bool] = None,
                 name: Optional[str] = None, group: Optional[str] = None, tags: Optional[list[str]] = None,
                 job_type: Optional[str] = None, log_model: bool = False, **kwargs: Any) -> None:
        if offline is None:
            offline = not wandb_logged_in()
        if offline:
            kwargs["mode"] = "offline"  # explicit: wandb >= 0.19 ignores Lightning's WANDB_MODE=dryrun
        if group is not None:
            kwargs["group"] = group
        if tags is not None:
            kwargs["tags"] = tags
        if job_type is not None:
            kwargs["job_type"] = job_type
        kwargs.setdefault("settings", _quiet_settings())
        super().__init__(project=project, save_dir=save_dir, offline=offline, name=name, log_model=log_model,
                         **kwargs)


def _quiet_settings():
    import wandb

    # no console capture and no background stats threads: they slow CPU runs and hang on exit in CI
    return wandb.Settings(console="off", x_disable_stats=True, silent=True)


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing ``metrics.csv`` when its folder is not empty; a resumed
    run appends to its own file instead."""

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        if self._fs.isfile(self.metrics_file_path):  # new keys then extend the existing header
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = list(csv.DictReader(f).fieldnames or [])

    def _check_log_dir_exists(self) -> None:
        return None


class RunCSVLogger(CSVLogger):
    """``metrics.csv`` directly in a run folder (``save_dir``), appended to when the run resumes."""

    def __init__(self, save_dir: str, flush_logs_every_n_steps: int = 100) -> None:
        super().__init__(save_dir=save_dir, name="", version="", flush_logs_every_n_steps=flush_logs_every_n_steps)

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def group_name(model, datamodule) -> tuple[str, list[str]]:
    hp = getattr(model, "hparams", {})
    parts, tags = [type(model).__name__], []
    if hp.get("segmenter"):
        from fsseg.models.segmenters import method_name

        variant = method_name(hp["segmenter"])
        parts.append(variant)
        tags.append(f"variant:{variant}")
    if "objective" in hp:
        parts.append(str(hp["objective"]))
    for attr in ("dataset", "fold", "shots"):
        value = getattr(datamodule, attr, None) if datamodule is not None else None
        if value is not None:
            parts.append(f"{attr}{value}" if attr != "dataset" else str(value))
            tags.append(f"{attr}:{value}")
    return "-".join(parts), tags
