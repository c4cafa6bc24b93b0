"""Lung Cancer (Lung-RADS nodule CT slices), as DistillFSS reads it.

Layout (``root`` = DistillFSS's ``data/lungcancer``, the Mendeley set ``5rr22hgzwr-1.zip`` moved up
one folder as its README says, ``README.md:83-90``): ``lung_cancer_train.pkl`` and
``lung_cancer_test.pkl``, pandas data frames of four columns, the second ``mask`` (the nodule mask)
and the fourth ``hu_array`` (the CT slice in Hounsfield units). One class, ``nodule``
(``lung.py:48``). Reference: DistillFSS ``distillfss/data/lung.py``: the split is the two pickles
(l.60-61); the image is the slice scaled by the minimum and maximum over **all training slices**,
``((hu - min) / (max - min)) * 255`` cast to ``uint8`` and made RGB (l.63-64, 101-106; the same cast
here, so test values outside the training range wrap as the reference's do); the mask is used as is
(l.82, 121-132) and must hold 0 / 1 (it is one-hot encoded over 2 classes, l.143); every test row is
scored (l.66-70, 80); the supports are ``train.loc[hierarchical_uniform_sampling(len(train) - 1,
K)]`` (l.108-114): the **row labels** equal to those positions (the frame's index, 0..n-1 when the
pickle kept a fresh index). The pickles are read by ``data_modules.safe_pickle`` (no code from the
file is run).
"""

from __future__ import annotations

import os
import warnings
from typing import Dict, List, Sequence

import numpy as np
from PIL import Image

from ..image_io import BadSampleError
from ..readers.pool import PooledDataset
from ..readers.safe_pickle import read_dataframe_columns
from .benchmark import BENCHMARKS, PooledBenchmark

TRAIN_PICKLE, TEST_PICKLE = "lung_cancer_train.pkl", "lung_cancer_test.pkl"
COLUMNS = {"mask": 1, "hu_array": 3}  # lung.py:80 unpacks rows by position, lung.py:117-122 by name


class LungCancer(PooledDataset):
    name = "lung"

    def __init__(self, root: str) -> None:
        super().__init__()
        self.slices: Dict[str, np.ndarray] = {}
        self.masks: Dict[str, np.ndarray] = {}
        self.row_label: Dict[str, object] = {}
        frames = {}
        for split, name in (("train", TRAIN_PICKLE), ("test", TEST_PICKLE)):
            path = os.path.join(root, name)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"Lung Cancer: {path!r} missing (expected <root>/{TRAIN_PICKLE} and <root>/{TEST_PICKLE})")
            frame = read_dataframe_columns(path, list(COLUMNS))
            for col, pos in COLUMNS.items():
                if len(frame["columns"]) != 4 or frame["columns"].index(col) != pos:
                    raise BadSampleError(path, f"expected 4 columns with {col!r} at position {pos} (lung.py:80), "
                                               f"got {frame['columns']}")
            if len(set(map(repr, frame["index"]))) != len(frame["index"]):
                raise BadSampleError(path, "repeated row labels in the frame's index")
            frames[split] = (path, frame)
        train_hu = frames["train"][1]["hu_array"]
        if not train_hu:
            raise BadSampleError(frames["train"][0], "no rows")
        self.hu_min = min(np.asarray(a).min() for a in train_hu)  # lung.py:63-64
        self.hu_max = max(np.asarray(a).max() for a in train_hu)
        if not self.hu_max > self.hu_min:
            raise BadSampleError(frames["train"][0], f"every training slice is {self.hu_min} HU: no range to scale by")
        self.train_order: List[str] = []
        test = []
        for split, (path, frame) in frames.items():
            for label, mask, hu in zip(frame["index"], frame["mask"], frame["hu_array"]):
                key = f"{split}.{label}"
                mask, hu = np.asarray(mask), np.asarray(hu)
                if mask.ndim != 2 or hu.ndim != 2:
                    raise BadSampleError(path, f"row {label!r}: mask {mask.shape} and hu_array {hu.shape} must be 2-D")
                values = set(np.unique(mask).tolist())
                if not values <= {0, 1}:
                    raise BadSampleError(path, f"row {label!r}: mask values {sorted(values)[:5]}, expected 0 / 1 (lung.py:143)")
                self.records[key] = (f"{path}[{label!r}]", f"{path}[{label!r}]")
                self.slices[key], self.masks[key] = hu, mask.astype(bool)
                self.label_of[key], self.row_label[key] = 0, label
                (self.train_order if split == "train" else test).append(key)
        self._index(["nodule"])
        self.published_test = test

    def to_image(self, hu: np.ndarray) -> np.ndarray:
        """lung.py:101-106: min-max scaled by the training range, cast to uint8, RGB."""
        scaled = ((hu - self.hu_min) / (self.hu_max - self.hu_min)) * 255
        return np.asarray(Image.fromarray(scaled.astype(np.uint8)).convert("RGB"))

    def load_image(self, key: str) -> np.ndarray:
        return self.to_image(self.slices[key])

    def read_foreground(self, key: str) -> np.ndarray:
        return self.masks[key]

    def select_supports(self, train_keys_by_class: Dict[int, Sequence[str]], budget: int) -> Dict[int, List[str]]:
        """``train.loc[positions]`` (lung.py:110-114): the rows whose label equals each position."""
        from ..episodes.distillfss_budget import hierarchical_uniform_indices

        if budget < 1:
            raise ValueError(f"--data.budget must be at least 1, got {budget}")
        train = [k for k in self.train_order if k in set(train_keys_by_class[0])]
        positions = list(dict.fromkeys(hierarchical_uniform_indices(len(train) - 1, budget)))
        if len(positions) < budget:
            warnings.warn(f"{TRAIN_PICKLE}: a budget of {budget} support(s) but only {len(train)} training slice(s); "
                          f"using {len(positions)}, as DistillFSS does", stacklevel=2)
        by_label = {self.row_label[k]: k for k in train}
        missing = [p for p in positions if p not in by_label]
        if missing:
            raise ValueError(f"{TRAIN_PICKLE}: no row labelled {missing[:3]}; DistillFSS selects its supports by "
                             f"label (train.loc[positions], lung.py:114), which fails on this index")
        return {0: [by_label[p] for p in positions]}


@BENCHMARKS.register("lung")
class LungBenchmark(PooledBenchmark):
    reader = LungCancer


__all__ = ["LungCancer"]
