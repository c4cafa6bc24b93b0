"""Publishing a file all at once: readers see the old version or the new one, never a torn mix."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to a unique temporary file in ``path``'s own folder, fsync it and rename it
    over ``path``. A same-folder ``os.replace`` is atomic on POSIX, so a process killed at any moment
    leaves either the previous file or the new one (at worst plus a stray ``.*.tmp``), and concurrent
    writers of the same path each publish a whole file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
