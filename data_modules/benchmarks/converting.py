"""What every ``fsseg prepare`` converter shares: files published whole, a progress bar.

A converter skips outputs that already exist (rerun it after an interruption: files are published by
rename, so a killed run never leaves a half-written one), shows a progress bar and ends with a
summary of what it wrote.
"""

from __future__ import annotations

import io
import os
import sys

from PIL import Image
from tqdm import tqdm


def save_whole(img: Image.Image, path: str, **kwargs) -> None:
    """Encode in memory, then rename into place (same folder): an interrupted run leaves either no
    file or a whole one, so "exists" means "done". No fsync: this is restartability, not durability
    across power loss, and an fsync per file would dominate 100k+ small files."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    buf = io.BytesIO()
    img.save(buf, format=kwargs.pop("format", None) or _format_of(path), **kwargs)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(buf.getvalue())
    os.replace(tmp, path)


def _format_of(path: str) -> str:
    return "JPEG" if path.lower().endswith((".jpg", ".jpeg")) else "PNG"


def progress(items, desc: str, quiet: bool):
    return tqdm(items, desc=desc, unit="file", disable=quiet, file=sys.stderr, mininterval=1.0)
