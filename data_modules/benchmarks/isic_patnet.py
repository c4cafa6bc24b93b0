"""ISIC-2018 skin lesions as PATNet's CD-FSS reads them (github slei109/PATNet ``data/isic.py``).

Layout::

    root/ISIC2018_Task1-2_Training_Input/<1|2|3>/ISIC_<id>.jpg     images sorted into class folders
    root/ISIC2018_Task1_Training_GroundTruth/ISIC_<id>_segmentation.png   0/255 lesion masks
    root/class_id.csv   (optional) PATNet's ``data/isic/class_id.csv``: ``ID,Class`` per image

The three class folders come from PATNet's ``class_id.csv`` (2594 images: nevus 1867, melanoma 519,
seborrheic_keratosis 208); PATNet's code does not record which folder number holds which diagnosis,
so with ``class_id.csv`` present each folder is named after the diagnosis its images carry in it
(a folder mixing diagnoses is an error), otherwise the classes are named "1", "2", "3".
Masks are thresholded at 128 (``data/isic.py:72-76``).
"""

from __future__ import annotations

import csv
import glob
import os
from typing import Dict, Optional

from ..readers.patnet import PatnetFileDataset, patnet_jpg
from .benchmark import BENCHMARKS, CrossDomainTarget

ISIC_IMAGE_DIR = "ISIC2018_Task1-2_Training_Input"
ISIC_MASK_DIR = "ISIC2018_Task1_Training_GroundTruth"
ISIC_FOLDERS = ("1", "2", "3")  # data/isic.py:20


def read_isic_class_file(path: str) -> Dict[str, str]:
    """``ID,Class`` rows of PATNet's ``class_id.csv`` -> {image id: diagnosis}."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or [x.strip() for x in rows[0][:2]] != ["ID", "Class"]:
        raise ValueError(f"{path}: expected a header 'ID,Class' (PATNet's data/isic/class_id.csv)")
    out = {}
    for n, row in enumerate(rows[1:], 2):
        if len(row) < 2:
            raise ValueError(f"{path}:{n}: expected 'ID,Class', got {row!r}")
        out[row[0].strip()] = row[1].strip()
    return out


class ISIC(PatnetFileDataset):
    """PATNet's ISIC-2018 (3 classes, every image a test candidate)."""

    name = "isic_patnet"

    def __init__(self, root: str, split: str = "test", class_file: Optional[str] = None) -> None:
        super().__init__()
        self.root = root
        mask_dir = os.path.join(root, ISIC_MASK_DIR)
        class_file = class_file or os.path.join(root, "class_id.csv")
        diagnosis = read_isic_class_file(class_file) if os.path.isfile(class_file) else None
        self.class_ids = list(range(len(ISIC_FOLDERS)))
        self.class_names, self.samples_by_class = {}, {}
        for c, folder_name in enumerate(ISIC_FOLDERS):
            folder = os.path.join(root, ISIC_IMAGE_DIR, folder_name)
            if not os.path.isdir(folder):
                raise FileNotFoundError(f"ISIC: missing folder {folder!r} (expected "
                                        f"<root>/{ISIC_IMAGE_DIR}/{{1,2,3}}/, PATNet's layout)")
            images = [p for p in sorted(glob.glob(os.path.join(folder, "*"))) if patnet_jpg(p)]
            self.samples_by_class[c] = [  # data/isic.py:61-65
                self._add(p, os.path.join(mask_dir, os.path.basename(p).split(".")[0] + "_segmentation.png"))
                for p in images]
            self.class_names[c] = self._folder_class(folder, images, diagnosis, class_file) or folder_name
        self._require_files(f"ISIC {root!r}")

    @staticmethod
    def _folder_class(folder: str, images, diagnosis, class_file: str) -> Optional[str]:
        if diagnosis is None:
            return None
        ids = [os.path.basename(p).split(".")[0] for p in images]
        unknown = [i for i in ids if i not in diagnosis]
        if unknown:
            raise ValueError(f"{class_file}: {len(unknown)} image(s) of {folder!r} not listed, e.g. {unknown[:3]}")
        found = sorted({diagnosis[i] for i in ids})
        if len(found) > 1:
            raise ValueError(f"{folder!r} mixes diagnoses {found} according to {class_file}; "
                             f"each class folder must hold one diagnosis")
        return found[0] if found else None


@BENCHMARKS.register("isic_patnet")
class ISICPatnetBenchmark(CrossDomainTarget):
    reader = ISIC
