"""Checkpoint writing that can never leave a half-written file behind, on any filesystem."""

from __future__ import annotations

import io
from typing import Any, Optional

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import get_filesystem

from fsseg.atomic import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write ``path`` through a temporary file *in the same folder*, fsync it, then ``os.replace``
    (``fsseg.atomic.atomic_write``).

    Lightning's default goes through fsspec's transaction, whose temporary file lives in ``$TMPDIR``:
    when that is another filesystem (common on clusters: local /tmp, shared run folder), the final
    move is a copy, and a job killed during it leaves a torn ``last.ckpt``. A same-folder rename is
    atomic on POSIX, so a reader (or a resumed run) sees the old checkpoint or the new one, never a mix.
    Remote paths (s3://, gs://, ...) keep Lightning's behaviour.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        fs = get_filesystem(path)
        if type(fs).__name__ != "LocalFileSystem":
            return super().save_checkpoint(checkpoint, path, storage_options)
        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        atomic_write(path, buf.getvalue())
