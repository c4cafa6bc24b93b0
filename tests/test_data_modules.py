"""Data package tests that need no files: synthetic data, episodes, DDP split, bad inputs."""

import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from data_modules import (
    FSS1000,
    BadSampleError,
    EpisodeDataset,
    EpisodicDataModule,
    FolderDataset,
    Pascal5i,
    StridedDistributedSampler,
    SupportQueryFolderDataModule,
    SyntheticFewShot,
    UnlabelledDataModule,
    UnlabelledImageFolder,
    base_classes,
    eligible_classes,
    fixed_episode_list,
    novel_classes,
    rank_slice,
    read_image,
    read_mask,
)
from data_modules.episodes import batch_to_model_dtypes
from data_modules.readers.synthetic import NUM_CLASSES, class_attributes, render
from tests.image_folders import make_folder, save_image


# ----------------------------------------------------------------------------------- synthetic
def test_synthetic_deterministic_and_seed_dependent():
    a_img, a_m = render(7, 3, seed=0, image_size=64)
    b_img, b_m = render(7, 3, seed=0, image_size=64)
    c_img, _ = render(7, 3, seed=1, image_size=64)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_m, b_m)
    assert not np.array_equal(a_img, c_img)
    assert a_img.shape == (64, 64, 3) and a_img.dtype == np.uint8


def test_synthetic_classes_folds_and_masks():
    assert NUM_CLASSES >= 100
    all_novel = []
    for fold in range(4):
        novel, base = set(novel_classes(fold)), set(base_classes(fold))
        assert novel.isdisjoint(base) and len(novel | base) == NUM_CLASSES
        all_novel += list(novel)
    assert sorted(all_novel) == list(range(NUM_CLASSES))  # folds partition the classes
    ds_train = SyntheticFewShot(fold=0, split="train", image_size=48, images_per_class=3)
    ds_test = SyntheticFewShot(fold=0, split="test", image_size=48, images_per_class=3)
    assert set(ds_train.class_ids).isdisjoint(ds_test.class_ids)
    for c in range(0, NUM_CLASSES, 7):
        for j in range(3):
            _, m = render(c, j, 0, 48)
            assert set(np.unique(m).tolist()) == {0, 1}
            assert 0.005 < m.mean() < 0.8


def test_synthetic_classes_visually_distinct():
    """Foreground statistics (mean colour, texture energy, fill ratio) separate the attributes."""
    feats = {}
    for c in range(NUM_CLASSES):
        f = []
        for j in range(2):
            img, m = render(c, j, 0, 96)
            fg = img[m == 1].astype(np.float32)
            f.append(np.concatenate([fg.mean(0) / 255, [fg.mean(1).std() / 128]]))  # luminance std
        feats[c] = np.mean(f, 0)
    # colours: mean foreground colour differs between colour groups for the same shape/texture
    for c in range(0, NUM_CLASSES, 4):
        cols = [feats[c + k][:3] for k in range(4)]
        d = [np.abs(cols[i] - cols[j]).max() for i in range(4) for j in range(i + 1, 4)]
        assert min(d) > 0.1, class_attributes(c)
    # textures: solid has much lower foreground std than striped/checker/dots
    solid = [feats[c][3] for c in range(NUM_CLASSES) if class_attributes(c)[1] == "solid"]
    textured = [feats[c][3] for c in range(NUM_CLASSES) if class_attributes(c)[1] != "solid"]
    assert np.mean(solid) < 0.5 * np.mean(textured)
    # no two classes render identically
    imgs = {c: render(c, 0, 0, 32)[0].tobytes() for c in range(NUM_CLASSES)}
    assert len(set(imgs.values())) == NUM_CLASSES


def test_synthetic_fast():
    import time

    t = time.perf_counter()
    for j in range(50):
        render(j, j, 0, 112)
    assert (time.perf_counter() - t) / 50 < 0.02


# ----------------------------------------------------------------------------------- episodes
def _dm(**kw):
    args = dict(image_size=48, batch_size=3, val_episodes=10, test_episodes=11, train_episodes_per_epoch=6,
                synthetic_image_size=48, synthetic_images_per_class=8)
    args.update(kw)
    return EpisodicDataModule(**args)


