"""DistillFSS's protocol (docs/protocols/distillfss.md): readers in the published layouts, the
budget support selection and split, the dataset-pooled foreground IoU. bench/distillfss.py:
tests/test_bench_distillfss.py."""

import os
import random
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from data_modules import (
    ISIC3,
    BudgetSpecializationDataModule,
    KvasirSEG,
    Nucleus,
    Pothole,
    SupportSetDataModule,
)
from data_modules.episodes.distillfss_budget import (
    hierarchical_uniform_indices,
    per_class_budget,
    select_support_budget,
    split_train_test,
)
from data_modules.image_io import BadSampleError
from data_modules.readers.pool import save_test_csv
from fsseg.metrics import DatasetForegroundIoU, FewShotIoU, binarize_multiclass
from fsseg.modules import SpecializeModule

TINY = dict(segmenter={"name": "tiny", "method": "full"}, image_size=56)


def _img(path, h=20, w=24, seed=0):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def _mask(path, arr, mode=None, **save):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode).save(path, **save)


def _box(h=20, w=24, value=255, top=4):
    m = np.zeros((h, w), np.uint8)
    m[top:top + 8, 6:16] = value
    return m


def kvasir_tree(root: Path, n: int = 12) -> Path:
    for i in range(n):
        _img(root / "images" / f"cju{i:03d}.jpg", h=24, w=32, seed=i)
        m = np.zeros((24, 32, 3), np.uint8)  # flat 8x8-aligned blocks: JPEG keeps their values
        m[0:8, 8:16] = 255
        m[16:24, 8:16] = 240  # a grey level below the reference's 245: background
        _mask(root / "masks" / f"cju{i:03d}.jpg", m, quality=100, subsampling=0)
    return root


