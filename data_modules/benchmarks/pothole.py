"""Pothole Mix (road potholes and cracks), as DistillFSS reads it.

Layout (``root`` = ``pothole-mix``): ``training/<subset>/images/*.jpg|JPG`` with
``training/<subset>/masks/<same stem>.png``, and the same under ``testing/`` (the published split;
a ``validation/`` folder, if present, is not used, as in the reference). One class, ``pothole``:
every non-black mask pixel is foreground (the colour-coded potholes and cracks alike). Reference:
DistillFSS ``distillfss/data/pothole.py``: the id is ``<subset>.<name up to its first dot>`` (l.22-26), the mask path
swaps ``images`` for ``masks`` and the extension for ``.png`` (l.44), foreground is grey > 0
(l.163-166), train = ``training/`` and test = ``testing/`` (l.60-68).
"""

from __future__ import annotations

import os

import numpy as np

from ..image_io import is_image_file
from ..readers.base import first_dot_id, stem
from ..readers.pool import PooledDataset, grey
from .benchmark import BENCHMARKS, PooledBenchmark

SPLITS = ("training", "testing")


class Pothole(PooledDataset):
    name = "pothole"

    def __init__(self, root: str) -> None:
        super().__init__()
        test = []
        for split in SPLITS:
            split_dir = os.path.join(root, split)
            if not os.path.isdir(split_dir):
                raise FileNotFoundError(f"Pothole: {split_dir!r} missing (expected pothole-mix/{{training,testing}}/<subset>/{{images,masks}}/)")
            for subset in sorted(os.listdir(split_dir)):
                image_dir = os.path.join(split_dir, subset, "images")
                if not os.path.isdir(image_dir):
                    continue
                mask_dir = os.path.join(split_dir, subset, "masks")
                for f in sorted(os.listdir(image_dir)):
                    if not is_image_file(f):
                        continue
                    # the reference's id (pothole.py:22-26, the name up to its first dot), prefixed by its split
                    key = f"{split}/{subset}.{first_dot_id(f)}"
                    if key in self.records:
                        raise FileNotFoundError(f"Pothole: two images have the id {key!r} (names cut at their first "
                                                f"dot, as DistillFSS cuts them) in {image_dir!r}")
                    mask = os.path.join(mask_dir, stem(f) + ".png")
                    if not os.path.isfile(mask):
                        raise FileNotFoundError(f"Pothole: image {os.path.join(image_dir, f)!r} has no mask {mask!r}")
                    self.records[key] = (os.path.join(image_dir, f), mask)
                    self.label_of[key] = 0
                    if split == "testing":
                        test.append(key)
        self._index(["pothole"])
        self.published_test = test

    def read_foreground(self, key: str) -> np.ndarray:
        return grey(self.records[key][1]) > 0


@BENCHMARKS.register("pothole")
class PotholeBenchmark(PooledBenchmark):
    reader = Pothole
