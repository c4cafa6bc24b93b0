"""Deepglobe land cover as PATNet's CD-FSS reads it (github slei109/PATNet ``data/deepglobe.py``).

Layout (PATNet's preprocessed release, or ``fsseg prepare deepglobe``)::

    root/<1..6>/test/origin/<name>.jpg        408x408 satellite tiles
    root/<1..6>/test/groundtruth/<name>.png   binary mask of that folder's class (0/255, any channels)

Class folder k is PATNet's ``labelset[k-1]`` (``data/preprocess.py:65``), compared against masks read
with ``cv2.imread`` (BGR), so in RGB terms: 1 agriculture (255,255,0), 2 urban (0,255,255),
3 rangeland (255,0,255), 4 forest (0,255,0), 5 water (0,0,255), 6 barren (255,255,255). A tile is in
every class folder whose colour it contains. Masks are thresholded at 128 (``data/deepglobe.py:73-77``).
"""

from __future__ import annotations

import glob
import os

from .patnet import PatnetFileDataset, patnet_jpg

DEEPGLOBE_CLASSES = ("agriculture", "urban", "rangeland", "forest", "water", "barren")


class Deepglobe(PatnetFileDataset):
    """PATNet's Deepglobe (6 classes; only a ``test`` split exists: CD-FSS never trains on it)."""

    name = "deepglobe"

    def __init__(self, root: str, split: str = "test") -> None:
        super().__init__()
        self.root = root
        self.class_ids = list(range(len(DEEPGLOBE_CLASSES)))
        self.class_names = dict(enumerate(DEEPGLOBE_CLASSES))
        self.samples_by_class = {}
        for c in self.class_ids:
            folder = os.path.join(root, str(c + 1), "test")
            origin, truth = os.path.join(folder, "origin"), os.path.join(folder, "groundtruth")
            if not os.path.isdir(origin):
                raise FileNotFoundError(f"Deepglobe: missing folder {origin!r} (expected "
                                        f"<root>/<1..6>/test/{{origin,groundtruth}}, PATNet's layout)")
            # data/deepglobe.py:109-112: sorted glob, '.jpg' by PATNet's split('.')[1] test.
            images = [p for p in sorted(glob.glob(os.path.join(origin, "*"))) if patnet_jpg(p)]
            # data/deepglobe.py:62-66: groundtruth/<id>.png, id = name up to the first '.'
            self.samples_by_class[c] = [self._add(p, os.path.join(truth, os.path.basename(p).split(".")[0] + ".png"))
                                        for p in images]
        self._require_files(f"Deepglobe {root!r}")
