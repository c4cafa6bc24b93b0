"""fsseg.cache.TensorDiskCache filled by two processes at once: readers never see a partial entry."""

from __future__ import annotations

import multiprocessing as mp

import pytest
import torch

from fsseg.cache import TensorDiskCache


def _cache_value(key: str) -> dict:
    g = torch.Generator().manual_seed(int.from_bytes(key.encode(), "little") % (2**31))
    return {"feat": torch.randn(64, 32, 32, generator=g), "id": torch.tensor([len(key)])}


def _cache_worker(root: str, wid: int, rounds: int, q) -> None:
    cache = TensorDiskCache(root, "ns-test")
    shared = [f"shared/{i}" for i in range(6)]
    own = [f"w{wid}/{i}" for i in range(6)]
    bad = []
    for r in range(rounds):
        for key in (shared + own) if (r + wid) % 2 else (own + shared)[::-1]:
            cache.put(key, _cache_value(key))
            other = shared[(r * 7 + wid) % len(shared)]
            path = cache._path(other)
            if path.exists():  # a reader racing the writers: a file is either absent or whole
                try:
                    v = torch.load(path, map_location="cpu", weights_only=True)
                    if not torch.equal(v["feat"], _cache_value(other)["feat"]):
                        bad.append(other)
                except Exception as e:  # noqa: BLE001
                    bad.append(f"{other}: {e}")
    q.put((wid, bad))


@pytest.mark.slow
def test_tensor_cache_two_processes(tmp_path):
    """Two processes fill the same TensorDiskCache at once (same and different keys, many times):
    readers never see a partial entry, every entry loads with the right value, no temp files remain."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_cache_worker, args=(str(tmp_path), w, 15, q)) for w in range(2)]
    for p in procs:
        p.start()
    results = dict(q.get(timeout=240) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert results == {0: [], 1: []}, results
    cache = TensorDiskCache(str(tmp_path), "ns-test")
    keys = [f"shared/{i}" for i in range(6)] + [f"w{w}/{i}" for w in range(2) for i in range(6)]
    assert len(cache) == len(keys)
    for k in keys:
        v = cache.get(k)
        assert v is not None and torch.equal(v["feat"], _cache_value(k)["feat"]), k
    assert not list(cache.dir.rglob(".tmp-*"))
