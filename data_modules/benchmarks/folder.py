"""Your own labelled images as a benchmark (``readers/folder.py``'s layouts). They have no class
split: train, val and test episodes use the same classes and, unless a seeded share of the images
is held out (``holdout_split``), the same images."""

from __future__ import annotations

from typing import Dict

import numpy as np

from ..readers.base import FewShotDataset
from ..readers.folder import FolderDataset
from .benchmark import BENCHMARKS, EpisodicBenchmark, ReaderSettings


def holdout_split(ds: FewShotDataset, split: str, fraction: float, seed: int = 0) -> FewShotDataset:
    """Keep, per class, a seeded ``fraction`` of the images for val/test and the rest for train
    (an image is in one side only, whatever class it is drawn for)."""
    keys = ds.all_keys()
    perm = np.random.default_rng(seed).permutation(len(keys))
    n_hold = int(round(fraction * len(keys)))
    held = {keys[int(i)] for i in perm[:n_hold]}
    keep = (lambda k: k not in held) if split == "train" else (lambda k: k in held)
    ds.samples_by_class = {c: [k for k in v if keep(k)] for c, v in ds.samples_by_class.items()}
    return ds


@BENCHMARKS.register("folder")
class FolderBenchmark(EpisodicBenchmark):
    class_split = False
    has_folds = False

    @classmethod
    def read(cls, split: str, settings: ReaderSettings, options: Dict) -> FewShotDataset:
        ds = FolderDataset(settings.root, mask_encoding=settings.mask_encoding, classes=settings.classes)
        if settings.holdout_fraction > 0:
            return holdout_split(ds, split, settings.holdout_fraction, settings.seed)
        return ds
