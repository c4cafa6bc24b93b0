"""Checkpoint resolution (local path or URL -> cached file) and strict state-dict loading.

``resolve_checkpoint`` is the single place where fsseg touches the network: an http(s) URL is
downloaded once into a cache directory (default ``~/.cache/fsseg``; pass ``cache_dir`` to change
it) with an atomic write (unique temp file in the cache dir + ``os.replace``), so concurrent
processes (DDP ranks) may download simultaneously without ever seeing a partial file. An
optional sha256 is checked both after download and for cached/local files.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterable, Mapping, Optional, Union

import torch
from torch import nn

DEFAULT_CACHE_DIR = Path("~/.cache/fsseg")

__all__ = [
    "WeightsError",
    "CheckpointMismatchError",
    "CheckpointNotFoundError",
    "resolve_checkpoint",
    "load_state_dict_file",
    "sha256_file",
    "strict_load",
    "DEFAULT_CACHE_DIR",
]


class WeightsError(RuntimeError):
    """A checkpoint could not be found, downloaded, verified or read."""


class CheckpointNotFoundError(WeightsError, FileNotFoundError):
    """A local checkpoint path does not exist."""


class CheckpointMismatchError(WeightsError):
    """A checkpoint does not fit the architecture (missing/unexpected keys, shape mismatch)."""


def sha256_file(path: Union[str, Path], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _is_url(s: str) -> bool:
    return urllib.parse.urlparse(s).scheme in ("http", "https")


def _check_sha(path: Path, sha256: Optional[str], source: str) -> None:
    if sha256 is None:
        return
    actual = sha256_file(path)
    if actual.lower() != sha256.lower():
        raise WeightsError(
            f"sha256 mismatch for checkpoint {source} (file {path}): expected {sha256.lower()}, "
            f"got {actual}"
        )


def resolve_checkpoint(
    path_or_url: Union[str, os.PathLike],
    sha256: Optional[str] = None,
    cache_dir: Optional[Union[str, os.PathLike]] = None,
    progress: bool = False,
) -> Path:
    """Return a local path for ``path_or_url``.

    * local path: must exist (``CheckpointNotFoundError`` -- both a ``WeightsError`` and a
      ``FileNotFoundError`` -- naming the path otherwise);
    * http(s) URL: downloaded into ``cache_dir`` (default ``~/.cache/fsseg``) under the URL's file
      name, atomically; an existing cached file is reused (and re-verified if ``sha256`` is given).
    """
    src = os.fspath(path_or_url)
    if not _is_url(src):
        path = Path(src).expanduser()
        if not path.is_file():
            raise CheckpointNotFoundError(f"checkpoint file not found: {path}")
        _check_sha(path, sha256, src)
        return path

    cache = Path(cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    name = os.path.basename(urllib.parse.urlparse(src).path) or "checkpoint"
    target = cache / name
    if target.is_file():
        try:
            _check_sha(target, sha256, src)
            return target
        except WeightsError:
            pass  # stale/corrupt cache entry: download again (replaced atomically below)

    fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=cache)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(src, timeout=60) as resp:
                    shutil.copyfileobj(resp, out, length=1 << 20)
            except Exception as e:  # URLError, HTTPError, timeouts
                raise WeightsError(f"could not download checkpoint {src}: {e}") from e
        _check_sha(tmp, sha256, src)
        os.replace(tmp, target)  # atomic on POSIX; concurrent writers each use their own temp
    finally:
        if tmp.exists():
            tmp.unlink()
    return target


def load_state_dict_file(path: Union[str, os.PathLike]) -> dict:
    """Load a ``.pth``/``.pt``/``.ckpt`` (or ``.safetensors``) file on CPU, tensors only."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path), device="cpu"))
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"could not read checkpoint {path}: {e}") from e


def _few(keys: Iterable[str], n: int = 5) -> str:
    keys = list(keys)
    s = ", ".join(keys[:n])
    return s + (f", ... ({len(keys)} in total)" if len(keys) > n else "")


def describe_state_mismatch(own: Mapping[str, torch.Tensor], theirs: Mapping[str, torch.Tensor]) -> list[str]:
    """Why ``theirs`` does not fit ``own``: missing / unexpected keys and shape mismatches (empty if it fits)."""
    missing = [k for k in own if k not in theirs]
    unexpected = [k for k in theirs if k not in own]
    shapes = [
        f"{k} (checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)})"
        for k, v in theirs.items()
        if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)
    ]
    parts = []
    if missing:
        parts.append(f"missing keys: {_few(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {_few(unexpected)}")
    if shapes:
        parts.append(f"shape mismatch: {_few(shapes, 3)}")
    return parts


def strict_load(module: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "<state dict>") -> None:
    """``load_state_dict(strict=True)`` with a ``CheckpointMismatchError`` that lists offending keys."""
    parts = describe_state_mismatch(module.state_dict(), state_dict)
    if parts:
        raise CheckpointMismatchError(
            f"checkpoint {source} does not match {type(module).__name__} (another architecture?): "
            + "; ".join(parts)
        )
    module.load_state_dict(dict(state_dict), strict=True)
