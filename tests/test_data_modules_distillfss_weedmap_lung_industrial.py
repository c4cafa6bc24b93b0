"""DistillFSS's benchmark beyond Kvasir / ISIC / Nucleus / Pothole (docs/protocols/distillfss.md):
WeedMap, Lung Cancer and Industrial Defects read from generated trees in their official layouts, their
class ids, splits and budget supports worked out by hand; the safe pickle reader; `fsseg episodes` on
the budget data module; a short specialise + test run per dataset through the CLI."""

import json
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from data_modules import BudgetSpecializationDataModule, Industrial, KvasirSEG, LungCancer, Pothole, WeedMap
from data_modules.benchmarks.industrial import cv2_grey, fold_classes
from data_modules.image_io import BadSampleError
from data_modules.readers.pool import save_test_csv
from data_modules.readers.safe_pickle import UnsafePickleError, read_dataframe_columns
from tests.cli_utils import csv_logger, last_value, read_metrics, run_fsseg
from tests.distillfss_trees import (
    INDUSTRIAL_CLASSES,
    WEEDMAP_TEST,
    industrial_tree,
    lung_tree,
    weedmap_classes,
    weedmap_tree,
)
from tests.paths import CONFIGS

# -------------------------------------------------------------------------------------- WeedMap


def test_weedmap_reader_classes_split_and_budget(tmp_path):
    root = weedmap_tree(tmp_path / "RedEdge")
    ds = WeedMap(str(root))
    assert [ds.class_names[c] for c in ds.class_ids] == ["crop", "weed"]  # weedmap.py:14
    assert ds.published_test == [f"003/{n}" for n in WEEDMAP_TEST]
    img, (crop, weed) = ds.load("000/frame0002_1.png", [0, 1])  # 16-bit ground truth, crop stored as 10000
    assert img.shape == (20, 24, 3) and crop.sum() == 32 and weed.sum() == 40
    _, (crop, weed) = ds.load("000/frame0005_0.v2.png", [0, 1])  # ground truth named up to the first dot
    assert crop.sum() == 32 and weed.sum() == 40
    r = np.asarray(Image.open(root / "000" / "tile" / "R" / "frame0001_0.png"))
    b = np.asarray(Image.open(root / "000" / "tile" / "B" / "frame0001_0.png"))
    img = ds.load_image("000/frame0001_0.png")
    assert (img[..., 0] == r).all() and (img[..., 2] == b).all()  # R, G, B from their folders
    # K = 3 tiles of the 6 training tiles (name order): hierarchical picks 0, 2, 5; both classes share them
    dm = BudgetSpecializationDataModule("weedmap", str(root), budget=3, image_size=56)
    picks = ["000/frame0001_0.png", "000/frame0003_2.png", "000/frame0006_1.png"]
    assert dm.support_keys == {0: picks, 1: picks}
    assert dm.test_keys == [f"003/{n}" for n in WEEDMAP_TEST] and len(dm.train_keys) == 6
    assert BudgetSpecializationDataModule("weedmap", str(root), budget=5, image_size=56).support_keys[0] == [
        "000/frame0001_0.png", "000/frame0002_1.png", "000/frame0003_2.png", "000/frame0004_3.png",
        "000/frame0006_1.png"]  # 0, 1, 2, 3, 5
    # remove_black_images (weedmap.py:54-65): the black tile goes, the one with 5 black pixels stays
    dm = BudgetSpecializationDataModule("weedmap", str(root), budget=3, image_size=56,
                                        remove_black_images=True)
    assert dm.support_keys[0] == ["000/frame0001_0.png", "000/frame0004_3.png", "000/frame0006_1.png"]
    # every support and query labels both classes; each support image is trained on once
    item = dm._query_loader().dataset[0]
    expected = torch.nn.functional.interpolate(torch.from_numpy(weedmap_classes())[None, None].float(),
                                               size=(56, 56), mode="nearest")[0, 0].long()
    assert torch.equal(item["query_mask"], expected) and item["class_id"].tolist() == [0, 1]
    assert len(dm.train_dataloader().dataset) == 3 * dm.repeats
    with pytest.raises(ValueError, match="--data.industrial_fold does not apply to 'weedmap'"):
        BudgetSpecializationDataModule("weedmap", str(root), budget=3, industrial_fold=0)
    gt = root / "003" / "groundtruth" / "003_frame0101_0_GroundTruth_iMap.png"
    Image.fromarray(np.full((20, 24), 3, np.uint8)).save(gt)
    with pytest.raises(BadSampleError, match=r"values \[3\]"):
        ds.load("003/frame0101_0.png", [0, 1])


