"""ISIC with its three lesion classes (nevus, melanoma, seborrheic keratosis), as DistillFSS reads it.

Layout (``root`` = DistillFSS's ``data/ISIC``): ``ISIC2018_Task1-2_Training_Input/<id>.jpg``,
``ISIC2018_Task1_Training_GroundTruth/<id>_segmentation.png`` (0/255 lesion masks), the class table
``ISIC_2019_Training_GroundTruth.csv`` (columns ``image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK``, one-hot)
and the split ``test.csv`` (column ``id``). Reference: DistillFSS ``distillfss/data/isic.py``:
images are the masks' stems (l.19-31), joined with the class table on the id with ``_downsampled``
removed (l.20, l.32); the class is the arg-max over ``NV, MEL, BKL, BCC, AK, DF, VASC, SCC, UNK``
+ 1, of which 1 = nevus, 2 = melanoma, 3 = seborrheic keratosis are the dataset's classes (l.33,
l.40; the ISIC-2018 Task 1 images carry only those three: "1:1867 2:519 3:208", l.38); the mask is
grey >= 128 (l.162-166) labelled with the class (l.168-171); the supports are ``K // 4`` per class,
``num_classes`` counting the background (l.40-41, 106-110). The reference requires ``test.csv``
(l.54); without it ``data_modules.episodes.distillfss_budget.split_train_test`` draws the 80/20 split as for the
other datasets. Images without a row in the class table are dropped (the reference's inner join,
l.32); an image whose class is not one of the three is an error naming it.
"""

from __future__ import annotations

import csv
import os

import numpy as np

from ..image_io import BadSampleError
from ..readers.pool import PooledDataset, grey
from .benchmark import BENCHMARKS, PooledBenchmark

CLASS_NAMES = ["nevus", "melanoma", "seborrheic_keratosis"]
ARGMAX_ORDER = ["NV", "MEL", "BKL", "BCC", "AK", "DF", "VASC", "SCC", "UNK"]  # isic.py:33
IMAGE_DIR, MASK_DIR = "ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth"
CLASS_TABLE = "ISIC_2019_Training_GroundTruth.csv"


def read_class_table(path: str) -> dict:
    """``{image id: 0-based class}`` from the ISIC 2019 ground-truth table."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ISIC: class table {path!r} missing (DistillFSS's {CLASS_TABLE})")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    missing = [c for c in ["image", *ARGMAX_ORDER] if rows and c not in rows[0]]
    if not rows or missing:
        raise BadSampleError(path, f"expected the columns image,{','.join(ARGMAX_ORDER)}; missing {missing or 'all rows'}")
    table = {}
    for r in rows:
        scores = [float(r[c]) for c in ARGMAX_ORDER]
        table[r["image"].replace("_downsampled", "")] = int(np.argmax(scores))  # first maximum, as numpy's
    return table


class ISIC3(PooledDataset):
    name = "isic_distillfss"
    budget_rule = "per_class_with_background"  # K // 4 per class: id2class counts the background (isic.py:40-41, 106)

    def __init__(self, root: str) -> None:
        super().__init__()
        image_dir, mask_dir = os.path.join(root, IMAGE_DIR), os.path.join(root, MASK_DIR)
        for d in (image_dir, mask_dir):
            if not os.path.isdir(d):
                raise FileNotFoundError(f"ISIC: {d!r} missing (expected <root>/{IMAGE_DIR}/ and <root>/{MASK_DIR}/)")
        table = read_class_table(os.path.join(root, CLASS_TABLE))
        for f in sorted(os.listdir(mask_dir)):
            if not f.endswith(".png"):
                continue
            key = f.replace("_segmentation.png", "").split(".")[0]
            if key not in table:
                continue  # isic.py:32, inner join with the class table
            image = os.path.join(image_dir, f.replace("_segmentation.png", ".jpg"))
            if not os.path.isfile(image):
                raise FileNotFoundError(f"ISIC: mask {os.path.join(mask_dir, f)!r} has no image {image!r}")
            if table[key] >= len(CLASS_NAMES):
                raise BadSampleError(os.path.join(mask_dir, f), f"class {ARGMAX_ORDER[table[key]]} in {CLASS_TABLE} "
                                     f"is not one of the three lesion classes {CLASS_NAMES}")
            self.records[key] = (image, os.path.join(mask_dir, f))
            self.label_of[key] = table[key]
        self._index(CLASS_NAMES)
        self._published_csv(root)

    def read_foreground(self, key: str) -> np.ndarray:
        return grey(self.records[key][1]) >= 128


@BENCHMARKS.register("isic_distillfss")
class IsicDistillfssBenchmark(PooledBenchmark):
    reader = ISIC3