@pytest.mark.parametrize("shots", [1, 5])
def test_k_shot_batch_format(shots):
    dm = _dm(shots=shots)
    for loader, sent in ((dm.train_dataloader(), torch.uint8), (dm.test_dataloader(), torch.float32)):
        raw = next(iter(loader))
        # training batches travel as uint8 (input_path: fast) and take this format on the device
        assert raw["query"].dtype == raw["support"].dtype == sent
        b = batch_to_model_dtypes(raw)
        B = 3
        assert b["query"].shape == (B, 3, 48, 48) and b["query"].dtype == torch.float32
        assert 0 <= b["query"].min() and b["query"].max() <= 1
        assert b["query_mask"].shape == (B, 48, 48) and b["query_mask"].dtype == torch.int64
        assert set(b["query_mask"].unique().tolist()) <= {0, 1, 255}
        assert b["support"].shape == (B, shots, 3, 48, 48)
        assert b["support_masks"].shape == (B, shots, 48, 48) and b["support_masks"].dtype == torch.float32
        assert set(b["support_masks"].unique().tolist()) <= {0.0, 1.0}
        assert (b["support_masks"].flatten(2).sum(-1) > 0).all()
        assert b["class_id"].shape == (B,) and b["class_id"].dtype == torch.int64
        assert b["episode_index"].shape == (B,)
        assert isinstance(b["query_name"], list) and len(b["query_name"]) == B
        assert len(b["support_names"]) == B and all(len(s) == shots for s in b["support_names"])
        for q, s in zip(b["query_name"], b["support_names"]):
            assert q not in s and len(set(s)) == shots


def test_n_way_batch_format():
    dm = _dm(shots=1, n_way=2)
    b = next(iter(dm.train_dataloader()))
    assert b["support"].shape == (3, 2, 1, 3, 48, 48)
    assert b["support_masks"].shape == (3, 2, 1, 48, 48)
    assert b["class_id"].shape == (3, 2)
    assert (b["class_id"][:, 0] != b["class_id"][:, 1]).all()
    assert set(b["query_mask"].unique().tolist()) <= {0, 1, 2, 255}
    assert (b["query_mask"] == 1).any()
    b = next(iter(dm.test_dataloader()))
    assert b["support"].shape == (3, 2, 1, 3, 48, 48)
    assert len(b["support_names"][0]) == 2 and len(b["support_names"][0][0]) == 1


def test_class_ids_match_split():
    dm = _dm(fold=2)
    test_classes = {int(e.class_ids[0]) for e in dm.episode_list("test")}
    assert test_classes <= set(novel_classes(2))
    b = next(iter(dm.train_dataloader()))
    assert set(b["class_id"].tolist()) <= set(base_classes(2))


def _collect(loader):
    out = []
    for b in loader:
        for i in range(len(b["query_name"])):
            out.append((int(b["episode_index"][i]), b["query_name"][i], tuple(b["support_names"][i]),
                        int(b["class_id"][i]), float(b["query"][i].sum()), float(b["support"][i].sum())))
    return out


def test_fixed_test_list_independent_of_workers():
    a = _collect(_dm(num_workers=0).test_dataloader())
    b = _collect(_dm(num_workers=2).test_dataloader())
    assert len(a) == 11 and a == b
    # and of construction order / repeated building
    assert _dm().episode_list("test") == _dm().episode_list("test")


def test_fixed_list_split_across_ranks():
    dm = _dm()
    full = _collect(dm.episode_dataloader("test", rank=0, world_size=1))
    r0 = _collect(dm.episode_dataloader("test", rank=0, world_size=2))
    r1 = _collect(dm.episode_dataloader("test", rank=1, world_size=2))
    i0, i1 = {x[0] for x in r0}, {x[0] for x in r1}
    assert i0.isdisjoint(i1) and i0 | i1 == set(range(11))
    assert len(r0) == 6 and len(r1) == 5  # uneven: no padding duplicates
    assert sorted(r0 + r1) == sorted(full)
    assert isinstance(dm.episode_dataloader("test", 1, 2).sampler, torch.utils.data.DistributedSampler)
    assert rank_slice(list(range(11)), 1, 2) == list(StridedDistributedSampler(range(11), 2, 1))


def test_fss_protocol_every_image_once():
    ds = SyntheticFewShot(fold=0, split="test", image_size=32, images_per_class=4)
    eps = fixed_episode_list(ds, shots=1, num_episodes=None)
    assert len(eps) == 4 * len(ds.class_ids)
    assert len({(e.query, e.class_ids[0]) for e in eps}) == len(eps)
    per_class = fixed_episode_list(ds, shots=1, episodes_per_class=3)
    assert len(per_class) == 3 * len(ds.class_ids)


