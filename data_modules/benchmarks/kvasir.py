"""Kvasir-SEG (polyps, endoscopy) in its published layout, as DistillFSS reads it.

Layout (``root`` = the ``Kvasir-SEG`` folder): ``images/<id>.jpg`` and ``masks/<id>.jpg``, the masks
JPEG-compressed grey levels. One class, ``polyp``. Reference: DistillFSS
``distillfss/data/kvasir.py``: ids are the mask file names up to their first dot and the image is the same file name
under ``images/`` (l.20-31); a mask pixel is foreground when its first channel is > 245 (l.111-116:
``<= 245 -> 0`` then ``>= 245 -> 1``); the test split is ``test.csv`` when present (l.60-63), else an
80/20 draw (l.65, see ``data_modules.episodes.distillfss_budget.split_train_test``).
"""

from __future__ import annotations

import os

import numpy as np

from ..image_io import is_image_file
from ..readers.base import first_dot_id
from ..readers.pool import PooledDataset, first_channel
from .benchmark import BENCHMARKS, PooledBenchmark

FOREGROUND_ABOVE = 245  # kvasir.py:114-115


class KvasirSEG(PooledDataset):
    name = "kvasir"

    def __init__(self, root: str) -> None:
        super().__init__()
        image_dir, mask_dir = os.path.join(root, "images"), os.path.join(root, "masks")
        for d in (image_dir, mask_dir):
            if not os.path.isdir(d):
                raise FileNotFoundError(f"Kvasir-SEG: {d!r} missing (expected <root>/images/*.jpg and <root>/masks/*.jpg)")
        images = {}
        for f in os.listdir(image_dir):
            if is_image_file(f):
                images.setdefault(first_dot_id(f), []).append(os.path.join(image_dir, f))
        for f in sorted(os.listdir(mask_dir)):
            if not is_image_file(f):
                continue
            key = first_dot_id(f)  # kvasir.py:31, the name up to its first dot
            if key in self.records:
                raise FileNotFoundError(f"Kvasir-SEG: two masks have the id {key!r} (the name up to its first dot, "
                                        f"as DistillFSS cuts it): {self.records[key][1]!r} and {os.path.join(mask_dir, f)!r}")
            if key not in images:
                raise FileNotFoundError(f"Kvasir-SEG: mask {os.path.join(mask_dir, f)!r} has no image {key}.* in {image_dir!r}")
            same_name = os.path.join(image_dir, f)  # kvasir.py:30, the mask's path with images/ for masks/
            image = same_name if os.path.isfile(same_name) else sorted(images[key])[0]
            self.records[key] = (image, os.path.join(mask_dir, f))
            self.label_of[key] = 0
        self._index(["polyp"])
        self._published_csv(root)

    def read_foreground(self, key: str) -> np.ndarray:
        return first_channel(self.records[key][1]) > FOREGROUND_ABOVE


@BENCHMARKS.register("kvasir")
class KvasirBenchmark(PooledBenchmark):
    reader = KvasirSEG
