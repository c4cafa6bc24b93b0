"""Portable checkpoints: a run folder moved to another machine still predicts, tests and exports.

What an fsseg checkpoint holds (written by ``PortableCheckpointMixin.on_save_checkpoint``):

* ``state_dict``: everything trained (adapter, prompts, correlation, decoder, ...) and every weight
  that came from an *init-only* file (``FewShotModule``: the SAM decoder/PE/mask-downscaling
  initialisation and the stage-1 adapter; ``DistillationModule``: ``adapter_init``). Those files are
  never read again when the model is rebuilt from the checkpoint (``INIT_ONLY_WEIGHT_ARGS``).
* ``hyper_parameters``: the architecture (``_class_path`` + every constructor argument).
* ``fsseg_frozen_weights``: one record per frozen, large, official file left out of the state dict
  (DINOv2; the SAM teacher in stage 1): ``{"arg", "prefix", "name", "sha256", "bytes", "source",
  "url"}``. ``name`` is the official file name (``dinov2_vitb14_pretrain.pth``), ``source`` the path
  or URL it was loaded from, ``url`` a download address when one is known.

Rebuilding (``rebuild_hparams``) finds each frozen file, in this order: a path given now (command
line / ``overrides``); the stored ``source`` when it still exists; a file called ``name`` in the
checkpoint's folder or up to three folders above it (also in their ``weights/`` sub-folders); the
weights cache (``~/.cache/fsseg``); a download from ``url``. A file found by name must have the
recorded sha256 (a different file would give silently wrong features). Nothing found: a
``CheckpointNotFoundError`` that says where it looked and how to give the file.
"""

from __future__ import annotations

import importlib
import io
import os
import urllib.parse
from pathlib import Path
from typing import Any, Mapping, Optional

import lightning as L
import torch

from fsseg.atomic import atomic_write
from fsseg.models.weights import (
    DEFAULT_CACHE_DIR,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    WeightsError,
    resolve_checkpoint,
    sha256_file,
)

