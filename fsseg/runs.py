"""One folder per run: ``<root>/<experiment>/<run name>/`` holds the run's config, checkpoints, CSV
metrics, panels, data summary, test results and its W&B run.

    runs/pascal5i_hdmnet/full-pascal5i-fold0-1shot-hdmnet-3fa2c1/
        run.json            who the run is: experiment, name, job, W&B id, config keys, weights tested
        config.yaml         the resolved config (LightningCLI's SaveConfigCallback)
        checkpoints/        best.ckpt, last.ckpt
        metrics.csv         every logged value (CSVLogger)
        panels/{val,test}/  qualitative panels
        data_summary.json   what the data module used (benchmark, classes used and dropped, episodes)
        results.json        test metrics with per-class IoU (``fsseg results`` reads it)
        wandb/              the W&B run (offline unless logged in)

The experiment defaults to the config file's name (``--experiment`` to set it); the run name is built
from variant, benchmark, fold, shots and protocol plus a short unique suffix (``--run_name`` to set it).
``fsseg fit --ckpt_path last`` continues the newest run of the same experiment and name in its own
folder and W&B run; ``--resume NAME`` (or a run folder's path) continues that run.
"""

from __future__ import annotations

import json
import os
import secrets
import string
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

RUN_FILE = "run.json"
RESULTS_FILE = "results.json"
SUMMARY_FILE = "data_summary.json"
# A Lightning-launched DDP worker (LOCAL_RANK > 0) re-runs the command line: it joins the run folder
# rank 0 chose instead of drawing a new suffix (the launcher copies rank 0's environment).
_SHARED_RUN_ENV = "FSSEG_RUN_DIR"
_ALPHABET = string.ascii_lowercase + string.digits


class RunFolderError(ValueError):
    """A run folder request that cannot be met (the message names the folder and the flag to use)."""


@dataclass
class Run:
    """A run folder and the identity stored in its ``run.json``."""

    path: Path
    experiment: str
    name: str
    job: str
    wandb_id: str
    keys: dict = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    config_files: list = field(default_factory=list)
    resumed_from: Optional[str] = None
    weights: Optional[str] = None  # the checkpoint a test/validate job evaluated

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def save(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        data = {k: v for k, v in asdict(self).items() if k != "path"}
        tmp = self.path / f".{RUN_FILE}.tmp"
        tmp.write_text(json.dumps(data, indent=2, default=str))
        os.replace(tmp, self.path / RUN_FILE)

    @classmethod
    def load(cls, path: Path) -> "Run":
        path = Path(path)
        try:
            data = json.loads((path / RUN_FILE).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise RunFolderError(f"{path / RUN_FILE}: not a readable run record ({e})") from None
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data and k != "path"}
        return cls(path=path, **known)


# ------------------------------------------------------------------------------------ naming
def _get(ns: Any, *keys: str) -> Any:
    for k in keys:
        if ns is None:
            return None
        ns = ns.get(k) if hasattr(ns, "get") else getattr(ns, k, None)
    return ns


def _spec(spec: Any, key: str) -> Any:
    """The registered method (``key`` ``name``) or a setting of a model spec (``fsseg.models.segmenters``;
    ``False``: the module takes none)."""
    if spec is False:
        return None
    from fsseg.models.segmenters import method_name, segmenter_spec, spec_value

    spec = segmenter_spec(spec)
    return method_name(spec) if key == "name" else spec_value(spec, key)


def run_keys(cfg: Any) -> dict:
    """The config values a run is known by (run name, W&B tags, ``fsseg results``' table keys)."""
    model = _get(cfg, "model", "init_args")
    data = _get(cfg, "data", "init_args")
    spec = _get(model, "segmenter") if model is not None and "segmenter" in model else False
    keys = {
        "variant": _spec(spec, "name"),
        "objective": _get(model, "objective"),
        "backbone": _get(model, "backbone") or _spec(spec, "backbone"),
        "image_size": _get(model, "image_size"),
        "benchmark": _get(data, "dataset"),
        "fold": _get(data, "fold"),
        "shots": _get(data, "shots"),
        "protocol": _get(data, "protocol"),
        "seed": _get(cfg, "seed_everything"),
        "model_class": str(_get(cfg, "model", "class_path") or "").rsplit(".", 1)[-1] or None,
    }
    return {k: (v if isinstance(v, (int, float, str, bool)) or v is None else str(v)) for k, v in keys.items()}


def base_name(keys: dict) -> str:
    """``full-pascal5i-fold0-1shot-hdmnet``: variant (or distillation objective), benchmark, fold, shots,
    protocol; parts the config does not have are left out."""
    parts = [keys.get("variant") or keys.get("objective") or keys.get("model_class"), keys.get("benchmark")]
    if keys.get("fold") is not None and keys.get("benchmark") is not None:
        parts.append(f"fold{keys['fold']}")
    if keys.get("shots") is not None:
        parts.append(f"{keys['shots']}shot")
    parts.append(keys.get("protocol"))
    name = "-".join(str(p) for p in parts if p not in (None, ""))
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "run"


def experiment_name(config_files: list, given: Optional[str]) -> str:
    """``--experiment``, else the (last) config file's name without ``.yaml``, else ``fsseg``."""
    if given:
        return str(given)
    return Path(str(config_files[-1])).stem if config_files else "fsseg"


def _suffix(n: int = 6) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(n))


