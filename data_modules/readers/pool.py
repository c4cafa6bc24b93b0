"""A benchmark read as one pool of labelled images, as DistillFSS's datasets are (seed 000).

DistillFSS (github pasqualedem/DistillFSS, ``distillfss/data/``) reads each target dataset as a
list of images with one mask each: supports are drawn from the training part, every test image is
scored once. ``PooledDataset`` is that list in the ``FewShotDataset`` interface: ``label_of[key]`` is
the image's class (one per image: ISIC's lesion type; the single class elsewhere),
``read_foreground(key)`` its foreground as the reference thresholds it, and ``published_test`` the
dataset's own test ids when it ships a split (a ``test.csv`` written by the reference, Pothole's
``testing/`` folder), else ``None`` (``data_modules.episodes.distillfss_budget.split_train_test`` then draws one).
"""

from __future__ import annotations

import csv
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..image_io import BadSampleError, _open, check_same_size, read_image
from .base import FileFewShotDataset


def grey(path: str) -> np.ndarray:
    """A mask file as ``uint8 [H,W]`` grey levels (PIL ``convert('L')``, as the reference reads them)."""
    return np.asarray(_open(path).convert("L"))


def first_channel(path: str) -> np.ndarray:
    """First channel of a mask file (``torchvision PILToTensor(mask)[0]``, Kvasir's reader)."""
    img = _open(path)
    a = np.asarray(img if img.mode in ("L", "RGB", "RGBA", "I", "I;16") else img.convert("RGB"))
    return a[..., 0] if a.ndim == 3 else a


def read_test_csv(path: str) -> List[str]:
    """Ids listed in a DistillFSS ``test.csv`` (pandas ``to_csv`` of the ``id`` column)."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0] != ["id"]:
        raise BadSampleError(path, f"expected a header line 'id' (DistillFSS's test.csv), got {rows[:1]}")
    return [r[0] for r in rows[1:] if r and r[0]]


class PooledDataset(FileFewShotDataset):
    """Subclasses fill ``records[key] = (image path, mask path or folder)`` and ``label_of`` and call
    ``_index(class names)``; they implement ``read_foreground(key) -> bool [H,W]``."""

    # how the reference spends the budget K (data_modules.episodes.distillfss_budget.BUDGET_RULES)
    budget_rule = "images"

    def __init__(self) -> None:
        super().__init__("auto")
        self.label_of: Dict[str, int] = {}
        self.published_test: Optional[List[str]] = None
        # the reference's frame order where a file fixes it (not os.listdir): the split is drawn and
        # the supports are picked in this order; None = name-sorted
        self.reference_order: Optional[List[str]] = None
        # the images the split is drawn over, when the reader keeps only some of them (a fold)
        self.split_keys: Optional[List[str]] = None
        # the class count the per-class rules divide K by, when not the number of classes read
        self.budget_classes: Optional[int] = None

    def _index(self, class_names: Sequence[str]) -> None:
        if not self.records:
            raise FileNotFoundError(f"{self.name}: no image/mask pairs found")
        self.class_ids = list(range(len(class_names)))
        self.class_names = dict(enumerate(class_names))
        self.samples_by_class = {c: sorted(k for k, v in self.label_of.items() if v == c) for c in self.class_ids}

    def _published_csv(self, root: str) -> None:
        path = os.path.join(root, "test.csv")
        if os.path.isfile(path):
            ids = read_test_csv(path)
            unknown = sorted(set(ids) - set(self.records))
            if unknown:
                raise BadSampleError(path, f"{len(unknown)} test id(s) not in the dataset, e.g. {unknown[:3]}")
            self.published_test = ids

    def read_foreground(self, key: str) -> np.ndarray:
        raise NotImplementedError

    def load_image(self, key: str) -> np.ndarray:
        return read_image(self.records[key][0])

    def load_mask(self, key: str, class_id: int) -> np.ndarray:
        fg = self.read_foreground(key)
        return (fg & (self.label_of[key] == class_id)).astype(np.uint8)

    def load(self, key: str, class_ids: Sequence[int]):
        image = self.load_image(key)
        fg = self.read_foreground(key)
        check_same_size(image, fg, self.records[key][0], self.records[key][1])
        return image, [(fg & (self.label_of[key] == c)).astype(np.uint8) for c in class_ids]


def save_test_csv(path: str, ids: Sequence[str]) -> None:
    """Write ids as DistillFSS's ``test.csv`` (for tests and for pinning a drawn split)."""
    with open(path, "w", newline="") as f:
        f.write("id\n" + "".join(f"{i}\n" for i in ids))


__all__ = ["PooledDataset", "grey", "first_channel", "read_test_csv", "save_test_csv"]