FROZEN_KEY = "fsseg_frozen_weights"
BUNDLE_KEY = "fsseg_bundle"
_SHA_CACHE: dict[tuple, str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, computed once per process per (path, size, mtime)."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = sha256_file(path)
    return _SHA_CACHE[key]


def _is_url(s: str) -> bool:
    return urllib.parse.urlparse(str(s)).scheme in ("http", "https")


def _basename(source: str) -> str:
    return os.path.basename(urllib.parse.urlparse(source).path) if _is_url(source) else os.path.basename(source)


def backbone_of(hparams: Mapping[str, Any]) -> Optional[str]:
    """The DINOv2 architecture a module's hyper-parameters build: its ``backbone`` (stage 1) or its
    model spec's (``segmenter``)."""
    if hparams.get("backbone"):
        return str(hparams["backbone"])
    if hparams.get("segmenter"):
        from fsseg.models.segmenters import spec_value

        return spec_value(hparams["segmenter"], "backbone")
    return None


def official_url(arg: str, name: str, hparams: Mapping[str, Any]) -> Optional[str]:
    """The official download address of a frozen file called ``name``, when fsseg knows it."""
    from fsseg.models.backbones import backbone_weights, weights_by_file_name

    if arg == "dinov2_checkpoint":
        weights = backbone_weights(str(backbone_of(hparams)))
        if weights is not None and weights.file_name == name:
            return weights.url
    if arg == "sam_checkpoint":
        weights = weights_by_file_name(name, "teacher")
        if weights is not None:
            return weights.url
    return None


def frozen_weight_record(arg: str, prefix: str, source: str, hparams: Mapping[str, Any],
                         sha256: Optional[str] = None) -> dict:
    """The record saved for one frozen file (see the module docstring); hashes the local file."""
    local = resolve_checkpoint(source) if not _is_url(source) else resolve_checkpoint(source, sha256=sha256)
    name = _basename(source)
    return {"arg": arg, "prefix": prefix, "name": name, "sha256": sha256 or file_sha256(local),
            "bytes": os.path.getsize(local), "source": str(source),
            "url": source if _is_url(source) else official_url(arg, name, hparams)}


def search_dirs(ckpt_path: Optional[str]) -> list[Path]:
    """Folders searched by file name: the checkpoint's folder and three above it (and their
    ``weights/``), then the weights cache."""
    dirs: list[Path] = []
    if ckpt_path:
        d = Path(ckpt_path).resolve().parent
        for folder in [d, *list(d.parents)[:3]]:
            dirs += [folder, folder / "weights"]
    dirs.append(Path(DEFAULT_CACHE_DIR).expanduser())
    return dirs


def _sha_ok(path: Path, record: Mapping[str, Any]) -> bool:
    return not record.get("sha256") or file_sha256(path) == record["sha256"]


def locate_frozen_file(record: Mapping[str, Any], explicit: Optional[str] = None,
                       ckpt_path: Optional[str] = None, download: bool = True) -> str:
    """A local path (or URL to download) for a frozen file record; see the module docstring."""
    arg, name, sha = record["arg"], record["name"], record.get("sha256")
    flag = f"--model.init_args.{arg}"
    if explicit:
        path = resolve_checkpoint(explicit)
        if not _sha_ok(path, record):
            raise WeightsError(
                f"{path}: sha256 {file_sha256(path)[:12]}... differs from the {name} this checkpoint was trained "
                f"with ({sha[:12]}...); the frozen features would be different. Give the original file.")
        return str(path)
    source = str(record.get("source") or "")
    if source and not _is_url(source) and Path(source).expanduser().is_file() and _sha_ok(Path(source).expanduser(), record):
        return source
    looked = [source] if source and not _is_url(source) else []
    for d in search_dirs(ckpt_path):
        cand = d / name
        looked.append(str(cand))
        if cand.is_file():
            if _sha_ok(cand, record):
                return str(cand)
            looked[-1] += " (other sha256)"
    url = record.get("url")
    if download and url:
        return str(resolve_checkpoint(url, sha256=sha))
    raise CheckpointNotFoundError(
        f"frozen weights {name} (sha256 {str(sha)[:12]}...) needed by {ckpt_path or 'the checkpoint'} not found "
        f"(looked in: {', '.join(dict.fromkeys(looked))}); give the file with {flag} PATH or copy it into "
        f"{Path(DEFAULT_CACHE_DIR).expanduser()}")


def module_class(class_path: str):
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def load_checkpoint_file(path: str | os.PathLike) -> dict:
    """A checkpoint's contents, tensors and plain values only (no pickled code runs)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint file not found: {path}")
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        if type(e).__name__ == "UnpicklingError":
            first = str(e).strip().splitlines()[0]
            raise WeightsError(f"{path}: {first} The checkpoint holds pickled objects; pass --weights_only false "
                               "only if you trust its source.") from e
        raise WeightsError(f"{path}: cannot read checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointMismatchError(f"{path}: not a Lightning checkpoint (no state_dict)")
    return ckpt


def frozen_records(ckpt: Mapping[str, Any], ckpt_path: Optional[str] = None) -> list[dict]:
    """The checkpoint's frozen-file records (see the module docstring)."""
    if FROZEN_KEY not in ckpt:
        raise CheckpointMismatchError(f"{ckpt_path or 'checkpoint'}: no {FROZEN_KEY} records: not written by this "
                                      "fsseg version (retrain, or export it with the fsseg that wrote it)")
    return [dict(r) for r in ckpt[FROZEN_KEY]]


def rebuild_hparams(ckpt: Mapping[str, Any], ckpt_path: Optional[str] = None,
                    overrides: Optional[Mapping[str, Any]] = None, download: bool = True,
                    default_cls=None) -> tuple[str, dict]:
    """``(class_path, constructor kwargs)`` that rebuild the checkpoint's module on this machine:
    frozen files located (``locate_frozen_file``), init-only files dropped (their weights are in the
    state dict), ``overrides`` (arguments given now) applied last. ``default_cls``: the class when the
    checkpoint does not name one (saved outside LightningCLI); else ``FewShotModule``."""
    hp = dict(ckpt.get("hyper_parameters") or {})
    hp.pop("_instantiator", None)
    fallback = f"{default_cls.__module__}.{default_cls.__name__}" if default_cls else "fsseg.modules.FewShotModule"
    class_path = hp.pop("_class_path", None) or fallback
    cls = module_class(class_path)
    overrides = dict(overrides or {})
    for rec in frozen_records(ckpt, ckpt_path):
        hp[rec["arg"]] = locate_frozen_file(rec, overrides.pop(rec["arg"], None), ckpt_path, download)
    for arg in getattr(cls, "INIT_ONLY_WEIGHT_ARGS", ()):
        hp[arg] = None
        overrides.pop(arg, None)  # would be overwritten by the checkpoint's weights anyway
    hp.update(overrides)
    return class_path, hp


def load_module_from_checkpoint(path: str | os.PathLike, cls=None, overrides: Optional[Mapping[str, Any]] = None,
                                map_location: Any = "cpu"):
    """Rebuild a fsseg LightningModule from ``path`` on this machine and load its weights."""
    ckpt = load_checkpoint_file(path)
    class_path, hp = rebuild_hparams(ckpt, str(path), overrides, default_cls=cls)
    klass = module_class(class_path)
    if cls is not None and not issubclass(klass, cls):
        raise CheckpointMismatchError(f"{path}: a {klass.__name__} checkpoint, not a {cls.__name__} one")
    module = _construct_own_hparams(klass, hp)
    module.on_load_checkpoint(ckpt)
    module.load_state_dict(ckpt["state_dict"], strict=False)
    if map_location is not None:
        module = module.to(map_location if not callable(map_location) else "cpu")
    return module


def _construct_own_hparams(klass, hp: Mapping[str, Any]):
    """``klass(**hp)`` recording ``hp`` as its hyper-parameters. Under LightningCLI, Lightning hands the
    arguments of the module being instantiated to every ``save_hyperparameters`` call in between
    (hparams_mixin ``_given_hyperparameters``), so a checkpoint loaded inside another module's
    ``__init__`` (a specialisation's teacher) would record, and be built from, the outer module's."""
    try:
        from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
    except ImportError:  # a Lightning without it: nothing to reset
        return klass(**hp)
    token = _given_hyperparameters.set(None)
    try:
        return klass(**hp)
    finally:
        _given_hyperparameters.reset(token)


def write_bundle(module, path: str | os.PathLike, source_ckpt: Optional[str] = None,
                 hparams: Optional[Mapping[str, Any]] = None) -> Path:
    """One file with everything, the frozen encoder included: rebuilds with no weight file at all.
    ``hparams``: the constructor arguments that rebuild ``module`` from its state dict alone (default:
    its own hyper-parameters)."""
    hp = dict(module.hparams if hparams is None else hparams)
    cls = type(module)
    records = []
    for arg, _prefix in getattr(cls, "FROZEN_WEIGHT_ARGS", {}).items():
        if hp.get(arg):
            records.append({"arg": arg, "name": _basename(str(hp[arg]))})
        hp[arg] = None  # built with random weights, then filled from the bundled state dict
    for arg in getattr(cls, "INIT_ONLY_WEIGHT_ARGS", ()):
        hp[arg] = None
    hp["_class_path"] = f"{cls.__module__}.{cls.__name__}"
    ckpt = {"state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
            "hyper_parameters": hp, "pytorch-lightning_version": L.__version__, "epoch": 0, "global_step": 0,
            FROZEN_KEY: [], BUNDLE_KEY: {"from": str(source_ckpt) if source_ckpt else None, "frozen_included": records}}
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    return atomic_write(path, buf.getvalue())


OFFICIAL = "official"


def resolve_official_weights(init_args: Any) -> dict:
    """Replace ``official`` in ``dinov2_checkpoint`` / ``sam_checkpoint`` by the official download
    address of the configured backbone and SAM encoder (ViT-H when the module has no ``teacher``),
    so configs name the weights once (``fsseg.models.backbones.OFFICIAL_WEIGHTS`` holds the
    addresses). Returns what was replaced; changes ``init_args`` in place."""
    from fsseg.models.backbones import OFFICIAL_WEIGHTS, backbone_weights, teacher_weights

    done = {}
    if init_args is None:
        return done
    if init_args.get("dinov2_checkpoint") == OFFICIAL:
        backbone = str(backbone_of(init_args))
        weights = backbone_weights(backbone)
        if weights is None:
            raise WeightsError(f"--model.init_args.dinov2_checkpoint official: backbone {backbone!r} has no official "
                               "DINOv2 weights; give a path or URL (or null for random weights)")
        init_args["dinov2_checkpoint"] = done["dinov2_checkpoint"] = weights.url
    if init_args.get("sam_checkpoint") == OFFICIAL:
        teacher = str(init_args.get("teacher") or "vit_h")
        weights = teacher_weights(teacher)
        if weights is None:
            official = [w.arch for w in OFFICIAL_WEIGHTS.values() if w.table == "teacher"]
            raise WeightsError(f"--model.init_args.sam_checkpoint official: SAM encoder {teacher!r} has no official "
                               f"weights (official ones: {', '.join(official)}); give a path or URL")
        init_args["sam_checkpoint"] = done["sam_checkpoint"] = weights.url
    return done