def test_train_episodes_vary_by_epoch_and_repeat_by_seed():
    dm = _dm()
    loader = dm.train_dataloader()
    a = _collect(loader)
    loader.sampler.set_epoch(1)
    b = _collect(loader)
    assert len(a) == 6 and a != b
    # the same (seed, epoch) draws the same episodes, whatever the global RNG did in between
    torch.manual_seed(12345)
    loader.sampler.set_epoch(0)
    assert _collect(loader) == a
    # two DDP ranks split an epoch's draws without overlap
    from data_modules.episodes import TrainEpisodeSampler

    r0, r1 = list(TrainEpisodeSampler(6, 2, 0)), list(TrainEpisodeSampler(6, 2, 1))
    assert not set(r0) & set(r1) and sorted(r0 + r1) == list(range(6))


def test_unlabelled_datamodule_synthetic_fallback(tmp_path):
    dm = UnlabelledDataModule(root=None, image_size=32, batch_size=4, synthetic_images=10, val_fraction=0.2)
    b = next(iter(dm.train_dataloader()))
    assert b["image"].shape == (4, 3, 32, 32) and b["index"].dtype == torch.int64
    assert isinstance(b["path"], list)
    assert len(dm.val_set) == 2 and len(dm.train_set) == 8


# ----------------------------------------------------------------------------------- bad inputs
def test_corrupt_jpeg_and_truncated_png(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.raises(BadSampleError) as e:
        read_image(bad)
    assert str(bad) in str(e.value) and e.value.path == str(bad)
    good = tmp_path / "m.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 2, (200, 200), dtype=np.uint8) * 255).save(good)
    data = good.read_bytes()
    trunc = tmp_path / "trunc.png"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadSampleError, match="trunc.png"):
        read_mask(trunc)


def test_mask_size_mismatch_names_both_files(tmp_path):
    root = tmp_path / "data"
    make_folder(root, mask_fn=lambda i, m: np.zeros((30, 30), np.uint8) if i == 2 else m)
    ds = FolderDataset(str(root))
    key = [k for k in ds.samples_by_class[0] if k.endswith("2.jpg")][0]
    with pytest.raises(BadSampleError) as e:
        ds.load(key, [0])
    msg = str(e.value)
    assert "masks/2.png" in msg and "images/2.jpg" in msg and "30x30" in msg and "50x40" in msg


def test_unexpected_mask_values(tmp_path):
    m = np.zeros((20, 20), np.uint8)
    m[:5] = 1
    m[10:12] = 7
    save_image(str(tmp_path / "m.png"), m)
    with pytest.raises(BadSampleError, match="unexpected mask values"):
        read_mask(tmp_path / "m.png", "binary01")
    root = tmp_path / "data"
    make_folder(root, mask_fn=lambda i, mm: m if i == 1 else mm)
    with pytest.raises(BadSampleError, match=r"1\.png.*unexpected mask values|unexpected mask values"):
        ds = FolderDataset(str(root))
        ds.load([k for k in ds.samples_by_class[0] if k.endswith("1.jpg")][0], [0])


def test_skip_bad_samples_counts(tmp_path):
    root = tmp_path / "data"
    make_folder(root, n=6)
    (root / "images" / "3.jpg").write_bytes(b"garbage")
    ds = FolderDataset(str(root))
    eps = fixed_episode_list(ds, shots=1, num_episodes=None)
    strict = EpisodeDataset(ds, 1, episodes=eps, image_size=32)
    with pytest.raises(BadSampleError, match="3.jpg"):
        for i in range(len(strict)):
            strict[i]
    lenient = EpisodeDataset(ds, 1, episodes=eps, image_size=32, skip_bad_samples=True)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        items = [lenient[i] for i in range(len(lenient))]
    assert len(items) == len(eps) and lenient.num_skipped >= 1
    assert any("3.jpg" in str(x.message) for x in w)
    assert all("3.jpg" not in it["query_name"] and all("3.jpg" not in s for s in it["support_names"])
               for it in items)


def test_empty_folder_and_non_image_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        UnlabelledImageFolder(str(tmp_path / "empty"))
    d = tmp_path / "imgs"
    save_image(str(d / "a.jpg"), np.zeros((10, 12, 3), np.uint8))
    save_image(str(d / "sub" / "b.png"), np.zeros((7, 9, 3), np.uint8))
    (d / "notes.txt").write_text("hello")
    (d / "LICENSE.md").write_text("x")
    with pytest.warns(UserWarning, match="skipped 2 non-image"):
        ds = UnlabelledImageFolder(str(d), image_size=16)
    assert len(ds) == 2 and ds[1]["image"].shape == (3, 16, 16)
    assert ds.paths == sorted(ds.paths)


