"""Nucleus: the 2018 Data Science Bowl ``stage1_train`` set (cell nuclei), as DistillFSS reads it.

Layout (``root`` = ``stage1_train``, DistillFSS's ``data/Nucleus``): ``<id>/images/<id>.png`` (one
image, often RGBA) and ``<id>/masks/*.png``, one 0/255 mask per nucleus instance. One class,
``nucleus``. Reference: DistillFSS ``distillfss/data/nucleus.py``: the ids are the sub-folders
(l.34, files ending in ``csv`` skipped); the image is the single file in ``images/`` (l.84-89); the
mask is every instance mask thresholded at 128 and merged (l.145-156; the reference *sums* them, so
overlapping instances would give a value 2; here they are OR-ed, which is the same wherever instances
do not overlap, as in ``stage1_train``); the test split is ``test.csv`` when present, else an 80/20
draw (l.38-47).
"""

from __future__ import annotations

import os

import numpy as np

from ..image_io import BadSampleError, is_image_file
from ..readers.pool import PooledDataset, grey
from .benchmark import BENCHMARKS, PooledBenchmark


class Nucleus(PooledDataset):
    name = "nucleus"

    def __init__(self, root: str) -> None:
        super().__init__()
        if not os.path.isdir(root):
            raise FileNotFoundError(f"Nucleus: {root!r} is not a directory (expected stage1_train/<id>/{{images,masks}}/)")
        for key in sorted(os.listdir(root)):
            folder = os.path.join(root, key)
            if key.endswith("csv") or not os.path.isdir(folder):
                continue
            image_dir, mask_dir = os.path.join(folder, "images"), os.path.join(folder, "masks")
            images = sorted(f for f in os.listdir(image_dir) if is_image_file(f)) if os.path.isdir(image_dir) else []
            if len(images) != 1:
                raise FileNotFoundError(f"Nucleus: {image_dir!r} must hold exactly one image, found {len(images)}")
            if not os.path.isdir(mask_dir) or not any(is_image_file(f) for f in os.listdir(mask_dir)):
                raise FileNotFoundError(f"Nucleus: {mask_dir!r} holds no instance masks")
            self.records[key] = (os.path.join(image_dir, images[0]), mask_dir)
            self.label_of[key] = 0
        self._index(["nucleus"])
        self._published_csv(root)

    def read_foreground(self, key: str) -> np.ndarray:
        mask_dir = self.records[key][1]
        fg = None
        for f in sorted(os.listdir(mask_dir)):
            if not is_image_file(f):
                continue
            m = grey(os.path.join(mask_dir, f)) >= 128  # nucleus.py:145-149
            if fg is not None and m.shape != fg.shape:
                raise BadSampleError(os.path.join(mask_dir, f), f"instance mask size {m.shape[::-1]} (WxH) differs "
                                     f"from the other masks of {key} ({fg.shape[::-1]})")
            fg = m if fg is None else fg | m
        return fg


@BENCHMARKS.register("nucleus")
class NucleusBenchmark(PooledBenchmark):
    reader = Nucleus