def _job_name(job: str, base: str) -> str:
    return base if job == "fit" else f"{job}-{base}"


def _is_suffixed(name: str, base: str) -> bool:
    tail = name[len(base) + 1:]
    return name.startswith(base + "-") and len(tail) == 6 and all(c in _ALPHABET for c in tail)


# ---------------------------------------------------------------------------------- finding
def list_runs(root: Path, experiment: Optional[str] = None) -> list[Run]:
    """Every run folder under ``root`` (of ``experiment`` when given), oldest first."""
    root = Path(root)
    pattern = f"{experiment}/*/{RUN_FILE}" if experiment else f"*/*/{RUN_FILE}"
    runs = []
    for f in root.glob(pattern):
        try:
            runs.append(Run.load(f.parent))
        except RunFolderError as e:
            print(f"fsseg: skipping {e}", file=sys.stderr)
    return sorted(runs, key=lambda r: r.created)


def newest_fit_run(root: Path, experiment: str, name: str, need: str = "last.ckpt") -> Optional[Run]:
    """The newest fit run of ``experiment`` named ``name`` (exactly, or ``name`` plus a generated
    suffix) that holds ``checkpoints/<need>``."""
    for run in reversed(list_runs(root, experiment)):
        if run.job == "fit" and (run.name == name or _is_suffixed(run.name, name)) and (run.checkpoints / need).is_file():
            return run
    return None


# --------------------------------------------------------------------------------- resolving
@dataclass
class RunRequest:
    """What the command line asked for."""

    root: Path
    experiment: str
    job: str
    keys: dict
    config_files: list
    run_name: Optional[str] = None
    resume: Optional[str] = None
    ckpt_path: Optional[str] = None


def resolve_run(req: RunRequest) -> tuple[Optional[Run], Optional[str]]:
    """``(existing run to continue or None, checkpoint to load)``; says on stderr what it resumes.

    fit: ``--resume X`` / ``--ckpt_path last`` continue an existing run (same folder, same W&B id,
    its ``last.ckpt``); ``--ckpt_path FILE`` continues the run whose folder holds FILE, or the
    ``--run_name`` run it was written for. test/validate: ``--ckpt_path best|last`` pick the newest matching fit run's file
    (the job itself gets a new folder, ``create_run``)."""
    shared = os.environ.get(_SHARED_RUN_ENV)
    if shared and os.environ.get("LOCAL_RANK", "0") != "0":
        run = Run.load(Path(shared))
        if run.job != "fit":
            return run, run.weights
        resumed = req.resume or req.ckpt_path == "last"
        return run, (str(run.checkpoints / "last.ckpt") if resumed else req.ckpt_path)
    exp_dir = Path(req.root) / req.experiment
    base = req.run_name or base_name(req.keys)
    ckpt = req.ckpt_path

    if req.resume:
        if req.job != "fit":
            raise RunFolderError("--resume continues a fit run; for test/validate give --ckpt_path "
                                 "<run folder>/checkpoints/best.ckpt")
        folder = Path(req.resume) if Path(req.resume).is_dir() else exp_dir / req.resume
        if not (folder / RUN_FILE).is_file():
            raise RunFolderError(f"--resume {req.resume}: no run folder {folder} (runs of {req.experiment!r}: "
                                 f"{', '.join(r.name for r in list_runs(req.root, req.experiment)) or 'none'})")
        run = Run.load(folder)
        last = run.checkpoints / "last.ckpt"
        if not last.is_file():
            raise RunFolderError(f"--resume {req.resume}: {last} does not exist (the run saved no checkpoint yet); "
                                 "start it again without --resume")
        print(f"fsseg: resuming run {run.path} from {last} (W&B run {run.wandb_id})", file=sys.stderr)
        return _share(run), str(last)

    if req.job == "fit" and ckpt == "last":
        found = newest_fit_run(req.root, req.experiment, base)
        if found is not None:
            last = found.checkpoints / "last.ckpt"
            print(f"fsseg: --ckpt_path last: resuming run {found.path} from {last} (W&B run {found.wandb_id})",
                  file=sys.stderr)
            return _share(found), str(last)
        print(f"fsseg: --ckpt_path last: no earlier run of experiment {req.experiment!r} named {base!r} with a "
              f"last.ckpt under {exp_dir}; starting a new run (from a last.ckpt in a ModelCheckpoint dirpath the "
              "config sets, if there is one)", file=sys.stderr)
        return None, "last"

    if req.job == "fit" and ckpt and Path(ckpt).is_file():
        # fitting from a checkpoint resumes a run: the one whose folder holds the checkpoint, or the
        # --run_name folder it was written for (a ModelCheckpoint dirpath outside the run folder)
        holder = Path(ckpt).resolve().parent.parent
        named = exp_dir / req.run_name if req.run_name else None
        owner = holder if (holder / RUN_FILE).is_file() else named if named and (named / RUN_FILE).is_file() else None
        if owner is not None:
            run = Run.load(owner)
            if run.job == "fit":
                print(f"fsseg: resuming run {run.path} from {ckpt} (W&B run {run.wandb_id})", file=sys.stderr)
                return _share(run), ckpt

    if req.job != "fit" and ckpt in ("best", "last"):
        found = newest_fit_run(req.root, req.experiment, base, f"{ckpt}.ckpt")
        if found is None:
            raise RunFolderError(f"--ckpt_path {ckpt}: no fit run of experiment {req.experiment!r} named {base!r} "
                                 f"with checkpoints/{ckpt}.ckpt under {exp_dir}; give the checkpoint's path")
        ckpt = str(found.checkpoints / f"{ckpt}.ckpt")
        print(f"fsseg: --ckpt_path {req.ckpt_path}: evaluating {ckpt}", file=sys.stderr)
    return None, ckpt