# ---------------------------------------------------------------------------------- Lung Cancer


def test_lung_reader_hu_conversion_split_and_budget(tmp_path):
    root = lung_tree(tmp_path / "lungcancer")
    ds = LungCancer(str(root))
    assert ds.class_names == {0: "nodule"} and (ds.hu_min, ds.hu_max) == (-1000, 400)
    assert ds.published_test == ["test.0", "test.1", "test.2"]
    img, (m,) = ds.load("train.3", [0])
    # ((-270 + 1000) / 1400) * 255 = 132.96 -> uint8 132 (lung.py:103-104), grey made RGB
    assert img.shape == (16, 16, 3) and img[5, 5].tolist() == [132, 132, 132] and m.sum() == 4 * 4
    assert ds.load_image("train.6")[0, 0].tolist() == [255] * 3 and ds.load_image("train.0")[0, 0].tolist() == [0] * 3
    assert ds.load_image("test.1")[1, 1].tolist() == [129] * 3  # (-290 + 1000) / 1400 * 255 = 129.3
    dm = BudgetSpecializationDataModule("lung", str(root), budget=3, image_size=56)
    assert dm.support_keys == {0: ["train.0", "train.3", "train.6"]}  # rows 0, 3, 6 of 7
    assert dm.test_keys == ["test.0", "test.1", "test.2"]
    assert BudgetSpecializationDataModule("lung", str(root), budget=5, image_size=56).support_keys == {
        0: ["train.0", "train.1", "train.3", "train.4", "train.6"]}


def test_lung_supports_follow_the_frames_row_labels(tmp_path):
    # train.loc[positions] (lung.py:114) selects by label: with a reversed index, label 0 is the last row
    root = lung_tree(tmp_path / "lungcancer", train_index=[6, 5, 4, 3, 2, 1, 0])
    dm = BudgetSpecializationDataModule("lung", str(root), budget=3, image_size=56)
    assert dm.support_keys == {0: ["train.0", "train.3", "train.6"]}
    assert dm.dataset.load_image("train.0")[0, 0].tolist() == [255] * 3  # slice 6 (400 HU) carries label 0
    root = lung_tree(tmp_path / "shifted", train_index=list(range(10, 17)))
    with pytest.raises(ValueError, match=r"no row labelled \[0, 3, 6\]"):
        BudgetSpecializationDataModule("lung", str(root), budget=3, image_size=56)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # would create the marker file if anything ran it


