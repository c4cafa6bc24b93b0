"""Training input paths (``EpisodeDataset(input_path=...)``): ``exact`` (HDMNet's float32 chain,
float32 batches), ``fast`` (uint8 batches, ``FusedHDMNetAugment``), ``device`` (the image warp on the
device, ``warp_on_device``); and the loader bench (``bench.loader``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from data_modules import EpisodicDataModule
from data_modules.benchmarks.coco20i import Coco20i
from data_modules.episodes import EpisodeDataset, batch_to_model_dtypes, collate_dicts
from data_modules.hdmnet_augment import FusedHDMNetAugment, HDMNetAugment
from data_modules.readers.synthetic import SyntheticFewShot


def _textured(h=90, w=120, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h // 6, w // 6, 3), dtype=np.uint8)
    import cv2

    img = cv2.resize(base, (w, h), interpolation=cv2.INTER_LINEAR)
    label = np.zeros((h, w), np.uint8)
    label[20:70, 30:90] = 1
    label[0:5, :] = 255
    return img, label


def test_fused_chain_draws_as_hdmnet_and_lands_on_the_same_geometry():
    import cv2

    img, label = _textured(180, 240)
    exact, fused = HDMNetAugment(128, scale=(0.8, 1.25)), FusedHDMNetAugment(128, scale=(0.8, 1.25))
    diffs = []
    for seed in range(24):
        r1, r2 = np.random.default_rng(seed), np.random.default_rng(seed)
        a, (ma,) = exact(img, [label], r1)
        b, (mb,) = fused(img, [label], r2)
        assert r1.random() == r2.random()  # the same number of draws, in the same order
        assert b.dtype == np.uint8 and a.dtype == np.float32 and b.shape == a.shape == (128, 128, 3)
        # one resampling instead of three: labels differ only along edges (1 px), none inside a region
        k = np.ones((3, 3), np.uint8)
        edge = (cv2.morphologyEx(ma, cv2.MORPH_GRADIENT, k) > 0) | (cv2.morphologyEx(mb, cv2.MORPH_GRADIENT, k) > 0)
        assert not ((ma != mb) & ~edge).any(), seed
        assert (ma != mb).mean() < 0.03, seed
        diffs.append(np.abs(a - b.astype(np.float32)).mean())
    assert np.mean(diffs) < 3.0, diffs  # grey levels of 255


def test_fast_path_is_bit_equal_where_no_chain_changes():
    """fsseg's augmentation and evaluation: uint8 batches converted on the device give the very
    float32 batch of the exact path."""
    ds = SyntheticFewShot(fold=0, split="train", image_size=64, images_per_class=12)
    for train in (True, False):
        kw = dict(shots=2, length=6, image_size=48, train=train, augmentation="fsseg")
        if not train:
            from data_modules.episodes import fixed_episode_list
            kw.update(episodes=fixed_episode_list(ds, 2, num_episodes=6))
        e, f = EpisodeDataset(ds, input_path="exact", **kw), EpisodeDataset(ds, input_path="fast", **kw)
        items = [f[i] for i in range(3)]
        assert items[0]["query"].dtype == torch.uint8 and items[0]["query_mask"].dtype == torch.uint8
        a = collate_dicts([e[i] for i in range(3)])
        b = batch_to_model_dtypes(collate_dicts(items))
        for k in ("query", "support", "support_masks", "query_mask"):
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def test_device_path_masks_equal_fast_and_images_within_rounding():
    ds = SyntheticFewShot(fold=0, split="train", image_size=96, images_per_class=12)
    kw = dict(shots=2, length=8, image_size=64, train=True, augmentation="hdmnet", hdmnet_scale=(0.8, 1.25))
    f, d = EpisodeDataset(ds, input_path="fast", **kw), EpisodeDataset(ds, input_path="device", **kw)
    raw = d[0]
    # generated images (no files): sent decoded, placed on the device's canvas there
    assert raw["query"].lead == () and [im.shape for im in raw["query"].images] == [(96, 96, 3)]
    assert raw["support"].lead == (2,) and len(raw["support"].images) == 2 and raw["support_blur"].shape == (2, 2)
    assert raw["query_affine"].shape == (2, 3)
    a = batch_to_model_dtypes(collate_dicts([f[i] for i in range(4)]))
    b = batch_to_model_dtypes(collate_dicts([d[i] for i in range(4)]))
    assert "query_affine" not in b and b["query"].shape == a["query"].shape == (4, 3, 64, 64)
    for k in ("support_masks", "query_mask"):
        assert torch.equal(a[k], b[k]), k
    for k in ("query", "support"):
        diff = (a[k] - b[k]).abs() * 255
        assert diff.mean() < 1.0, (k, diff.mean())  # the CPU chain rounds to uint8, the device one does not


def _jpeg(path, size=(48, 64), **save):
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path, **save)
    return str(path)


def test_encoded_jpegs_only_where_the_device_decode_equals_read_image(tmp_path):
    from PIL import Image

    from data_modules.device_decode import EncodedJPEG, read_encoded_jpeg
    from data_modules.image_io import read_image

    plain = read_encoded_jpeg(_jpeg(tmp_path / "a.jpg", quality=90))
    assert isinstance(plain, EncodedJPEG) and plain.shape == (48, 64, 3)
    assert np.array_equal(plain.decode(), read_image(tmp_path / "a.jpg"))
    grey = tmp_path / "g.jpg"
    Image.fromarray(np.arange(48 * 64, dtype=np.uint8).reshape(48, 64)).save(grey)
    assert np.array_equal(read_encoded_jpeg(grey).decode(), read_image(grey))
    exif = Image.Exif()
    exif[0x0112] = 6
    assert read_encoded_jpeg(_jpeg(tmp_path / "turned.jpg", exif=exif)) is None  # read_image turns it
    assert read_encoded_jpeg(_jpeg(tmp_path / "p.jpg", progressive=True)) is None
    assert read_encoded_jpeg(_jpeg(tmp_path / "a.png")) is None
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "a.jpg").read_bytes()[:-40])
    assert read_encoded_jpeg(tmp_path / "cut.jpg") is None  # truncated: the loader's decode names it


def test_device_path_sends_jpeg_bytes_and_decodes_them_on_the_device(tmp_path, monkeypatch):
    from bench.loader import write_coco_tree
    from data_modules import device_decode
    from data_modules.device_decode import EncodedJPEG, canvases_on_device

    root = write_coco_tree(tmp_path / "coco", 16, size=(120, 160))
    ds = Coco20i(str(root), fold=0, split="train")
    kw = dict(shots=2, length=8, image_size=64, train=True, augmentation="hdmnet", hdmnet_scale=(0.8, 1.25),
              input_path="device")
    items = [EpisodeDataset(ds, **kw)[i] for i in range(3)]
    assert all(isinstance(im, EncodedJPEG) for it in items for k in ("query", "support") for im in it[k].images)
    got = batch_to_model_dtypes(collate_dicts(items))
    monkeypatch.setattr("data_modules.readers.base.read_encoded_jpeg", lambda path: None)  # decode in the loader
    decoded = [EpisodeDataset(ds, **kw)[i] for i in range(3)]
    assert all(isinstance(im, np.ndarray) for it in decoded for im in it["support"].images)
    # torchvision's decode equals PIL's (read_image): the batches are equal, with a fraction of the bytes sent
    want = batch_to_model_dtypes(collate_dicts(decoded))
    for k in ("query", "support", "support_masks", "query_mask"):
        assert torch.equal(got[k], want[k]), k
    assert items[0]["support"].nbytes * 5 < decoded[0]["support"].nbytes
    bad = EncodedJPEG("broken.jpg", np.frombuffer(b"\xff\xd8not a jpeg\xff\xd9", np.uint8), 4, 4)
    with pytest.raises(RuntimeError, match="broken.jpg: cannot decode the JPEG on cpu"):
        canvases_on_device([device_decode.DeviceImages([bad], ())], 8, (0, 0, 0), "cpu")


def test_fast_and_device_batches_train_through_the_module():
    from fsseg.modules import FewShotModule

    module = FewShotModule(segmenter={"name": "tiny", "method": "ba_pcs"}, image_size=56, lr_schedule="none")
    module.log = module.log_dict = lambda *a, **k: None
    losses = {}
    for path in ("exact", "fast", "device"):
        dm = EpisodicDataModule(dataset="synthetic", image_size=56, synthetic_image_size=64, batch_size=2,
                                synthetic_images_per_class=6, val_episodes=2,
                                train_episodes_per_epoch=2, augmentation="hdmnet", input_path=path)
        batch = batch_to_model_dtypes(next(iter(dm.train_dataloader())))
        assert batch["query"].dtype == torch.float32 and batch["query"].shape == (2, 3, 56, 56)
        assert batch["query_mask"].dtype == torch.int64 and batch["support_masks"].dtype == torch.float32
        losses[path] = module.training_step(batch, 0).item()
    assert all(math.isfinite(v) for v in losses.values())
    assert EpisodicDataModule(dataset="synthetic").input_path == "fast"
    with pytest.raises(ValueError, match="input_path"):
        EpisodeDataset(SyntheticFewShot(fold=0, split="train", image_size=32, images_per_class=4), input_path="gpu")


def test_loader_bench_on_a_generated_tree(tmp_path):
    from bench.loader import episode_costs, gpu_feed, markdown, target, write_coco_tree

    root = write_coco_tree(tmp_path / "coco", 24, size=(120, 160))
    assert len(Coco20i(str(root), fold=0, split="train").all_keys()) > 0
    rows = episode_costs(str(root), 64, [1], reps=3)
    assert [(r["augmentation"], r["shots"]) for r in rows] == [("fsseg", 1), ("hdmnet", 1)]
    for r in rows:
        assert all(r[p]["cpu_ms"] > 0 and r[p]["runs"] == 3 for p in ("exact", "fast", "device"))
        # float32 images + int64 labels vs uint8: 3 images x 3 x 64 x 64 x (4 - 1) + labels 64 x 64 x (8 - 1) + ...
        assert r["exact"]["bytes"] > 3.5 * r["fast"]["bytes"]
        assert r["floor_jpeg_decode_ms"] > 0
    model = {"by_shots": {1: {"gflop_episode": 600.0}}}
    g = gpu_feed(rows, model)[0]
    # 40% of 154.8 TFLOP/s over 600 GFLOP = 103.2 episodes/s; cores = that x CPU seconds per episode
    assert g["episodes_per_s"] == pytest.approx(0.4 * 154.8e3 / 600.0)
    assert g["cores"]["exact"] == pytest.approx(g["episodes_per_s"] * rows[0]["exact"]["cpu_ms"] / 1e3)
    model["by_shots"][1].update(gflop_trainable=2.0, trainable_step_s=0.1, trainable_step={"min_s": 0.08})
    ld = dict(source="generated", size=64, reps=3, rows=rows, model=dict(model, variant="compact", backbone="b",
              size=64), utilization=0.4, gpu=gpu_feed(rows, model), trainable_device="cpu")
    md = "\n".join(markdown(ld))
    assert "| hdmnet | 1 |" in md and "RTX A6000" in md and "10.0 episodes/s" in md
    t = target(ld)
    assert t["value"] == pytest.approx(rows[1]["device"]["speedup_vs_exact"]) and t["passed"] == (t["value"] >= 2)


def test_device_path_through_loader_workers(tmp_path):
    from bench.loader import write_coco_tree
    from data_modules.device_decode import DeviceImages

    root = write_coco_tree(tmp_path / "coco", 24, size=(120, 160))
    dm = EpisodicDataModule(dataset="coco20i", root=str(root), image_size=64, batch_size=2, num_workers=1,
                            train_episodes_per_epoch=2, augmentation="hdmnet", input_path="device")
    raw = next(iter(dm.train_dataloader()))  # the bytes crossed a worker process
    assert all(isinstance(x, DeviceImages) for x in raw["query"]) and len(raw["support"]) == 2
    batch = dm.on_after_batch_transfer(raw, 0)
    assert batch["query"].shape == (2, 3, 64, 64) and batch["query"].dtype == torch.float32
    assert batch["support"].shape == (2, 1, 3, 64, 64) and "support_affine" not in batch
