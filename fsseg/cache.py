"""An on-disk tensor cache that many processes can fill at once without corrupting it.

Used for the frozen SAM teacher's embeddings (stage 1) and for frozen DINOv2/adapter features of
un-augmented images (stage 2): both are pure functions of (model weights, input size and
preprocessing, image), so the cache *namespace* is a fingerprint of the model, the input size and the
preprocessing (the teacher's SAM view), and an entry's key is the image id. A changed
teacher, input size or preprocessing therefore lands in another namespace and is never served stale.

Writes go to a unique temporary file in the same folder and are published with ``os.replace``, which
is atomic on POSIX: a reader sees either no entry or a whole one, never a half-written file, and two
writers of the same entry simply race to publish identical bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import torch

from fsseg.atomic import atomic_write


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


class TensorDiskCache:
    """Map ``key -> dict[str, Tensor]`` under ``root/<namespace digest>/``.

    Args:
        root: cache folder (created).
        namespace: everything the cached values depend on besides the key (model fingerprint,
            input size, dtype). Written to ``namespace.json`` for humans.
        dtype: storage dtype for floating tensors (``None`` keeps them as they are, exact).
    """

    def __init__(self, root: str | os.PathLike, namespace: str, dtype: torch.dtype | None = None) -> None:
        self.namespace = namespace
        self.dir = Path(root) / _digest(namespace)[:16]
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dtype = dtype
        self.hits = 0
        self.misses = 0
        meta = self.dir / "namespace.json"
        if not meta.exists():
            atomic_write(meta, json.dumps({"namespace": namespace}).encode())

    def _path(self, key: str) -> Path:
        d = _digest(key)
        return self.dir / d[:2] / f"{d}.pt"

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        """The entry, its tensors memory-mapped from the file (``torch.load`` with ``mmap=True``): no Python
        bytes copy and no copy into fresh storage; the caller's ``.to(device, dtype)`` is the only
        one. A published file is never rewritten in place (``atomic_write`` renames a new inode over
        it), so a mapping stays valid."""
        path = self._path(key)
        try:
            value = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except FileNotFoundError:
            self.misses += 1
            return None
        except Exception:
            # A file that does not parse (a disk fault, a foreign file): recompute rather than fail.
            self.misses += 1
            return None
        self.hits += 1
        return value

    def _stored(self, value: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        stored = {}
        for name, t in value.items():
            t = t.detach().cpu()
            if self.dtype is not None and t.is_floating_point():
                t = t.to(self.dtype)
            t = t.contiguous()
            # a view of a batch would save the whole batch's storage: copy only then
            stored[name] = t.clone() if t.untyped_storage().nbytes() != t.nbytes else t
        return stored

    def put(self, key: str, value: dict[str, torch.Tensor]) -> None:
        buf = io.BytesIO()
        torch.save(self._stored(value), buf)
        atomic_write(self._path(key), buf.getvalue())

    def entry_bytes(self, value: dict[str, torch.Tensor]) -> int:
        """Bytes one entry like ``value`` takes on disk in this cache's storage dtype (the file as
        ``put`` writes it: tensors plus the zip container)."""
        buf = io.BytesIO()
        torch.save(self._stored(value), buf)
        return len(buf.getvalue())

    def __contains__(self, key: str) -> bool:
        return self._path(key).exists()

    def __len__(self) -> int:
        return sum(1 for _ in self.dir.glob("*/*.pt"))


def module_fingerprint(*modules: torch.nn.Module) -> str:
    """sha256 (16 hex) over the names and values of the modules' state: a cache namespace that
    changes whenever a frozen model's weights do."""
    h = hashlib.sha256()
    for m in modules:
        h.update(type(m).__name__.encode())
        for k, v in sorted(m.state_dict().items()):
            h.update(k.encode())
            h.update(str(tuple(v.shape)).encode())
            h.update(v.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
