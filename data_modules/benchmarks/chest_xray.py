"""Chest X-ray lung segmentation as PATNet's CD-FSS reads it (github slei109/PATNet ``data/lung.py``).

Layout (Kaggle "chest-xray-masks-and-labels", ``Lung Segmentation/``)::

    root/CXR_png/<id>.png          radiographs (grey; read as RGB)
    root/masks/<id>_mask.png       0/255 lung masks

One class ("lung"). PATNet lists the *masks* (sorted ``masks/*``, '.png' by its ``split('.')[1]``
test, ``data/lung.py:107-112``) and finds each image by cutting ``_mask.png`` off the mask name
(``data/lung.py:64-68``); the candidate order is therefore the sorted mask names, kept here. A mask
named ``<id>.png`` (no ``_mask`` suffix) is paired with ``CXR_png/<id>.png``. Masks are thresholded at
128 (``data/lung.py:73-77``).
"""

from __future__ import annotations

import glob
import os

from ..readers.patnet import PatnetFileDataset
from .benchmark import BENCHMARKS, CrossDomainTarget

MASK_SUFFIX = "_mask.png"


class ChestXray(PatnetFileDataset):
    name = "chest_xray"

    def __init__(self, root: str, split: str = "test") -> None:
        super().__init__()
        self.root = root
        image_dir, mask_dir = os.path.join(root, "CXR_png"), os.path.join(root, "masks")
        for d in (image_dir, mask_dir):
            if not os.path.isdir(d):
                raise FileNotFoundError(f"Chest X-ray: missing folder {d!r} (expected <root>/CXR_png/ and <root>/masks/)")
        keys = []
        for m in sorted(glob.glob(os.path.join(mask_dir, "*"))):
            parts = os.path.basename(m).split(".")
            if len(parts) < 2 or parts[1] != "png":
                continue
            base = os.path.basename(m)
            image_id = base[: -len(MASK_SUFFIX)] if base.endswith(MASK_SUFFIX) else base[: -len(".png")]
            keys.append(self._add(os.path.join(image_dir, image_id + ".png"), m))
        self.class_ids = [0]
        self.class_names = {0: "lung"}
        self.samples_by_class = {0: keys}
        self._require_files(f"Chest X-ray {root!r}")


@BENCHMARKS.register("chest_xray")
class ChestXrayBenchmark(CrossDomainTarget):
    reader = ChestXray
