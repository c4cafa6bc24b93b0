"""COCO-20i (as HSNet's data/coco.py): coco128-style or standard 2014 layout with class-index masks."""

from __future__ import annotations

import json
import os
from typing import Dict, List, Optional

import numpy as np

from .base import FileFewShotDataset, stem
from .layout import SPLIT_ALIASES, pair_folder, read_lines
from .masks import read_mask


class Coco20i(FileFewShotDataset):
    """COCO-20i. Fold i tests the 0-based classes {i, i+4, ..., i+76}; train uses the other 60.

    Layouts (class-index masks, value k = class k 1-based, 0 = background):
    * coco128 style: ``root/images/<id>.jpg``, ``root/masks/<id>.png``, optional ``classes.txt``
      (80 names) and ``index.json`` (class name -> image ids; otherwise derived from the masks);
    * standard: ``root/{train2014,val2014}/<name>.jpg`` + ``root/annotations/{train2014,val2014}/<name>.png``
      (train split reads train2014, val/test read val2014).
    Classes with fewer than K+1 images stay listed but the episode sampler never draws them.
    """

    name = "coco20i"

    def __init__(self, root: str, fold: int = 0, split: str = "train", mask_encoding: str = "auto",
                 index_file: Optional[str] = None) -> None:
        super().__init__(mask_encoding)
        if not 0 <= fold < 4:
            raise ValueError(f"COCO-20i fold must be 0..3, got {fold}")
        self.root, self.fold, self.split = root, fold, SPLIT_ALIASES[split]
        if os.path.isdir(os.path.join(root, "images")) and os.path.isdir(os.path.join(root, "masks")):
            image_dir, mask_dir = os.path.join(root, "images"), os.path.join(root, "masks")
        else:
            sub = "train2014" if self.split == "trn" else "val2014"
            image_dir, mask_dir = os.path.join(root, sub), os.path.join(root, "annotations", sub)
            if not (os.path.isdir(image_dir) and os.path.isdir(mask_dir)):
                raise FileNotFoundError(
                    f"COCO-20i: {root!r} has neither images/+masks/ nor {sub}/+annotations/{sub}/")
        names_file = os.path.join(root, "classes.txt")
        names = read_lines(names_file) if os.path.isfile(names_file) else [str(i) for i in range(80)]
        if len(names) != 80:
            raise ValueError(f"{names_file}: expected 80 COCO class names, got {len(names)}")
        self.class_names = dict(enumerate(names))
        novel = list(range(fold, 80, 4))
        self.class_ids = novel if self.split != "trn" else [c for c in range(80) if c not in novel]
        self.records = pair_folder(image_dir, mask_dir)
        by_stem = {stem(k): k for k in self.records}
        index_file = index_file or os.path.join(root, "index.json")
        members: Dict[int, List[str]] = {c: [] for c in range(80)}
        if os.path.isfile(index_file):
            with open(index_file) as f:
                index = json.load(f)
            name_to_id = {n: i for i, n in enumerate(names)}
            for cname, ids in index.items():
                if cname not in name_to_id:
                    raise ValueError(f"{index_file}: unknown class name {cname!r}")
                members[name_to_id[cname]] = [by_stem[i] for i in ids if i in by_stem]
        else:
            for key, (_, mp) in self.records.items():
                for v in np.unique(read_mask(mp, "index")):
                    if 1 <= v <= 80:
                        members[int(v) - 1].append(key)
        self.samples_by_class = {c: sorted(members[c]) for c in self.class_ids}

    def mask_value(self, key: str, class_id: int) -> Optional[int]:
        return class_id + 1

    def describe(self, key: str) -> str:
        return key
