"""Small trees in the official layouts of WeedMap, Lung Cancer and Industrial Defects (as DistillFSS's
README leaves them), for tests/test_data_modules_distillfss_weedmap_lung_industrial.py. Sizes are tiny; the contents are chosen so
the class ids, splits and supports can be worked out by hand (see the tests)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

H, W = 20, 24

# WeedMap: field 000 trains, 003 tests; "frame0003_2" is black (dropped by remove_black_images), "frame0004_3"
# has only 5 black pixels (kept: the reference drops tiles with more than 10), "frame0005_0.v2" has an inner dot
# (its ground truth is cut at the first dot), "frame0002_1" stores crop as 10000 in a 16-bit file
WEEDMAP_TRAIN = ["frame0001_0.png", "frame0002_1.png", "frame0003_2.png", "frame0004_3.png", "frame0005_0.v2.png",
                 "frame0006_1.png"]
WEEDMAP_TEST = ["frame0101_0.png", "frame0102_1.png", "frame0103_2.png"]


def weedmap_classes() -> np.ndarray:
    gt = np.zeros((H, W), np.uint8)
    gt[2:6, 4:12] = 1  # crop: 32 px
    gt[10:14, 6:16] = 2  # weed: 40 px
    return gt


def weedmap_tree(root: Path) -> Path:
    """``root`` = ``.../RedEdge``."""
    rng = np.random.default_rng(0)
    for field, names in (("000", WEEDMAP_TRAIN), ("003", WEEDMAP_TEST)):
        for name in names:
            rgb = rng.integers(1, 256, (H, W, 3), dtype=np.uint8)
            if name == "frame0003_2.png":
                rgb[:] = 0
            if name == "frame0004_3.png":
                rgb[0, :5] = 0
            for i, c in enumerate("RGB"):
                d = root / field / "tile" / c
                d.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rgb[..., i]).save(d / name)
            gt = weedmap_classes()
            gt_dir = root / field / "groundtruth"
            gt_dir.mkdir(parents=True, exist_ok=True)
            gt_path = gt_dir / f"{field}_{name.split('.')[0]}_GroundTruth_iMap.png"
            if name == "frame0002_1.png":
                Image.fromarray(np.where(gt == 1, 10000, gt.astype(np.uint16)).astype(np.uint16)).save(gt_path)
            else:
                Image.fromarray(gt).save(gt_path)
    return root


# Lung Cancer: 7 training slices, 3 test slices; the training HU range is -1000..400
LUNG_COLUMNS = ["label1", "mask", "label2", "hu_array"]


def lung_slice(i: int, split: str) -> tuple:
    hu = np.full((16, 16), -300 + 10 * i, np.int16)
    if split == "train" and i == 0:
        hu[0, 0] = -1000
    if split == "train" and i == 6:
        hu[0, 0] = 400
    if split == "test" and i == 1:
        hu[0, 0] = -1100  # below the training range: the uint8 cast wraps, as in the reference
    mask = np.zeros((16, 16), np.uint8)
    mask[4:8, 4:4 + i + 1] = 1
    return mask, hu


def lung_tree(root: Path, train_index=None) -> Path:
    import pandas as pd  # writing the pickles needs pandas; reading them never does

    root.mkdir(parents=True, exist_ok=True)
    for split, n, name in (("train", 7, "lung_cancer_train.pkl"), ("test", 3, "lung_cancer_test.pkl")):
        rows = []
        for i in range(n):
            mask, hu = lung_slice(i, split)
            rows.append({"label1": f"{split}{i}", "mask": mask, "label2": 2 + i % 2, "hu_array": hu})
        df = pd.DataFrame(rows, columns=LUNG_COLUMNS)
        if split == "train" and train_index is not None:
            df.index = train_index
        df.to_pickle(root / name)
    return root


# Industrial: classes listed in clsName order (ids 1..3) but clsDic lists Grid first, its images in reverse
# name order; "good" lists are ignored
INDUSTRIAL_CLASSES = ["Carpet", "Grid", "Tile"]
INDUSTRIAL_COUNTS = {"Grid": 5, "Carpet": 6, "Tile": 4}


def industrial_name(cls: str, i: int) -> str:
    return f"{i:03d}.x.png" if (cls, i) == ("Carpet", 5) else f"{i:03d}.png"  # an inner dot: id cut at the first


def industrial_tree(root: Path, class_names=None, counts=None) -> Path:
    class_names = class_names or INDUSTRIAL_CLASSES
    counts = counts or INDUSTRIAL_COUNTS
    rng = np.random.default_rng(1)
    dic = {}
    for cls, n in counts.items():
        bad = []
        for i in range(n):
            name = industrial_name(cls, i)
            img = root / cls / "bad" / name
            img.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(img)
            m = np.zeros((H, W), np.uint8)
            m[3:3 + i + 1, 5:15] = 255
            if (cls, i) == ("Grid", 1):  # a colour mask: cv2's grey of (0, 0, 4) is 0, of (0, 0, 5) is 1
                colour = np.zeros((H, W, 3), np.uint8)
                colour[m > 0] = (0, 0, 5)
                colour[0, 0] = (0, 0, 4)
                Image.fromarray(colour).save(img.with_name(name.replace(".png", ".bmp")))
            else:
                Image.fromarray(m).save(img.with_name(name.replace(".png", ".bmp")))
            bad.append(f"data/{cls}/bad/{name}")
        if cls == "Grid":
            bad.reverse()  # not in name order: the reference's frame order is data.json's
        dic[cls] = {"bad": bad, "good": [f"data/{cls}/good/000.png"]}
    (root / "data.json").write_text(json.dumps({"clsName": class_names, "clsDic": dic}))
    return root
