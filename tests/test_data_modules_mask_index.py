"""Mask-derived pools built once (``data_modules.readers.mask_index``): areas cached under the mask files'
names, sizes and mtimes; the area rule applied to them equals the rule applied to the masks; under
DDP (2 gloo processes) rank 0 builds and the other rank reads."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
import torch

from bench.loader import write_coco_tree
from data_modules.benchmarks.coco20i import Coco20i
from data_modules.image_io import read_mask
from data_modules.readers.layout import classes_by_area
from data_modules.readers.mask_index import mask_areas


def test_areas_are_cached_and_rekeyed_when_a_mask_changes(tmp_path):
    root = write_coco_tree(tmp_path / "coco", 30, size=(60, 80))
    paths = sorted(str(p) for p in (root / "masks").iterdir())
    first = mask_areas(paths, str(tmp_path / "index"), workers=1)
    again = mask_areas(paths, str(tmp_path / "index"), workers=1)
    assert (first.source, again.source) == ("built", "read") and again.areas == first.areas
    for p, a in zip(paths, first.areas):  # the rule on the areas == the rule on the mask
        label = read_mask(p, "index")
        for rule in [(0, False), (300, False), (300, True)]:
            wanted = set(range(1, 41))
            assert sorted(classes_by_area(label, wanted, *rule)) == sorted(
                v for v in a if v in wanted and a[v] >= rule[0] and (not rule[1] or set(a) <= wanted))
    st = os.stat(paths[3])
    os.utime(paths[3], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert mask_areas(paths, str(tmp_path / "index"), workers=1).source == "built"  # another key


def test_coco_hdmnet_pools_equal_with_and_without_the_cache(tmp_path):
    root = write_coco_tree(tmp_path / "coco", 40, size=(60, 80))
    opts = dict(min_pixels=2 * 32 * 32 // 8, exclude_novel_images=True)
    plain = Coco20i(str(root), fold=1, split="train", **opts)
    cached = [Coco20i(str(root), fold=1, split="train", mask_index_dir=str(tmp_path / "ix"), **opts) for _ in range(2)]
    assert plain.samples_by_class == cached[0].samples_by_class == cached[1].samples_by_class
    assert sum(map(len, plain.samples_by_class.values())) > 0
    assert len(os.listdir(tmp_path / "ix")) == 1


def _rank(rank: int, init: str, paths: list, cache: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        res = mask_areas(paths, cache, workers=1)
        torch.save({"source": res.source, "areas": res.areas}, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_build_the_areas_once(tmp_path):
    root = write_coco_tree(tmp_path / "coco", 24, size=(60, 80))
    paths = sorted(str(p) for p in (root / "masks").iterdir())
    init = f"file://{tempfile.mktemp(dir=tmp_path)}"
    torch.multiprocessing.spawn(_rank, args=(init, paths, str(tmp_path / "ix"), str(tmp_path)), nprocs=2)
    got = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert [g["source"] for g in got] == ["built", "read"]  # rank 0 counted, rank 1 waited and read
    assert got[0]["areas"] == got[1]["areas"] == mask_areas(paths, None, workers=1).areas
    assert np.sum([len(a) for a in got[0]["areas"]]) > 0
    # a second run: rank 0 reads the file too, both ranks still meet at the barrier
    (tmp_path / "again").mkdir()
    init = f"file://{tempfile.mktemp(dir=tmp_path)}"
    torch.multiprocessing.spawn(_rank, args=(init, paths, str(tmp_path / "ix"), str(tmp_path / "again")), nprocs=2)
    assert [torch.load(tmp_path / "again" / f"rank{r}.pt")["source"] for r in (0, 1)] == ["read", "read"]
