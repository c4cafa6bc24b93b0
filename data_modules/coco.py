"""COCO-20i (as HSNet's data/coco.py): coco128-style or standard 2014 layout with class-index masks."""

from __future__ import annotations

import json
import os
import pickle
from typing import Dict, List, Optional, Union

from .base import FileFewShotDataset, stem
from .layout import SPLIT_ALIASES, classes_from_areas, pair_folder, read_lines
from .mask_index import mask_areas


class Coco20i(FileFewShotDataset):
    """COCO-20i. Fold i tests the 0-based classes {i, i+4, ..., i+76}; train uses the other 60
    (HSNet data/coco.py:60-66; HDMNet's ``use_split_coco``, util/dataset.py:129-143).

    Layouts (class-index masks, value k = class k 1-based, 0 = background):
    * coco128 style: ``root/images/<id>.jpg``, ``root/masks/<id>.png``, optional ``classes.txt``
      (80 names) and ``index.json`` (class name -> image ids; otherwise derived from the masks);
    * standard: ``root/{train2014,val2014}/<name>.jpg`` + ``root/annotations/{train2014,val2014}/<name>.png``
      (train split reads train2014, val/test read val2014).

    ``list_dir``: HSNet's class pools ``{trn,val}/fold{i}.pkl`` (a pickled dict {0..79: [image path
    relative to root, e.g. ``val2014/COCO_val2014_000000507081.jpg``]}, read without executing
    anything, see ``read_pool_pickle``); sample keys are those paths, masks
    ``root/annotations/<path>.png`` (HSNet data/coco.py:79-81). Reading the pools opens no image.
    ``min_pixels`` and ``exclude_novel_images`` apply BAM's rule (``layout.classes_by_area``) to each
    mask's class areas: from ``index.json`` when it carries them (``fsseg prepare coco20i`` writes
    ``{class name: {image stem: pixels}}``; no mask is opened), else counted from the masks once and
    kept in ``mask_index_dir`` (``mask_index.mask_areas``). An ``index.json`` of plain lists
    (``{class name: [image stem]}``, coco128's) serves only the unfiltered pools. Classes with fewer
    than K+1 images stay listed but the episode sampler never draws them.
    """

    name = "coco20i"

    def __init__(self, root: str, fold: int = 0, split: str = "train", mask_encoding: str = "auto",
                 index_file: Optional[str] = None, list_dir: Optional[str] = None, min_pixels: int = 0,
                 exclude_novel_images: bool = False, mask_index_dir: Optional[str] = None) -> None:
        super().__init__(mask_encoding)
        if not 0 <= fold < 4:
            raise ValueError(f"COCO-20i fold must be 0..3, got {fold}")
        self.root, self.fold, self.split = root, fold, SPLIT_ALIASES[split]
        names_file = os.path.join(root, "classes.txt")
        names = read_lines(names_file) if os.path.isfile(names_file) else [str(i) for i in range(80)]
        if len(names) != 80:
            raise ValueError(f"{names_file}: expected 80 COCO class names, got {len(names)}")
        self.class_names = dict(enumerate(names))
        novel = list(range(fold, 80, 4))
        self.class_ids = novel if self.split != "trn" else [c for c in range(80) if c not in novel]
        self.list_format = "hsnet" if list_dir else "masks"
        if list_dir:
            path = os.path.join(list_dir, "trn" if self.split == "trn" else "val", f"fold{fold}.pkl")
            pools = read_pool_pickle(path)
            self.samples_by_class = {c: list(pools.get(c, [])) for c in self.class_ids}
            for keys in self.samples_by_class.values():
                for key in keys:
                    self.records.setdefault(key, (os.path.join(root, key), os.path.join(
                        root, "annotations", os.path.splitext(key)[0] + ".png")))
            return
        if os.path.isdir(os.path.join(root, "images")) and os.path.isdir(os.path.join(root, "masks")):
            image_dir, mask_dir = os.path.join(root, "images"), os.path.join(root, "masks")
        else:
            sub = "train2014" if self.split == "trn" else "val2014"
            image_dir, mask_dir = os.path.join(root, sub), os.path.join(root, "annotations", sub)
            if not (os.path.isdir(image_dir) and os.path.isdir(mask_dir)):
                raise FileNotFoundError(
                    f"COCO-20i: {root!r} has neither images/+masks/ nor {sub}/+annotations/{sub}/")
        self.records = pair_folder(image_dir, mask_dir)
        by_stem = {stem(k): k for k in self.records}
        index_file = index_file or os.path.join(root, "index.json")
        members: Dict[int, List[str]] = {c: [] for c in range(80)}
        index = read_coco_index(index_file, names) if os.path.isfile(index_file) else None
        filtered = bool(min_pixels or exclude_novel_images)
        if index is not None and not filtered:
            for c, ids in index.items():
                members[c] = [by_stem[i] for i in ids if i in by_stem]
        else:
            keys = list(self.records)
            with_areas = index is not None and all(isinstance(v, dict) for v in index.values())
            if with_areas:  # prepare's areas: no mask opened
                areas: List[Dict[int, int]] = [{} for _ in keys]
                row = {stem(k): i for i, k in enumerate(keys)}
                for c, pixels in index.items():
                    for i, n in pixels.items():
                        if i in row:
                            areas[row[i]][c + 1] = int(n)
            else:
                areas = mask_areas([self.records[k][1] for k in keys], mask_index_dir, desc="COCO masks").areas
            wanted = {c + 1 for c in self.class_ids}
            for key, a in zip(keys, areas):
                for v in classes_from_areas(a, wanted, min_pixels, exclude_novel_images):
                    members[v - 1].append(key)
        self.samples_by_class = {c: sorted(members[c]) for c in self.class_ids}

    def mask_value(self, key: str, class_id: int) -> Optional[int]:
        return class_id + 1