def test_safe_pickle_reader_never_runs_the_file(tmp_path):
    import pandas as pd

    marker = str(tmp_path / "ran")
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_RunsCode(marker)))
    with pytest.raises(UnsafePickleError, match="top-level"):
        read_dataframe_columns(str(path), ["mask"])
    df = pd.DataFrame({"label1": ["a"], "mask": [_RunsCode(marker)], "label2": [1], "hu_array": [np.zeros((2, 2))]})
    df.to_pickle(path)
    with pytest.raises(UnsafePickleError, match="io.open"):
        read_dataframe_columns(str(path), ["mask"])
    with pytest.raises(UnsafePickleError, match="io.open"):  # stored in the same object block as hu_array
        read_dataframe_columns(str(path), ["hu_array"])
    assert not os.path.exists(marker)


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_safe_pickle_reader_matches_pandas(tmp_path, protocol):
    import pandas as pd

    rng = np.random.default_rng(0)
    df = pd.DataFrame({"label1": ["x", "y", "z"], "mask": [rng.integers(0, 2, (3, 4)).astype(bool) for _ in range(3)],
                       "label2": [1.5, 2.5, 3.5], "hu_array": [rng.integers(-1024, 3000, (3, 4)).astype(">i2") for _ in range(3)]},
                      index=[7, 3, 5])
    path = tmp_path / "f.pkl"
    df.to_pickle(path, protocol=protocol)
    got = read_dataframe_columns(str(path), ["mask", "hu_array", "label2"])
    assert got["columns"] == list(df.columns) and got["index"] == [7, 3, 5]
    for name in ("mask", "hu_array"):
        for a, b in zip(got[name], df[name]):
            assert a.dtype == b.dtype and np.array_equal(a, b)
    assert [float(x) for x in got["label2"]] == [1.5, 2.5, 3.5]


def test_safe_pickle_reader_reads_the_pre_2_1_block_manager_state(tmp_path):
    # pandas 0.14.1-2.0 pickled BlockManager.__getstate__'s (axes, values, items, {"0.14.1": ...}) with
    # BUILD; written here through stand-in classes whose names are then set to pandas' own
    class FakeFrame:
        def __reduce__(self):
            return (FakeFrame, (), {"_mgr": FakeManager(), "_typ": "dataframe"})

    class FakeManager:
        def __reduce__(self):
            cols = FakeIndex({"data": np.array(["label1", "mask", "label2", "hu_array"], dtype=object), "name": None})
            rows = FakeRange({"name": None, "start": 0, "stop": 2, "step": 1})
            obj = np.empty((2, 2), dtype=object)
            obj[0, 0], obj[0, 1] = "a", "b"
            obj[1, 0], obj[1, 1] = np.ones((2, 2), np.uint8), np.zeros((2, 2), np.uint8)
            hu = np.empty((1, 2), dtype=object)
            hu[0, 0], hu[0, 1] = np.full((2, 2), -5, np.int16), np.full((2, 2), 7, np.int16)
            blocks = [{"values": obj, "mgr_locs": slice(0, 2, 1)}, {"values": np.array([[1, 2]]), "mgr_locs": np.array([2])},
                      {"values": hu, "mgr_locs": slice(3, 4, 1)}]
            return (FakeManager, (), ([cols, rows], [], [], {"0.14.1": {"axes": [cols, rows], "blocks": blocks}}))

    class FakeIndex:
        def __init__(self, d):
            self.d = d

        def __reduce__(self):
            return (_new_index, (type(self), self.d))

    class FakeRange(FakeIndex):
        pass

    names = {b"FakeFrame": b"pandas.core.frame\nDataFrame", b"FakeManager": b"pandas.core.internals.managers\nBlockManager",
             b"FakeIndex": b"pandas.core.indexes.base\nIndex", b"FakeRange": b"pandas.core.indexes.range\nRangeIndex",
             b"_new_index": b"pandas.core.indexes.base\n_new_Index"}
    import sys

    mod = sys.modules[__name__]
    for cls in (FakeFrame, FakeManager, FakeIndex, FakeRange):
        setattr(mod, cls.__name__, cls)
        cls.__qualname__ = cls.__name__
    data = pickle.dumps(FakeFrame(), protocol=2)  # protocol 2 writes GLOBAL "module\nname\n"
    for k, v in names.items():
        data = data.replace(f"{__name__}\n".encode() + k + b"\n", v + b"\n")
    path = tmp_path / "old.pkl"
    path.write_bytes(data)
    got = read_dataframe_columns(str(path), ["mask", "hu_array"])
    assert got["columns"] == ["label1", "mask", "label2", "hu_array"] and got["index"] == [0, 1]
    assert [m.tolist() for m in got["mask"]] == [[[1, 1], [1, 1]], [[0, 0], [0, 0]]]
    assert [h[0, 0] for h in got["hu_array"]] == [-5, 7]