def create_run(req: RunRequest, weights: Optional[str] = None) -> Run:
    """A new run folder for ``req`` (its ``run.json`` written); refused when ``--run_name`` names an
    existing folder."""
    exp_dir = Path(req.root) / req.experiment
    prefix = _job_name(req.job, req.run_name or base_name(req.keys))
    if req.run_name:
        name = prefix
        if (exp_dir / name).exists():
            raise RunFolderError(f"run folder {exp_dir / name} already exists: --resume {name} continues it, "
                                 "or choose another --run_name")
    else:
        name = f"{prefix}-{_suffix()}"
        while (exp_dir / name).exists():
            name = f"{prefix}-{_suffix()}"
    run = Run(path=exp_dir / name, experiment=req.experiment, name=name, job=req.job, wandb_id=_suffix(8),
              keys=dict(req.keys), config_files=[str(c) for c in req.config_files],
              weights=str(weights) if weights and req.job != "fit" else None)
    run.save()
    return _share(run)


def _share(run: Run) -> Run:
    os.environ[_SHARED_RUN_ENV] = str(run.path)
    return run


def release_shared_run() -> None:
    """Forget the run folder handed to DDP workers (the next command in this process gets its own)."""
    os.environ.pop(_SHARED_RUN_ENV, None)


# ------------------------------------------------------------------------------ trainer setup
def _entries(value: Any) -> list:
    if value is None or isinstance(value, bool):
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _class_name(entry: Any) -> str:
    return str(_get(entry, "class_path") or "").rsplit(".", 1)[-1]


def wandb_tags(keys: dict) -> list[str]:
    return [f"{k}:{keys[k]}" for k in ("variant", "objective", "benchmark", "fold", "shots", "protocol")
            if keys.get(k) is not None]


def place_in_run(trainer_cfg: Any, run: Run, job: str) -> Any:
    """Point the trainer's outputs into ``run.path`` (changes the parsed config in place): the root
    dir, ModelCheckpoint's ``dirpath`` and the panels' ``output_dir`` (unless the config sets them),
    the W&B logger (folder, name, group = experiment, job type, tags, the run's id so a resumed run
    continues it) and a CSVLogger writing ``metrics.csv`` when the config has none. Returns the new
    logger list."""
    from jsonargparse import Namespace

    trainer_cfg["default_root_dir"] = str(run.path)
    for cb in _entries(trainer_cfg.get("callbacks")):
        init = _get(cb, "init_args")
        if init is None:
            continue
        if _class_name(cb).endswith("Checkpoint") and init.get("dirpath") is None:
            init["dirpath"] = str(run.checkpoints)
        if _class_name(cb) == "PredictionPanels" and init.get("output_dir") is None:
            init["output_dir"] = str(run.path)
    loggers = _entries(trainer_cfg.get("logger"))
    if trainer_cfg.get("logger") is False:
        return trainer_cfg.get("logger")
    for lg in loggers:
        init = _get(lg, "init_args")
        if init is None or not _class_name(lg).endswith("WandbLogger"):
            continue
        init["save_dir"] = str(run.path)
        init["name"] = run.name
        init["group"] = run.experiment
        init["job_type"] = job
        init["tags"] = wandb_tags(run.keys)
        init["id"] = run.wandb_id
    if not any(_class_name(lg).endswith("CSVLogger") for lg in loggers):
        # first, so trainer.log_dir (the saved config's folder) is the run folder itself
        loggers.insert(0, Namespace(class_path="fsseg.loggers.RunCSVLogger",
                                    init_args=Namespace(save_dir=str(run.path), flush_logs_every_n_steps=100)))
    trainer_cfg["logger"] = loggers
    return loggers


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)