def test_class_with_too_few_images(tmp_path):
    """Standard FSS-1000 layout root/<class>/N.jpg + N.png with a split_dir."""
    rng = np.random.default_rng(0)
    for cname, n in (("bus", 3), ("owl", 6)):
        for i in range(1, n + 1):
            save_image(f"{tmp_path}/fss/{cname}/{i}.jpg", rng.integers(0, 255, (24, 24, 3), dtype=np.uint8))
            m = np.zeros((24, 24, 3), np.uint8)
            m[4:12, 4:12] = 255
            save_image(f"{tmp_path}/fss/{cname}/{i}.png", m)
    os.makedirs(tmp_path / "splits")
    for s, names in (("trn", ["cat"]), ("val", ["dog"]), ("test", ["bus", "owl"])):
        (tmp_path / "splits" / f"{s}.txt").write_text("\n".join(names) + "\n")
    ds = FSS1000(str(tmp_path / "fss"), "test", split_dir=str(tmp_path / "splits"))
    assert ds.class_ids == [2, 3] and ds.class_names[3] == "owl"
    assert eligible_classes(ds, 2) == [2, 3]
    assert eligible_classes(ds, 3) == [3]  # bus (3 images) is never sampled for 3-shot
    with pytest.raises(ValueError, match=r"K\+1=7.*'bus': 3"):
        eligible_classes(ds, 6)
    with pytest.raises(FileNotFoundError, match="missing"):
        FSS1000(str(tmp_path / "fss"), "train", split_dir=str(tmp_path / "splits"))


def test_pascal_derived_from_masks(tmp_path):
    """Pairs derived from the masks (no list_dir); the real list formats: tests/test_data_modules_protocols.py."""
    root = tmp_path / "VOC2012"
    rng = np.random.default_rng(0)
    for i in range(8):
        img_id = f"2007_{i:06d}"
        save_image(f"{root}/JPEGImages/{img_id}.jpg", rng.integers(0, 255, (30, 40, 3), dtype=np.uint8))
        m = np.zeros((30, 40), np.uint8)
        c = [1, 2, 7, 12][i % 4]  # 1-based VOC class
        m[5:20, 5:25] = c
        m[4, 4:26] = 255  # boundary
        save_image(f"{root}/SegmentationClassAug/{img_id}.png", m)
    test = Pascal5i(str(root), 0, "test")
    assert test.class_ids == [0, 1, 2, 3, 4]
    assert test.samples_by_class[0] == ["2007_000000", "2007_000004"] and len(test.samples_by_class[1]) == 2
    img, (m,) = test.load(test.samples_by_class[0][0], [0])
    assert set(np.unique(m).tolist()) == {0, 1, 255}
    train = Pascal5i(str(root), 0, "train")
    assert 6 in train.class_ids and len(train.samples_by_class[6]) == 2
    dm = EpisodicDataModule(dataset="pascal5i", root=str(root), image_size=32, test_episodes=5, batch_size=5)
    b = next(iter(dm.test_dataloader()))
    assert 255 in b["query_mask"].unique().tolist()
    assert set(b["support_masks"].unique().tolist()) <= {0.0, 1.0}


def test_predict_module_multiclass_folders(tmp_path):
    for c in ("cat", "dog"):
        make_folder(tmp_path / "sup" / c, n=3)
    save_image(str(tmp_path / "q" / "x.jpg"), np.zeros((33, 77, 3), np.uint8))
    dm = SupportQueryFolderDataModule(str(tmp_path / "sup"), str(tmp_path / "q"), image_size=32)
    sb = dm.support_batch()
    assert sb["support"].shape == (1, 2, 3, 3, 32, 32) and sb["support_masks"].shape == (1, 2, 3, 32, 32)
    assert sb["class_names"] == ["cat", "dog"]
    b = next(iter(dm.predict_dataloader()))
    assert b["query"].shape == (1, 3, 32, 32) and b["query_original_size"].tolist() == [[33, 77]]


def test_lightning_trainer_consumes_datamodule():
    import lightning as L

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.seen = []

        def _step(self, batch):
            assert batch["support"].ndim == 5
            return (self.w * batch["query"].mean()).sum()

        def training_step(self, batch, i):
            return self._step(batch)

        def validation_step(self, batch, i):
            self._step(batch)

        def test_step(self, batch, i):
            self.seen += batch["episode_index"].tolist()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = _dm()
    model = Tiny()
    trainer = L.Trainer(max_steps=2, limit_val_batches=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm, verbose=False)
    assert sorted(model.seen) == list(range(11))
