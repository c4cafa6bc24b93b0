"""The file readers of PATNet's cross-domain targets (github slei109/PATNet ``data/deepglobe.py``,
``isic.py``, ``lung.py``): binary masks read as PATNet reads them, classes listed in its file order."""

from __future__ import annotations

import os

from .base import FileFewShotDataset


def patnet_jpg(path: str) -> bool:
    """PATNet's file filter ``os.path.basename(p).split('.')[1] == 'jpg'`` (``data/deepglobe.py:99``)."""
    parts = os.path.basename(path).split(".")
    return len(parts) > 1 and parts[1] == "jpg"


class PatnetFileDataset(FileFewShotDataset):
    """(image, binary mask) records whose masks are thresholded at 128 as PATNet does.

    Subclasses fill ``records`` (through ``_add``), ``class_ids``, ``class_names`` and
    ``samples_by_class``; each class's list must be in PATNet's order (its sorted glob), because
    ``patnet_episode_list`` indexes it. Sample keys are the image paths relative to ``root`` (as
    FSS-1000's ``<class>/<n>.jpg``), so episode files (``fsseg episodes``) do not depend on where the
    data lies; one folder's keys sort as its full paths do.
    """

    root = ""

    def __init__(self) -> None:
        super().__init__(mask_encoding="threshold128")  # grey >= 128, data/deepglobe.py:73-77

    def _add(self, image: str, mask: str) -> str:
        """Record an (image, mask) pair of absolute paths under its root-relative key; returns the key."""
        key = os.path.relpath(image, self.root)
        self.records[key] = (image, mask)
        return key

    def _require_files(self, what: str) -> None:
        """Fail at construction, naming the files, when a listed image or mask is missing."""
        missing = [p for rec in self.records.values() for p in rec if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(f"{what}: {len(missing)} listed file(s) missing, e.g. {missing[:3]}")