def isic_tree(root: Path) -> Path:
    # ISIC 2019 table (one-hot; "_downsampled" names as in the real file), ISIC 2018 Task 1 layout
    cols = ["image", "MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]
    classes = {"NV": [0, 1, 2, 3], "MEL": [4, 5, 6], "BKL": [7, 8]}
    rows = []
    for col, ids in classes.items():
        for i in ids:
            name = f"ISIC_{i:07d}" + ("_downsampled" if i == 5 else "")
            rows.append([name] + [1.0 if c == col else 0.0 for c in cols[1:]])
    root.mkdir(parents=True, exist_ok=True)
    (root / "ISIC_2019_Training_GroundTruth.csv").write_text(
        ",".join(cols) + "\n" + "".join(",".join(str(x) for x in r) + "\n" for r in rows))
    for i in range(10):  # 9 is not in the class table: dropped, as the reference's inner join
        _img(root / "ISIC2018_Task1-2_Training_Input" / f"ISIC_{i:07d}.jpg", seed=i)
        _mask(root / "ISIC2018_Task1_Training_GroundTruth" / f"ISIC_{i:07d}_segmentation.png", _box())
    return root


def test_hierarchical_uniform_indices_worked_by_hand():
    # DistillFSS utils.py:407-430: ends first, then midpoints level by level, sorted, first M
    assert hierarchical_uniform_indices(10, 1) == [0]
    assert hierarchical_uniform_indices(10, 2) == [0, 10]
    assert hierarchical_uniform_indices(10, 3) == [0, 5, 10]
    assert hierarchical_uniform_indices(10, 4) == [0, 2, 5, 10]  # stops adding once M is reached
    assert hierarchical_uniform_indices(9, 5) == [0, 2, 4, 6, 9]
    assert hierarchical_uniform_indices(2, 5) == [0, 1, 2]  # too short a list: fewer
    assert hierarchical_uniform_indices(10, 0) == []  # utils.py:430, [0, N][:0]
    # DistillFSS's budget rules: ISIC K // 4 (isic.py:40-41, 106: num_classes counts the background),
    # Industrial K // N (industrial.py:116), the others K images in all
    assert per_class_budget(9, 3, "per_class_with_background") == 2
    assert per_class_budget(60, 3, "per_class_with_background") == 15
    assert per_class_budget(10, 4, "per_class") == 2 and per_class_budget(25, 1, "images") == 25
    with pytest.raises(ValueError, match=r"--data.budget 3 gives 3 // 4 \(3 classes \+ background\) = 0"):
        per_class_budget(3, 3, "per_class_with_background")
    with pytest.raises(ValueError, match="use --data.budget 4 or more"):
        select_support_budget({0: ["a"], 1: ["b"], 2: ["c"], 3: ["d"]}, 3, "per_class")
    with pytest.warns(UserWarning, match="only 2 training image"):  # all of them, as the reference's picks run out
        assert select_support_budget({0: ["a", "b"]}, 3) == {0: ["a", "b"]}
    with pytest.warns(UserWarning, match="using 1"):  # [0, 0]: the one image, once
        assert select_support_budget({0: ["a"]}, 2) == {0: ["a"]}
    # "images": the same K images for every class, in the given order
    assert select_support_budget({0: ["b", "a", "c"], 1: []}, 2, "images", order=["c", "b", "a"]) == \
        {0: ["c", "a"], 1: ["c", "a"]}


def test_split_is_sklearns_draw_on_sorted_names():
    keys = [f"id{i}" for i in range(10)]
    shuffled = random.Random(1).sample(keys, len(keys))
    # scikit-learn: train_test_split(range(10), test_size=0.2, random_state=42) -> test [8, 1]
    train, test = split_train_test(shuffled)
    assert test == ["id1", "id8"] and train == sorted(set(keys) - {"id1", "id8"})
    assert split_train_test(keys, published_test=["id3"]) == ([k for k in keys if k != "id3"], ["id3"])
    with pytest.raises(ValueError, match="not in the dataset"):
        split_train_test(keys, published_test=["nope"])


def test_budget_selection_ignores_listing_order(tmp_path, monkeypatch):
    root = kvasir_tree(tmp_path / "Kvasir-SEG")
    real_listdir = os.listdir

    def build(seed):
        rng = random.Random(seed)
        monkeypatch.setattr(os, "listdir", lambda p: rng.sample(real_listdir(p), len(real_listdir(p))))
        dm = BudgetSpecializationDataModule("kvasir", str(root), budget=5, image_size=56)
        monkeypatch.setattr(os, "listdir", real_listdir)
        return dm.support_keys, dm.test_keys

    first = build(0)
    for seed in (1, 2, 3):
        assert build(seed) == first
    support, test = first
    # 12 ids: 3 drawn for test; hierarchical picks 0, 2, 4, 6, 8 of the 9 sorted training ids
    assert len(test) == 3 and len(support[0]) == 5 and not set(support[0]) & set(test)
    train = sorted(set(f"cju{i:03d}" for i in range(12)) - set(test))
    assert support[0] == [train[i] for i in (0, 2, 4, 6, 8)]


def test_kvasir_reader_threshold_and_published_split(tmp_path):
    root = kvasir_tree(tmp_path / "Kvasir-SEG", n=5)
    ds = KvasirSEG(str(root))
    assert ds.class_names == {0: "polyp"} and len(ds.samples_by_class[0]) == 5 and ds.published_test is None
    img, (m,) = ds.load("cju000", [0])
    assert img.shape == (24, 32, 3) and m.dtype == np.uint8
    assert m[0:8, 8:16].all() and m.sum() == 64  # the 240-grey block is background (> 245 only)
    save_test_csv(str(root / "test.csv"), ["cju003"])
    dm = BudgetSpecializationDataModule("kvasir", str(root), budget=2, image_size=56)
    assert dm.test_keys == ["cju003"] and dm.support_keys == {0: ["cju000", "cju004"]}
    (root / "test.csv").write_text("image\ncju003\n")
    with pytest.raises(BadSampleError, match="header"):
        KvasirSEG(str(root))


def test_isic_reader_three_classes(tmp_path):
    root = isic_tree(tmp_path / "ISIC")
    save_test_csv(str(root / "test.csv"), ["ISIC_0000003", "ISIC_0000006"])
    ds = ISIC3(str(root))
    assert [ds.class_names[c] for c in ds.class_ids] == ["nevus", "melanoma", "seborrheic_keratosis"]
    assert ds.samples_by_class == {0: [f"ISIC_{i:07d}" for i in range(4)],
                                   1: ["ISIC_0000004", "ISIC_0000005", "ISIC_0000006"],
                                   2: ["ISIC_0000007", "ISIC_0000008"]}
    _, masks = ds.load("ISIC_0000005", [0, 1, 2])
    assert masks[0].sum() == 0 and masks[1].sum() == 80 and masks[2].sum() == 0
    # DistillFSS's K = 9 over 3 classes + background: 9 // 4 = 2 per class (6 in all, isic.py:106),
    # picked in the training ids (0, 1, 2 | 4, 5 | 7, 8): test images (the published ones) never supports
    dm = BudgetSpecializationDataModule("isic_distillfss", str(root), budget=9, image_size=56)
    assert dm.support_keys == {0: ["ISIC_0000000", "ISIC_0000002"], 1: ["ISIC_0000004", "ISIC_0000005"],
                               2: ["ISIC_0000007", "ISIC_0000008"]}
    assert dm.test_keys == ["ISIC_0000003", "ISIC_0000006"]
    assert BudgetSpecializationDataModule("isic_distillfss", str(root), budget=7, image_size=56).support_keys == \
        {0: ["ISIC_0000000"], 1: ["ISIC_0000004"], 2: ["ISIC_0000007"]}  # 7 // 4 = 1
    with pytest.raises(ValueError, match="gives 3 // 4"):  # the reference samples none and fails
        BudgetSpecializationDataModule("isic_distillfss", str(root), budget=3, image_size=56)
    sup = dm.support_set()
    assert tuple(sup["support"].shape) == (3, 2, 3, 56, 56)
    q = [dm._query_loader().dataset[i] for i in range(2)]
    assert [int(x["query_mask"].max()) for x in q] == [1, 2]  # nevus -> 1, melanoma -> 2
    table = (root / "ISIC_2019_Training_GroundTruth.csv").read_text().replace("ISIC_0000008,0.0,0.0,0.0,0.0,1.0",
                                                                               "ISIC_0000008,0.0,0.0,1.0,0.0,0.0")
    (root / "ISIC_2019_Training_GroundTruth.csv").write_text(table)
    with pytest.raises(BadSampleError, match="BCC"):
        ISIC3(str(root))


def test_nucleus_reader_merges_instances(tmp_path):
    root = tmp_path / "stage1_train"
    for i in range(5):
        key = f"{i:02d}abc"
        rgba = np.zeros((20, 24, 4), np.uint8)
        rgba[..., 3] = 255
        _mask(root / key / "images" / f"{key}.png", rgba, "RGBA")
        _mask(root / key / "masks" / "a.png", _box(top=2))
        _mask(root / key / "masks" / "b.png", _box(top=12))
    (root / "stage1_train_labels.csv").write_text("ImageId,EncodedPixels\n")
    ds = Nucleus(str(root))
    assert ds.samples_by_class[0] == [f"{i:02d}abc" for i in range(5)]
    img, (m,) = ds.load("00abc", [0])
    assert img.shape == (20, 24, 3) and m.sum() == 2 * 80 and m.max() == 1
    (root / "03abc" / "masks" / "b.png").unlink()
    _mask(root / "03abc" / "masks" / "b.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(BadSampleError, match="differs"):
        ds.load("03abc", [0])


def test_pothole_reader_published_split(tmp_path):
    root = tmp_path / "pothole-mix"
    for split, subset, names in (("training", "crack500", ["a", "b", "c"]), ("training", "pothole600", ["d"]),
                                 ("testing", "gaps384", ["e", "f"])):
        for name in names:
            ext = ".JPG" if name == "d" else ".jpg"
            _img(root / split / subset / "images" / f"{name}{ext}")
            colour = np.zeros((20, 24, 3), np.uint8)
            colour[4:12, 6:16] = (255, 0, 0)  # potholes red, cracks green: both foreground
            colour[14:16, 0:4] = (0, 255, 0)
            _mask(root / split / subset / "masks" / f"{name}.png", colour)
    ds = Pothole(str(root))
    assert ds.published_test == ["testing/gaps384.e", "testing/gaps384.f"]
    assert "training/pothole600.d" in ds.samples_by_class[0]
    _, (m,) = ds.load("training/crack500.a", [0])
    assert m.sum() == 80 + 8
    dm = BudgetSpecializationDataModule("pothole", str(root), budget=2, image_size=56)
    assert dm.test_keys == ds.published_test
    assert dm.support_keys == {0: ["training/crack500.a", "training/pothole600.d"]}


def test_dataset_foreground_iou_is_pooled_not_per_image():
    # two images, classes {1, 2}; worked by hand
    t1 = torch.tensor([[1, 1, 0, 0], [2, 2, 0, 0]])
    p1 = torch.tensor([[1, 0, 0, 0], [2, 2, 2, 0]])  # class 1: I=1 U=2; class 2: I=2 U=3
    t2 = torch.tensor([[1, 1, 1, 1], [0, 0, 0, 255]])
    p2 = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 2]])  # class 1: I=4 U=5; class 2: I=0 U=0 (255 ignored)
    m = DatasetForegroundIoU(2)
    m.update(p1[None], t1[None])
    m.update(p2[None], t2[None])
    res = m.compute()
    iou1, iou2 = (1 + 4) / (2 + 5), 2 / 3
    assert res["fg_iou"] == pytest.approx(100 * (iou1 + iou2) / 2)
    assert res["fg_iou"] != pytest.approx(100 * ((1 / 2 + 4 / 5) / 2 + (2 / 3 + 0) / 2) / 2)  # not per-image
    # the same figure as the library DistillFSS uses (torchmetrics, average="none", mean of 1..N)
    from torchmetrics.classification import MulticlassJaccardIndex

    ref = MulticlassJaccardIndex(num_classes=3, average="none", ignore_index=255)
    ref.update(torch.stack([p1, p2]), torch.stack([t1, t2]))
    assert res["fg_iou"] == pytest.approx(float(ref.compute()[1:].mean()) * 100)
    # and FewShotIoU over the binarised N-way maps pools the same intersections and unions
    few = FewShotIoU(2)
    few.update(*binarize_multiclass(torch.stack([p1, p2]), torch.stack([t1, t2]), torch.arange(2).expand(2, 2)))
    assert few.compute()["miou"] == pytest.approx(res["fg_iou"])


