"""PASCAL-5i (as HSNet's data/pascal.py): VOC2012 + SBD layout, the literature's fold split lists."""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

from .base import FileFewShotDataset, stem
from .layout import SPLIT_ALIASES, read_lines
from .masks import read_mask


class Pascal5i(FileFewShotDataset):
    """PASCAL-5i: ``root/JPEGImages/<id>.jpg`` + ``root/SegmentationClassAug/<id>.png`` (class-index,
    1..20, 255 boundary = ignore). Fold i tests 0-based classes 5i..5i+4.

    ``list_dir``: a folder with ``{trn,val}/fold{i}.txt`` of ``<voc id>__<class 1..20>`` lines (the
    lists used by the literature). Without it the pairs are derived from the masks: every (image,
    class) with the class present, using ``root/ImageSets/Segmentation/{train,val}.txt`` (or
    ``train_aug.txt``) to choose images when present, else all masks. Train split = base classes,
    val/test = the fold's novel classes.
    """

    name = "pascal5i"
    CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")

    def __init__(self, root: str, fold: int = 0, split: str = "train", list_dir: Optional[str] = None,
                 mask_encoding: str = "auto", image_dir: str = "JPEGImages",
                 mask_dir: str = "SegmentationClassAug") -> None:
        super().__init__(mask_encoding)
        if not 0 <= fold < 4:
            raise ValueError(f"PASCAL-5i fold must be 0..3, got {fold}")
        self.root, self.fold, self.split = root, fold, SPLIT_ALIASES[split]
        self.image_dir, self.mask_dir = os.path.join(root, image_dir), os.path.join(root, mask_dir)
        for d in (self.image_dir, self.mask_dir):
            if not os.path.isdir(d):
                raise FileNotFoundError(f"PASCAL-5i: missing folder {d!r} (expected VOC2012 layout)")
        novel = list(range(5 * fold, 5 * fold + 5))
        self.class_ids = novel if self.split != "trn" else [c for c in range(20) if c not in novel]
        self.class_names = dict(enumerate(self.CLASSES))
        pairs = self._read_list(list_dir) if list_dir else self._derive_pairs()
        wanted = set(self.class_ids)
        self.samples_by_class = {c: [] for c in self.class_ids}
        for img_id, c in pairs:
            if c not in wanted:
                continue
            if img_id not in self.records:
                self.records[img_id] = (os.path.join(self.image_dir, img_id + ".jpg"),
                                        os.path.join(self.mask_dir, img_id + ".png"))
            self.samples_by_class[c].append(img_id)
        for c in self.samples_by_class:
            self.samples_by_class[c] = sorted(set(self.samples_by_class[c]))

    def _read_list(self, list_dir: str):
        split = "trn" if self.split == "trn" else "val"
        path = os.path.join(list_dir, split, f"fold{self.fold}.txt")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"PASCAL-5i split list {path!r} not found (expected <list_dir>/{split}/fold{self.fold}.txt)")
        pairs = []
        with open(path) as f:
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    img_id, c = line.rsplit("__", 1)
                    pairs.append((img_id, int(c) - 1))
                except ValueError as e:
                    raise ValueError(f"{path}:{n}: expected '<voc id>__<class 1..20>', got {line!r}") from e
        return pairs

    def _derive_pairs(self):
        sets = os.path.join(self.root, "ImageSets", "Segmentation")
        names = ["train_aug.txt", "train.txt"] if self.split == "trn" else ["val.txt"]
        ids = None
        for n in names:
            if os.path.isfile(os.path.join(sets, n)):
                ids = read_lines(os.path.join(sets, n))
                break
        if ids is None:
            ids = sorted(stem(f) for f in os.listdir(self.mask_dir) if f.endswith(".png"))
        pairs = []
        for img_id in ids:
            m = read_mask(os.path.join(self.mask_dir, img_id + ".png"), "index")
            for v in np.unique(m):
                if 1 <= v <= 20:
                    pairs.append((img_id, int(v) - 1))
        return pairs

    def mask_value(self, key: str, class_id: int) -> Optional[int]:
        return class_id + 1
