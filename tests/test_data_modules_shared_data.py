"""Data package tests on the real, messy files in ../shared/data (or $FSSEG_SHARED_DATA)."""


import numpy as np
import pytest
import torch
from PIL import Image

from data_modules import (
    FSS1000,
    Coco20i,
    EpisodicDataModule,
    FolderDataset,
    SupportQueryFolderDataModule,
    eligible_classes,
    fixed_episode_list,
    read_mask,
)
from data_modules.image_io import detect_mask_encoding
from tests.shared_data import SHARED

pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.skipif(not (SHARED / "coco128").is_dir(),
                       reason=f"shared test data not found at {SHARED} (set FSSEG_SHARED_DATA)"),
]


def test_coco128_as_coco20i_folds():
    root = str(SHARED / "coco128")
    counts = {}
    for fold in range(4):
        test = Coco20i(root, fold, "test")
        train = Coco20i(root, fold, "train")
        assert test.class_ids == list(range(fold, 80, 4))
        assert set(train.class_ids) == set(range(80)) - set(test.class_ids)
        for c in test.class_ids:
            counts[c] = test.num_samples(c)
    # standard rule, checked against index.json: only classes with >= K+1 images are sampled
    test0 = Coco20i(root, 0, "test")
    for k in (1, 5):
        el = eligible_classes(test0, k)
        assert el == [c for c in test0.class_ids if counts[c] >= k + 1]
        eps = fixed_episode_list(test0, shots=k, num_episodes=100, seed=0)
        assert {e.class_ids[0] for e in eps} <= set(el)
        for e in eps:
            assert e.query not in e.supports[0] and all(s in test0.samples_by_class[e.class_ids[0]]
                                                        for s in e.supports[0])
    assert fixed_episode_list(test0, 1, num_episodes=50) == fixed_episode_list(test0, 1, num_episodes=50)
    # class-index mask decodes per class: person (class 0 -> value 1)
    key = test0.samples_by_class[0][0]
    raw = read_mask(test0.records[key][1], "index")
    img, (m,) = test0.load(key, [0])
    assert set(np.unique(m).tolist()) <= {0, 1} and np.array_equal(m, (raw == 1).astype(np.uint8))
    assert img.shape[:2] == m.shape and 0.001 < m.mean() < 0.95


def test_coco128_datamodule_batch():
    dm = EpisodicDataModule(dataset="coco20i", root=str(SHARED / "coco128"), fold=0, shots=1, image_size=64,
                            batch_size=4, test_episodes=8, train_episodes_per_epoch=4)
    b = next(iter(dm.test_dataloader()))
    assert b["query"].shape == (4, 3, 64, 64) and b["support"].shape == (4, 1, 3, 64, 64)
    assert set(b["class_id"].tolist()) <= set(range(0, 80, 4))
    b = next(iter(dm.train_dataloader()))
    assert not set(b["class_id"].tolist()) & set(range(0, 80, 4))


def test_fss1000_eiffel_class_folder():
    root = str(SHARED / "fss1000-eiffel")
    ds = FSS1000(root, "test")
    assert ds.class_ids == [0] and ds.num_samples(0) == 5
    for key in ds.samples_by_class[0]:
        img, (m,) = ds.load(key, [0])
        assert img.shape == (224, 224, 3)
        assert set(np.unique(m).tolist()) == {0, 1}
        assert 0.005 < m.mean() < 0.6
    assert detect_mask_encoding(ds.records[key][1]) == "binary01"
    assert eligible_classes(ds, 4) == [0]
    with pytest.raises(ValueError, match="K\\+1=6"):
        eligible_classes(ds, 5)  # 5 labelled images cannot make a 5-shot episode


def test_fss1000_eiffel_predict_supports_and_queries():
    root = SHARED / "fss1000-eiffel"
    dm = SupportQueryFolderDataModule(str(root), str(root / "query"), image_size=64, batch_size=4)
    sb = dm.support_batch()
    assert sb["support"].shape == (1, 1, 5, 3, 64, 64)
    assert sb["support_masks"].shape == (1, 1, 5, 64, 64)
    assert set(sb["support_masks"].unique().tolist()) == {0.0, 1.0}
    assert len(sb["support_names"][0]) == 5
    sizes, paths = [], []
    for b in dm.predict_dataloader():
        assert b["query"].shape[1:] == (3, 64, 64)
        sizes += b["query_original_size"].tolist()
        paths += b["query_path"]
    assert len(paths) == 22 and paths == sorted(paths)
    for (h, w), p in zip(sizes, paths):
        W, H = Image.open(p).size
        assert (h, w) == (H, W)
    assert len({tuple(s) for s in sizes}) > 5  # photos of any size


def test_kvasir_noisy_jpeg_masks():
    root = SHARED / "cross-domain" / "kvasir"
    ds = FolderDataset(str(root))
    assert ds.num_samples(0) == 5
    for key in ds.samples_by_class[0]:
        mp = ds.records[key][1]
        img, (m,) = ds.load(key, [0])
        grey = np.asarray(Image.open(mp).convert("L"))
        assert np.array_equal(m, (grey > 127).astype(np.uint8))
        assert set(np.unique(m).tolist()) == {0, 1} and 0.02 < m.mean() < 0.7
        assert img.shape[:2] == m.shape


def test_isic_binary255_masks():
    root = SHARED / "cross-domain" / "isic"
    with pytest.warns(UserWarning, match="non-image"):  # LICENSE.md sits next to the images
        ds = FolderDataset(str(root))
    assert ds.num_samples(0) == 5
    for key in ds.samples_by_class[0]:
        mp = ds.records[key][1]
        assert detect_mask_encoding(mp) == "binary255"
        img, (m,) = ds.load(key, [0])
        raw = np.asarray(Image.open(mp))
        assert np.array_equal(m, (raw == 255).astype(np.uint8))
        assert set(np.unique(m).tolist()) == {0, 1} and 0.02 < m.mean() < 0.9
        assert img.shape == (450, 600, 3)


def test_cross_domain_episodes():
    dm = EpisodicDataModule(dataset="folder", root=str(SHARED / "cross-domain" / "kvasir"), shots=2,
                            image_size=64, batch_size=5, test_episodes=0)
    b = next(iter(dm.test_dataloader()))
    assert b["support"].shape == (5, 2, 3, 64, 64)
    assert set(b["query_mask"].unique().tolist()) == {0, 1}
    assert torch.all(b["support_masks"].flatten(2).sum(-1) > 0)