@pytest.mark.slow
def test_ragged_supports_specialise_and_log_dataset_iou(tmp_path):
    root = isic_tree(tmp_path / "ISIC")
    ds = ISIC3(str(root))
    # 2 / 2 / 1 shots, scored at the masks' own size (20x24), the labels path of both metrics
    dm = SupportSetDataModule(
        ds, {0: ["ISIC_0000000", "ISIC_0000002"], 1: ["ISIC_0000004", "ISIC_0000005"], 2: ["ISIC_0000007"]},
        [("ISIC_0000003", 0), ("ISIC_0000006", 1), ("ISIC_0000008", 2)], image_size=56, repeats=1, batch_size=4,
        scoring_size="original")
    sup = dm.support_set()
    assert isinstance(sup["support"], list) and [tuple(s.shape) for s in sup["support"]] == [(2, 3, 56, 56), (2, 3, 56, 56), (1, 3, 56, 56)]
    L.seed_everything(0)
    module = SpecializeModule(**TINY, eval_teacher=True)
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    res = trainer.test(module, datamodule=dm, verbose=False)[0]
    # the seeded run's figures (student after 2 steps, and its episodic teacher)
    expected = {"test/miou": 4.85, "test/teacher_miou": 6.17}
    assert {k: res[k] for k in expected} == pytest.approx(expected, abs=0.3), res
    assert res["test/dataset_fg_iou"] == pytest.approx(res["test/miou"], abs=1e-4)
    assert res["test/teacher_dataset_fg_iou"] == pytest.approx(res["test/teacher_miou"], abs=1e-4)