def read_coco_index(path: str, names: List[str]) -> Dict[int, Union[List[str], Dict[str, int]]]:
    """``index.json`` by class id: ``{class name: [image stem]}`` (coco128, older ``fsseg prepare``)
    or ``{class name: {image stem: pixels of the class}}`` (``fsseg prepare coco20i``)."""
    with open(path) as f:
        index = json.load(f)
    name_to_id = {n: i for i, n in enumerate(names)}
    out: Dict[int, Union[List[str], Dict[str, int]]] = {}
    for cname, ids in index.items():
        if cname not in name_to_id:
            raise ValueError(f"{path}: unknown class name {cname!r}")
        if not isinstance(ids, (list, dict)):
            raise ValueError(f"{path}: class {cname!r} maps to a {type(ids).__name__}; expected a list of image "
                             "stems or {image stem: pixels} (rewrite it with `fsseg prepare coco20i`)")
        out[name_to_id[cname]] = ids
    return out


class _NoGlobalsUnpickler(pickle.Unpickler):
    """Refuses every global (class, function) a pickle names, so loading cannot run code: only the
    pickle protocol's own dict/list/str/int/tuple opcodes can build objects."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refusing a persistent id")


def read_pool_pickle(path: str) -> Dict[int, List[str]]:
    """HSNet's COCO-20i pools (data/coco.py:68-71 ``pickle.load``s them): {class 0..79: [image path]}.
    Read with an unpickler that allows no globals, then checked to be exactly that shape."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"COCO-20i pool file {path!r} not found (expected <list_dir>/{{trn,val}}/fold<i>.pkl)")
    with open(path, "rb") as f:
        try:
            pools = _NoGlobalsUnpickler(f).load()
        except (pickle.UnpicklingError, EOFError, ValueError) as e:
            raise ValueError(f"{path}: not a plain pickled dict of class -> [image path] ({e})") from e
    if not isinstance(pools, dict) or not all(
            isinstance(c, int) and isinstance(v, list) and all(isinstance(p, str) for p in v) for c, v in pools.items()):
        raise ValueError(f"{path}: expected a dict {{class id (int): [image path (str), ...]}}")
    return pools
