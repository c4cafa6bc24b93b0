"""Industrial Defects (defect images of several industrial products), as DistillFSS reads it.

Layout (``root`` = DistillFSS's ``data/Industrial``: ``data.zip`` unzipped and its ``data/*`` moved
up, beside ``data.json``, ``README.md:108-117``): ``data.json`` with ``clsName`` (the class names, in
class-id order) and ``clsDic`` (per class, ``"bad"``: the defect image paths, written
``data/<...>/<class folder>/<sub folder>/<name>.png``), each image's mask the same path with
``.bmp``. Reference: DistillFSS ``distillfss/data/industrial.py``: class ids are 1 + the position in
``clsName`` (l.58-60); the images are every ``"bad"`` path of every ``clsDic`` class, in the file's
order, labelled with that class (l.20-22); ``data/`` in a path is replaced by the dataset folder and
``.png`` by ``.bmp`` for the mask (l.25-26); the id is the path's third-from-last part, ``_``, the
file name up to its first dot, and must be unique (l.27-32); the split is ``test.csv`` if present,
else ``train_test_split(test_size=0.2, random_state=42)`` over the frame in ``data.json`` order
(l.66-76); ``fold`` keeps classes ``fold + 4v + 1`` for ``v < (len(clsName) + 1) // 4``, after the
split (l.182-196; the distillation runs use folds 0-3, ``parameters/distill/Industrial.yaml:16``);
the mask is ``cv2.imread(..., IMREAD_GRAYSCALE) > 0`` labelled with the image's class (l.177-180);
the supports are ``K // N`` per class (N = the classes kept), hierarchical-uniform over that class's
training rows in frame order (l.115-124).
"""

from __future__ import annotations

import json
import os
from typing import List, Optional, Tuple

import numpy as np

from ..image_io import BadSampleError, _open
from ..readers.pool import PooledDataset
from .benchmark import BENCHMARKS, PooledBenchmark

NFOLDS = 4  # industrial.py:40


def fold_classes(class_names: List[str], fold: Optional[int]) -> Tuple[List[str], int]:
    """``(classes of fold in id order, the class count the budget is divided by)``
    (industrial.py:182-193): ids ``fold + 4v + 1`` for ``v < (len(clsName) + 1) // 4`` (its
    num_classes counts the background), of which those past the last class do not exist but still
    count in ``num_classes - 1``, the divisor of K (l.116, l.187); all classes for None."""
    if fold is None:
        return list(class_names), len(class_names)
    if not 0 <= fold < NFOLDS:
        raise ValueError(f"Industrial: fold {fold} is not one of 0..{NFOLDS - 1} (--data.industrial_fold)")
    per_fold = (len(class_names) + 1) // NFOLDS
    ids = [fold + NFOLDS * v for v in range(per_fold)]
    kept = [class_names[i] for i in ids if i < len(class_names)]
    if not kept:
        raise ValueError(f"Industrial: fold {fold} holds no class of the {len(class_names)} in clsName")
    return kept, per_fold


def cv2_grey(path: str) -> np.ndarray:
    """``cv2.imread(path, IMREAD_GRAYSCALE)``: grey files as stored, colour ones by OpenCV's
    fixed-point BGR->grey (0.299 R + 0.587 G + 0.114 B in 14-bit, rounded; imgcodecs/src/utils.cpp)."""
    img = _open(path)
    if img.mode == "L":
        return np.asarray(img)
    if img.mode == "1":
        return np.asarray(img, dtype=np.uint8) * 255
    rgb = np.asarray(img.convert("RGB")).astype(np.int64)
    c_r, c_g = int(0.299 * (1 << 14) + 0.5), int(0.587 * (1 << 14) + 0.5)
    c_b = (1 << 14) - c_r - c_g
    return ((rgb[..., 0] * c_r + rgb[..., 1] * c_g + rgb[..., 2] * c_b + (1 << 13)) >> 14).astype(np.uint8)


class Industrial(PooledDataset):
    name = "industrial"
    budget_rule = "per_class"

    def __init__(self, root: str, fold: Optional[int] = None) -> None:
        super().__init__()
        meta = os.path.join(root, "data.json")
        if not os.path.isfile(meta):
            raise FileNotFoundError(f"Industrial: {meta!r} missing (expected <root>/data.json beside the unzipped data.zip)")
        with open(meta) as f:
            data = json.load(f)
        if not isinstance(data, dict) or not isinstance(data.get("clsName"), list) or not isinstance(data.get("clsDic"), dict):
            raise BadSampleError(meta, "expected the keys clsName (a list) and clsDic (per class, a 'bad' list)")
        names = [str(c) for c in data["clsName"]]
        kept, self.budget_classes = fold_classes(names, fold)
        base = root.rstrip("/")
        order: List[str] = []
        seen = set()
        for cls, entry in data["clsDic"].items():
            if cls not in names:
                raise BadSampleError(meta, f"clsDic class {cls!r} is not in clsName {names}")
            if not isinstance(entry, dict) or not isinstance(entry.get("bad"), list):
                raise BadSampleError(meta, f"clsDic[{cls!r}] has no 'bad' list")
            for p in entry["bad"]:
                image = str(p).replace("data/", base + "/")  # industrial.py:25
                mask = image.replace(".png", ".bmp")  # industrial.py:26
                parts = image.split("/")
                if len(parts) < 3:
                    raise BadSampleError(meta, f"path {p!r} has fewer than three parts (industrial.py:29 needs them)")
                key = parts[-3] + "_" + os.path.split(image)[-1].split(".")[0]
                if key in seen:
                    raise BadSampleError(meta, f"two images have the id {key!r} (industrial.py:32)")
                seen.add(key)
                order.append(key)
                if cls not in kept:
                    continue
                for q in (image, mask):
                    if not os.path.isfile(q):
                        raise FileNotFoundError(f"Industrial: {q!r} (listed in {meta} under {cls!r}) missing")
                self.records[key] = (image, mask)
                self.label_of[key] = kept.index(cls)
        if not order:
            raise BadSampleError(meta, "no 'bad' image listed")
        self._index(kept)
        self.reference_order, self.split_keys = order, list(order)
        self._published_csv_over(root, order)

    def _published_csv_over(self, root: str, keys: List[str]) -> None:
        """``test.csv`` ids checked against every listed image (a fold keeps only some)."""
        from ..readers.pool import read_test_csv

        path = os.path.join(root, "test.csv")
        if os.path.isfile(path):
            ids = read_test_csv(path)
            unknown = sorted(set(ids) - set(keys))
            if unknown:
                raise BadSampleError(path, f"{len(unknown)} test id(s) not in data.json, e.g. {unknown[:3]}")
            self.published_test = ids

    def read_foreground(self, key: str) -> np.ndarray:
        return cv2_grey(self.records[key][1]) > 0


@BENCHMARKS.register("industrial")
class IndustrialBenchmark(PooledBenchmark):
    reader = Industrial


__all__ = ["Industrial", "fold_classes", "cv2_grey"]