def _new_index(cls, d):
    raise AssertionError("never called")


# ----------------------------------------------------------------------------------- Industrial


def test_industrial_reader_classes_split_and_budget(tmp_path):
    root = industrial_tree(tmp_path / "Industrial")
    ds = Industrial(str(root))
    assert [ds.class_names[c] for c in ds.class_ids] == INDUSTRIAL_CLASSES  # clsName order (industrial.py:58)
    assert ds.reference_order[:6] == ["Grid_004", "Grid_003", "Grid_002", "Grid_001", "Grid_000", "Carpet_000"]
    assert "Carpet_005" in ds.samples_by_class[0]  # 005.x.png: the id is cut at the first dot
    _, (m,) = ds.load("Grid_001", [1])
    assert m.sum() == 20 and m[0, 0] == 0  # cv2's grey of (0, 0, 5) is 1 (> 0), of (0, 0, 4) is 0
    _, masks = ds.load("Carpet_002", [0, 1, 2])
    assert [int(x.sum()) for x in masks] == [30, 0, 0]
    # 15 images in data.json order; RandomState(42).permutation(15)[:3] = [9, 11, 0] (scikit-learn's draw)
    dm = BudgetSpecializationDataModule("industrial", str(root), budget=9, image_size=56)
    assert dm.test_keys == ["Carpet_004", "Grid_004", "Tile_000"]
    # K = 9 over 3 classes: 3 each, hierarchical 0, mid, last over each class's training rows in data.json order
    assert dm.support_keys == {0: ["Carpet_000", "Carpet_002", "Carpet_005"], 1: ["Grid_003", "Grid_002", "Grid_000"],
                               2: ["Tile_001", "Tile_002", "Tile_003"]}
    assert BudgetSpecializationDataModule("industrial", str(root), budget=8, image_size=56).support_keys == {
        0: ["Carpet_000", "Carpet_005"], 1: ["Grid_003", "Grid_000"], 2: ["Tile_001", "Tile_003"]}  # 8 // 3 = 2
    with pytest.raises(ValueError, match=r"--data.budget 2 gives 2 // 3 \(3 classes\) = 0"):
        BudgetSpecializationDataModule("industrial", str(root), budget=2, image_size=56)
    q = dm._query_loader().dataset
    assert [int(q[i]["query_mask"].max()) for i in range(3)] == [1, 2, 3]  # Carpet, Grid, Tile
    save_test_csv(str(root / "test.csv"), ["Tile_003", "Grid_000"])
    assert BudgetSpecializationDataModule("industrial", str(root), budget=9, image_size=56).test_keys == [
        "Grid_000", "Tile_003"]


def test_industrial_folds(tmp_path):
    names = list("ABCDEFG")
    assert fold_classes(names, 0) == (["A", "E"], 2)  # ids 1, 5 of (7 + 1) // 4 = 2 per fold
    assert fold_classes(names, 3) == (["D"], 2)  # id 8 does not exist but still divides K (industrial.py:186-187)
    root = industrial_tree(tmp_path / "Industrial", class_names=names, counts={c: 4 for c in names})
    dm = BudgetSpecializationDataModule("industrial", str(root), budget=4, image_size=56, industrial_fold=3)
    assert dm.class_names == ["D"] and list(dm.support_keys) == [0] and len(dm.support_keys[0]) == 2
    # the split is drawn over all 28 images (industrial.py:71-78), then the fold's kept
    full = BudgetSpecializationDataModule("industrial", str(root), budget=7, image_size=56)
    assert dm.test_keys == [k for k in full.test_keys if k.startswith("D_")]


def test_industrial_masks_are_cv2s_grey(tmp_path):
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    path = tmp_path / "m.bmp"
    Image.fromarray(rng.integers(0, 8, (32, 32, 3), dtype=np.uint8)).save(path)
    assert np.array_equal(cv2_grey(str(path)), cv2.imread(str(path), cv2.IMREAD_GRAYSCALE))


