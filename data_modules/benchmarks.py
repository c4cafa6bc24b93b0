"""Few-shot benchmarks in their standard on-disk layouts, and generic folders.

All classes implement the ``FewShotDataset`` interface (``class_ids``, ``class_names``,
``samples_by_class``, ``load``). Sample keys are image ids / relative paths; ``describe(key)`` is
the image path.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Dict, List, Optional

import numpy as np

from .base import FileFewShotDataset, stem
from .masks import IMAGE_EXTENSIONS, BadSampleError, is_image_file, list_images, read_image, read_mask

SPLIT_ALIASES = {"train": "trn", "trn": "trn", "val": "val", "test": "test"}


def _read_lines(path: str) -> List[str]:
    with open(path) as f:
        return [x.strip() for x in f if x.strip()]


def _find_by_stem(folder: str, name: str, exts=IMAGE_EXTENSIONS) -> Optional[str]:
    for e in exts:
        for cand in (name + e, name + e.upper()):
            p = os.path.join(folder, cand)
            if os.path.isfile(p):
                return p
    return None


def _pair_folder(image_dir: str, mask_dir: str) -> Dict[str, tuple]:
    """Match images with masks by file stem; images without a mask are skipped with a warning."""
    images = list_images(image_dir, recursive=False, what="image folder")
    masks = {}
    for f in sorted(os.listdir(mask_dir)):
        if is_image_file(f):
            masks.setdefault(stem(f), os.path.join(mask_dir, f))
    out, missing = {}, []
    for p in images:
        m = masks.get(stem(p))
        if m is None:
            missing.append(p)
        else:
            out[p] = (p, m)
    if missing:
        warnings.warn(f"{image_dir}: {len(missing)} image(s) without a mask in {mask_dir} skipped, "
                      f"e.g. {missing[:3]}", stacklevel=3)
    if not out:
        raise FileNotFoundError(f"no image/mask pairs found in {image_dir!r} + {mask_dir!r} (matched by file stem)")
    return out


# ---------------------------------------------------------------------------------------------
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
                ids = _read_lines(os.path.join(sets, n))
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


# ---------------------------------------------------------------------------------------------
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
        names = _read_lines(names_file) if os.path.isfile(names_file) else [str(i) for i in range(80)]
        if len(names) != 80:
            raise ValueError(f"{names_file}: expected 80 COCO class names, got {len(names)}")
        self.class_names = dict(enumerate(names))
        novel = list(range(fold, 80, 4))
        self.class_ids = novel if self.split != "trn" else [c for c in range(80) if c not in novel]
        self.records = _pair_folder(image_dir, mask_dir)
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


# ---------------------------------------------------------------------------------------------
class FSS1000(FileFewShotDataset):
    """FSS-1000: ``root/<class>/<N>.jpg`` + ``root/<class>/<N>.png`` (binary masks, any encoding).

    ``split_dir`` holds ``trn.txt``/``val.txt``/``test.txt`` (520/240/240 class names); class ids are
    the positions in trn+val+test concatenated (0..999). Without ``split_dir`` all class folders
    found are used for every split (sorted; ids = positions).
    Also accepts the single-class layout ``root/support/image/*.jpg`` + ``root/support/label/*.png``
    (class name = ``class_name`` or the folder name).
    """

    name = "fss1000"

    def __init__(self, root: str, split: str = "test", split_dir: Optional[str] = None,
                 mask_encoding: str = "auto", class_name: Optional[str] = None) -> None:
        super().__init__(mask_encoding)
        self.root, self.split = root, SPLIT_ALIASES[split]
        if not os.path.isdir(root):
            raise FileNotFoundError(f"FSS-1000 root {root!r} does not exist")
        single = _single_class_dirs(root)
        if single is not None:
            cname = class_name or os.path.basename(os.path.normpath(root))
            self.class_names = {0: cname}
            self.class_ids = [0]
            recs = _pair_folder(*single)
            self.records = recs
            self.samples_by_class = {0: sorted(recs)}
            return
        if split_dir:
            all_names: List[str] = []
            split_names: Dict[str, List[str]] = {}
            for s in ("trn", "val", "test"):
                p = os.path.join(split_dir, f"{s}.txt")
                if not os.path.isfile(p):
                    raise FileNotFoundError(f"FSS-1000 split file {p!r} not found")
                split_names[s] = _read_lines(p)
                all_names += split_names[s]
            wanted = split_names[self.split]
        else:
            all_names = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
            wanted = all_names
        ids = {n: i for i, n in enumerate(all_names)}
        self.class_names = dict(enumerate(all_names))
        missing = [n for n in wanted if not os.path.isdir(os.path.join(root, n))]
        if missing:
            raise FileNotFoundError(f"FSS-1000: {len(missing)} class folder(s) of split {self.split!r} missing "
                                    f"under {root!r}, e.g. {missing[:5]}")
        self.class_ids = [ids[n] for n in wanted]
        self.samples_by_class = {}
        for n in wanted:
            folder = os.path.join(root, n)
            files = sorted(os.listdir(folder))
            pngs = {stem(f): os.path.join(folder, f) for f in files if f.lower().endswith(".png")}
            keys = []
            for f in files:
                if f.lower().endswith((".jpg", ".jpeg")) and stem(f) in pngs:
                    p = os.path.join(folder, f)
                    self.records[p] = (p, pngs[stem(f)])
                    keys.append(p)
            self.samples_by_class[ids[n]] = keys


def _single_class_dirs(root: str):
    for img, lab in (("support/image", "support/label"), ("image", "label"), ("images", "masks")):
        a, b = os.path.join(root, img), os.path.join(root, lab)
        if os.path.isdir(a) and os.path.isdir(b):
            return a, b
    return None


# ---------------------------------------------------------------------------------------------
class FolderDataset(FileFewShotDataset):
    """Generic layout for your own data. Detected in this order:

    1. per-class folders ``root/<class>/images`` + ``root/<class>/masks`` (binary masks);
    2. one folder ``root/images`` + ``root/masks`` (or ``image``/``label``, ``support/image``/``support/label``):
       * binary masks -> a single class named after ``root`` (or ``class_name``);
       * ``mask_encoding='index'`` -> class-index masks; classes = values 1..254 found (names from
         ``root/classes.txt`` when present, line k-1 = value k).
    Images and masks are matched by file stem; non-image files are skipped with a warning.
    """

    name = "folder"

    def __init__(self, root: str, mask_encoding: str = "auto", class_name: Optional[str] = None) -> None:
        super().__init__(mask_encoding)
        self.root = root
        if not os.path.isdir(root):
            raise FileNotFoundError(f"folder dataset root {root!r} does not exist")
        self._values: Optional[Dict[int, int]] = None
        single = _single_class_dirs(root)
        if single is not None:
            self.records = _pair_folder(*single)
            if mask_encoding == "index":
                self._init_index(root)
            else:
                self.class_ids = [0]
                self.class_names = {0: class_name or os.path.basename(os.path.normpath(root))}
                self.samples_by_class = {0: sorted(self.records)}
            return
        classes = sorted(d for d in os.listdir(root) if _single_class_dirs(os.path.join(root, d)))
        if not classes:
            raise FileNotFoundError(
                f"{root!r}: no recognised layout (expected images/+masks/, image/+label/ or <class>/images+masks/)")
        self.class_ids = list(range(len(classes)))
        self.class_names = dict(enumerate(classes))
        self.samples_by_class = {}
        for i, c in enumerate(classes):
            recs = _pair_folder(*_single_class_dirs(os.path.join(root, c)))
            self.records.update(recs)
            self.samples_by_class[i] = sorted(recs)

    def _init_index(self, root: str) -> None:
        names_file = os.path.join(root, "classes.txt")
        names = _read_lines(names_file) if os.path.isfile(names_file) else None
        members: Dict[int, List[str]] = {}
        for key, (_, mp) in self.records.items():
            for v in np.unique(read_mask(mp, "index")):
                if 1 <= v <= 254:
                    members.setdefault(int(v), []).append(key)
        values = sorted(members)
        self._values = {i: v for i, v in enumerate(values)}
        self.class_ids = list(range(len(values)))
        self.class_names = {i: (names[v - 1] if names and v - 1 < len(names) else str(v)) for i, v in self._values.items()}
        self.samples_by_class = {i: sorted(members[v]) for i, v in self._values.items()}

    def mask_value(self, key: str, class_id: int) -> Optional[int]:
        return None if self._values is None else self._values[class_id]


# ---------------------------------------------------------------------------------------------
class UnlabelledImageFolder:
    """Any folder of images (recursive, sorted). Items: ``{"image": [3,S,S] float, "path", "index"}``.

    Non-image files are skipped with one counted warning; an empty folder is an error naming it.
    Images are resized to ``image_size`` x ``image_size`` without augmentation (cacheable).
    """

    def __init__(self, root: str, image_size: int = 1024) -> None:
        self.root, self.image_size = root, image_size
        self.paths = list_images(root, recursive=True, what="unlabelled image folder")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        from .transforms import image_to_tensor, resize_image

        img = resize_image(read_image(self.paths[index]), self.image_size)
        import torch

        return {"image": image_to_tensor(img), "path": self.paths[index],
                "index": torch.tensor(index, dtype=torch.int64)}


__all__ = ["Pascal5i", "Coco20i", "FSS1000", "FolderDataset", "UnlabelledImageFolder", "BadSampleError",
           "read_image"]
