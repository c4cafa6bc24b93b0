"""Per-mask class areas, computed once: what the rules that derive pools from masks need.

BAM/HDMNet's pools (HDMNet util/dataset.py:24-80, ``layout.classes_by_area``) depend only on each
label's classes and their pixel counts. ``mask_areas`` returns them for a list of class-index mask
files, ``{class value: pixels}`` per file (0 and 255 left out), and keeps them on disk under a key of
the files' names, sizes and modification times (and the counting's version): a second run, another
fold, shot or rule reads them back instead of opening every mask. The rule itself (``min_pixels``,
novel-image exclusion, fold) is applied to the areas afterwards, in milliseconds, so it is not part of
the key. A cold build runs in worker processes with a progress bar; under DDP rank 0 builds while the
other ranks wait at a barrier, then read the file.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..image_io import read_mask

# Changes whenever the reading or the counting changes, so an old file is never served.
AREAS_VERSION = "mask-areas-1"


def areas_of(path: str) -> Dict[int, int]:
    """``{class value: pixels}`` of a class-index mask (``read_mask(path, 'index')``), 0 and 255 left out."""
    label = read_mask(path, "index")
    counts = np.bincount(label.ravel(), minlength=256)
    return {int(v): int(counts[v]) for v in np.flatnonzero(counts) if v not in (0, 255)}


def areas_key(paths: Sequence[str]) -> str:
    """sha1 over the counting's version and every file's name, size and mtime, in order."""
    h = hashlib.sha1(AREAS_VERSION.encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"\n{os.path.abspath(p)}\t{st.st_size}\t{st.st_mtime_ns}".encode())
    return h.hexdigest()


@dataclass
class MaskAreas:
    areas: List[Dict[int, int]]  # per path, in the order given
    source: str  # "built" (masks read here), "read" (cache file) or "index" (prepare's index.json)
    path: Optional[str] = None  # the cache file


def _rank_world():
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except ImportError:  # pragma: no cover
        pass
    return 0, 1


def _build(paths: Sequence[str], workers: int, desc: str) -> List[Dict[int, int]]:
    from tqdm import tqdm

    bar = dict(total=len(paths), desc=desc, unit="mask", file=sys.stderr, mininterval=1.0,
               disable=len(paths) < 200)
    if workers <= 1 or len(paths) < 200:
        return [areas_of(p) for p in tqdm(paths, **bar)]
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with ctx.Pool(workers) as pool:
        return list(tqdm(pool.imap(areas_of, paths, chunksize=64), **bar))


def _load(path: Path, paths: Sequence[str]) -> Optional[List[Dict[int, int]]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if data.get("version") != AREAS_VERSION or len(data.get("areas", ())) != len(paths):
        return None
    return [{int(v): int(n) for v, n in a.items()} for a in data["areas"]]


def _save(path: Path, paths: Sequence[str], areas: List[Dict[int, int]]) -> None:
    """Published whole (a same-folder rename), so a concurrent reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({"version": AREAS_VERSION, "masks": len(paths), "first": paths[:1],
                       "areas": [{str(v): n for v, n in a.items()} for a in areas]}, f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def mask_areas(paths: Sequence[str], cache_dir: Optional[str], workers: Optional[int] = None,
               desc: str = "mask areas") -> MaskAreas:
    """Areas of every mask in ``paths``; ``cache_dir`` None: computed, not kept."""
    paths = [str(p) for p in paths]
    workers = workers if workers is not None else min(16, len(os.sched_getaffinity(0)))
    if not cache_dir:
        return MaskAreas(_build(paths, workers, desc), "built")
    file = Path(cache_dir) / f"{areas_key(paths)[:24]}.json"
    rank, world = _rank_world()
    if world > 1:
        # every rank takes the same path to the barrier: only rank 0 looks at the file before it
        import torch.distributed as dist

        if rank == 0:
            areas = _load(file, paths) if file.is_file() else None
            source = "read"
            if areas is None:
                areas, source = _build(paths, workers, desc), "built"
                _save(file, paths, areas)
        dist.barrier()  # the other ranks wait for rank 0's file
        if rank == 0:
            return MaskAreas(areas, source, str(file))
        cached = _load(file, paths)
        if cached is None:
            raise RuntimeError(f"mask areas: rank {rank} cannot read {file} written by rank 0 (is {cache_dir!r} "
                               "on a file system every rank sees? set data.mask_index_dir to one that is)")
        return MaskAreas(cached, "read", str(file))
    cached = _load(file, paths) if file.is_file() else None
    if cached is not None:
        return MaskAreas(cached, "read", str(file))
    areas = _build(paths, workers, desc)
    _save(file, paths, areas)
    return MaskAreas(areas, "built", str(file))


__all__ = ["AREAS_VERSION", "MaskAreas", "areas_key", "areas_of", "mask_areas"]