# ------------------------------------------------------------------------------- ids, episodes


def test_ids_are_cut_at_the_first_dot(tmp_path):
    root = tmp_path / "Kvasir-SEG"
    for name in ("a.b", "c"):
        for d in ("images", "masks"):
            (root / d).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((8, 8, 3), 255, np.uint8)).save(root / d / f"{name}.jpg")
    assert KvasirSEG(str(root)).samples_by_class[0] == ["a", "c"]  # kvasir.py:31
    root = tmp_path / "pothole-mix"
    for split in ("training", "testing"):
        for d in ("images", "masks"):
            (root / split / "s" / d).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / split / "s" / "images" / "x.y.jpg")
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / split / "s" / "masks" / "x.y.png")
    assert Pothole(str(root)).published_test == ["testing/s.x"]  # pothole.py:25


@pytest.mark.slow
def test_fsseg_episodes_writes_the_budget_selection(tmp_path):
    root = industrial_tree(tmp_path / "Industrial")
    cfg = tmp_path / "data.yaml"
    cfg.write_text(json.dumps({"class_path": "data_modules.BudgetSpecializationDataModule",
                               "init_args": {"dataset": "industrial", "root": str(root), "budget": 9}}))
    out = tmp_path / "sel.json"
    proc = run_fsseg(["episodes", "--data", str(cfg), "--output", str(out)], cwd=tmp_path, timeout=300)
    sel = json.loads(out.read_text())
    assert sel["supports"] == {"Carpet": ["Carpet_000", "Carpet_002", "Carpet_005"],
                               "Grid": ["Grid_003", "Grid_002", "Grid_000"], "Tile": ["Tile_001", "Tile_002", "Tile_003"]}
    assert sel["test"] == ["Carpet_004", "Grid_004", "Tile_000"] and len(sel["train"]) == 12
    assert sel["budget"] == 9 and sel["budget_rule"] == "per_class"
    assert "9 support image(s) for 3 class(es), 12 train / 3 test" in proc.stderr


# ------------------------------------------------------------------- specialise + test via the CLI

SMALL = ["--model.init_args.image_size", "56", "--data.init_args.image_size", "56", "--data.init_args.repeats", "1",
         "--data.init_args.batch_size", "4", "--trainer.max_steps", "2", "--trainer.accelerator", "cpu"]


@pytest.mark.slow  # about 100 s per dataset on the shared 2-core machine (two CLI processes each)
@pytest.mark.parametrize("dataset,build,budget,classes", [
    ("weedmap", lambda p: weedmap_tree(p / "RedEdge"), 3, 2),
    ("lung", lambda p: lung_tree(p / "lungcancer"), 3, 1),
    ("industrial", lambda p: industrial_tree(p / "Industrial"), 6, 3),
])
def test_specialise_and_test_through_the_cli(tmp_path, dataset, build, budget, classes):
    root = build(tmp_path)
    config = str(CONFIGS / "distillfss" / f"{dataset}.yaml")
    args = ["--config", config, "--data.init_args.root", str(root), "--data.init_args.budget", str(budget), *SMALL]
    if dataset == "industrial":
        args += ["--data.init_args.industrial_fold", "null"]
    run_fsseg(["fit", *args], cwd=tmp_path)
    ckpt = tmp_path / "runs" / "distillfss" / dataset / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    run_fsseg(["test", *args, "--ckpt_path", str(ckpt), *csv_logger(tmp_path / "logs")], cwd=tmp_path)
    rows = read_metrics(tmp_path / "logs")
    fg, miou = last_value(rows, "test/dataset_fg_iou"), last_value(rows, "test/miou")
    assert np.isfinite(fg) and fg == pytest.approx(miou, abs=1e-3)  # every test image scored for every class
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert len(state["fsseg_class_names"]) == classes