def test_teacher_logits_match_segment_multiclass():
    torch.manual_seed(0)
    module = SpecializeModule(**TINY, eval_teacher=False)
    g = torch.Generator().manual_seed(0)
    sup = {"support": torch.rand(2, 3, 3, 56, 56, generator=g),
           "support_masks": (torch.rand(2, 3, 56, 56, generator=g) > 0.5).float(), "class_names": ["a", "b"]}
    module.build_student(["a", "b"], sup)
    q = torch.rand(2, 3, 56, 56, generator=g)
    with torch.no_grad():
        ours = module.teacher_logits(module.student.extract(q), q.shape[-2:])
        ref = module.teacher.segment_multiclass(q, sup["support"][None].expand(2, -1, -1, -1, -1, -1),
                                                sup["support_masks"][None].expand(2, -1, -1, -1, -1))
    torch.testing.assert_close(ours[:, 1:], ref["logits"], atol=1e-4, rtol=1e-4)
    assert torch.equal(ours.argmax(1), ref["pred"])


def test_shared_kvasir_smoke(shared_data):
    root = shared_data("cross-domain", "kvasir")
    dm = BudgetSpecializationDataModule("kvasir", str(root), budget=2, image_size=56)
    assert len(dm.test_keys) == 1 and len(dm.train_keys) == 4
    sup = dm.support_set()
    assert sup["support"].shape == (1, 2, 3, 56, 56) and (sup["support_masks"].sum((2, 3)) > 0).all()
    q = dm._query_loader().dataset[0]
    assert q["query_mask"].shape == (56, 56) and int(q["query_mask"].max()) == 1
