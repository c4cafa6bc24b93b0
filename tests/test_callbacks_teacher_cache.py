"""Teacher cache at scale: bytes per entry by storage dtype, the projected size logged when a
distillation run starts, entries read memory-mapped."""

from __future__ import annotations

import torch

from callbacks.caches import SA1B_ONE_PERCENT, TeacherEmbeddingCache, projected_size_line
from fsseg.cache import TensorDiskCache


class _SamH:
    out_chans, embedding_size = 256, 64


def test_bytes_per_entry_and_projection_for_sam_h(tmp_path):
    sizes = {}
    for name, dtype in (("float32", torch.float32), ("float16", torch.float16), ("bfloat16", torch.bfloat16)):
        cache = TensorDiskCache(tmp_path / name, "ns", dtype=dtype)
        sizes[name] = cache.entry_bytes({"embedding": torch.zeros(256, 64, 64)})
        line = projected_size_line(cache, _SamH(), name, 1000)
        assert f"{sizes[name] / 1e6:.2f} MB per entry ({name}, 256x64x64)" in line
        assert f"1000 training images -> {1000 * sizes[name] / 1e9:.2f} GB" in line
        assert f"{SA1B_ONE_PERCENT * sizes[name] / 1e9:.0f} GB" in line
    # the tensor bytes plus a zip container of under 2 KB
    assert 0 < sizes["float32"] - 256 * 64 * 64 * 4 < 2048 and 0 < sizes["float16"] - 256 * 64 * 64 * 2 < 2048
    assert abs(sizes["bfloat16"] - sizes["float16"]) < 128  # the same bytes, other metadata
    assert TeacherEmbeddingCache().dtype == "float16"


def test_entries_round_trip_memory_mapped_and_batch_views_are_not_saved_whole(tmp_path):
    cache = TensorDiskCache(tmp_path, "ns", dtype=torch.float16)
    batch = torch.randn(4, 8, 5, 5)
    cache.put("a", {"embedding": batch[1]})  # a view of the batch: only its own 200 values are saved
    assert cache.entry_bytes({"embedding": batch[1]}) == cache.entry_bytes({"embedding": batch[1].clone()})
    got = cache.get("a")["embedding"]
    assert got.dtype == torch.float16 and torch.equal(got, batch[1].half())
    assert got.untyped_storage().nbytes() == 8 * 5 * 5 * 2
    assert cache.get("missing") is None and (cache.hits, cache.misses) == (1, 1)
    cache._path("bad").parent.mkdir(parents=True, exist_ok=True)
    cache._path("bad").write_bytes(b"not a torch file")
    assert cache.get("bad") is None  # unreadable entry: recomputed, never an error


def test_the_projected_size_is_printed_when_a_distillation_run_starts(tmp_path, capsys):
    from fsseg.modules import DistillationModule

    module = DistillationModule(backbone="dinov2_tiny", teacher="tiny", resolution=56)
    TeacherEmbeddingCache(cache_dir=str(tmp_path / "c")).setup(None, module, "fit")
    e = module.teacher.embedding_size
    per = module.teacher_cache.entry_bytes({"embedding": torch.zeros(module.teacher.out_chans, e, e)})
    assert f"{per / 1e6:.2f} MB per entry (float16, {module.teacher.out_chans}x{e}x{e})" in capsys.readouterr().err
