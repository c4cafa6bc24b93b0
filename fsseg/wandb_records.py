"""Read an offline W&B run (``wandb/offline-run-*/run-<id>.wandb``) without uploading it.

The file is W&B's transaction log: a 7-byte header (``:W&B``, magic 0xBEE1, version 0) then LevelDB's
log format (32 KiB blocks of records, each with a 7-byte header: CRC32C, length, type FULL / FIRST /
MIDDLE / LAST; a block's tail shorter than a header is zero padding), every record one
``wandb_internal_pb2.Record`` (wandb's ``sdk/internal/datastore.py`` of wandb <= 0.18 wrote and read
this format; wandb >= 0.19 writes it from its Go core and ships no Python reader).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Iterator

_HEADER = b":W&B"
_BLOCK = 32768
_RECORD_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def raw_records(path: str | Path) -> Iterator[bytes]:
    """The payloads stored in a ``.wandb`` file, in order (a torn tail of a killed run is ignored)."""
    data = Path(path).read_bytes()
    if data[:4] != _HEADER or struct.unpack("<H", data[4:6])[0] != 0xBEE1:
        raise ValueError(f"{path}: not a W&B transaction log (no ':W&B' header)")
    pos, pending = 7, b""
    while pos + _RECORD_HEADER <= len(data):
        left_in_block = _BLOCK - pos % _BLOCK
        if left_in_block < _RECORD_HEADER:
            pos += left_in_block  # zero padding at the end of a block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + _RECORD_HEADER])
        start = pos + _RECORD_HEADER
        chunk = data[start:start + length]
        if kind == 0 or len(chunk) < length:
            break  # preallocated zeros or a torn write
        pos = start + length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            yield pending + chunk
            pending = b""


def records(path: str | Path):
    from wandb.proto import wandb_internal_pb2 as pb

    for raw in raw_records(path):
        rec = pb.Record()
        rec.ParseFromString(raw)
        yield rec


def _put(target: dict, item) -> None:
    """``key = value``; a nested key (an image set's ``filenames`` under ``val/panels``) as a nested dict."""
    path = list(item.nested_key) or [item.key]
    for part in path[:-1]:
        target = target.setdefault(part, {})
    target[path[-1]] = json.loads(item.value_json)


def read_run(run_dir: str | Path) -> dict:
    """``{"id", "group", "job_type", "tags", "name", "project", "config", "history", "summary",
    "files"}`` of an offline run folder (``offline-run-*``) or its ``.wandb`` file. ``config`` and
    ``summary`` hold the last value of every key; ``history`` one dict per logged step."""
    run_dir = Path(run_dir)
    path = run_dir if run_dir.suffix == ".wandb" else next(run_dir.glob("run-*.wandb"), None)
    if path is None:
        raise FileNotFoundError(f"{run_dir}: no run-*.wandb file (not an offline W&B run folder)")
    # the id is also in the file name: a SIGKILLed process can leave only the header in the file
    out: dict = {"id": path.stem[len("run-"):], "config": {}, "history": [], "summary": {}, "files": [],
                 "path": str(path), "records": 0}
    for rec in records(path):
        out["records"] += 1
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            out.update(id=r.run_id, group=r.run_group, job_type=r.job_type, tags=list(r.tags),
                       name=r.display_name, project=r.project)
            for item in r.config.update:
                _put(out["config"], item)
        elif kind == "config":
            for item in rec.config.update:
                _put(out["config"], item)
        elif kind == "history":
            row: dict = {}
            for item in rec.history.item:
                _put(row, item)
            out["history"].append(row)
        elif kind == "summary":
            for item in rec.summary.update:
                _put(out["summary"], item)
        elif kind == "files":
            out["files"].extend(f.path for f in rec.files.files)
    return out


def offline_runs(folder: str | Path) -> list[Path]:
    """The offline W&B run folders under ``folder`` (any depth), oldest first."""
    return sorted(Path(folder).rglob("offline-run-*"), key=lambda p: p.name)
