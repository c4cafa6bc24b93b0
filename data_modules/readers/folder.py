"""Generic folders: your own labelled data (``FolderDataset``) and unlabelled images."""

from __future__ import annotations

import os
from typing import Dict, List, Optional

import numpy as np

from ..image_io import list_images, read_image, read_mask
from .base import FileFewShotDataset
from .layout import pair_folder, read_lines, single_class_dirs


class FolderDataset(FileFewShotDataset):
    """Generic layout for your own data. Detected in this order:

    1. per-class folders ``root/<class>/images`` + ``root/<class>/masks`` (binary masks);
    2. one folder ``root/images`` + ``root/masks`` (or ``image``/``label``, ``support/image``/``support/label``):
       * binary masks -> a single class named after ``root`` (or ``class_name``);
       * ``mask_encoding='index'`` or ``classes`` given -> class-index masks (COCO, VOC); classes =
         the values 1..254 found, or only ``classes`` (names from ``root/classes.txt``, line k-1 =
         value k, or mask values), in that order.
    Images and masks are matched by file stem; non-image files are skipped with a warning.
    """

    name = "folder"

    def __init__(self, root: str, mask_encoding: str = "auto", class_name: Optional[str] = None,
                 classes: Optional[List[str]] = None) -> None:
        super().__init__(mask_encoding)
        self.root = root
        if not os.path.isdir(root):
            raise FileNotFoundError(f"folder dataset root {root!r} does not exist")
        self._values: Optional[Dict[int, int]] = None
        self.skipped_files: List[dict] = []  # {"file", "reason"}: non-image files, images without a mask
        self.wanted = _class_list(classes)
        single = single_class_dirs(root)
        if single is not None:
            self.records = pair_folder(*single, skipped=self.skipped_files)
            if mask_encoding == "index" or self.wanted:
                if self.mask_encoding == "auto":
                    self.mask_encoding = "index"
                self._init_index(root)
            else:
                self.class_ids = [0]
                self.class_names = {0: class_name or os.path.basename(os.path.normpath(root))}
                self.samples_by_class = {0: sorted(self.records)}
            return
        classes = sorted(d for d in os.listdir(root) if single_class_dirs(os.path.join(root, d)))
        if not classes:
            raise FileNotFoundError(
                f"{root!r}: no recognised layout (expected images/+masks/, image/+label/ or <class>/images+masks/)")
        if self.wanted:
            unknown = [c for c in self.wanted if c not in classes]
            if unknown:
                raise ValueError(f"{root}: classes {unknown} not found; class folders: {classes}")
            classes = list(self.wanted)
        self.class_ids = list(range(len(classes)))
        self.class_names = dict(enumerate(classes))
        self.samples_by_class = {}
        for i, c in enumerate(classes):
            recs = pair_folder(*single_class_dirs(os.path.join(root, c)), skipped=self.skipped_files)
            self.records.update(recs)
            self.samples_by_class[i] = sorted(recs)

    def _init_index(self, root: str) -> None:
        names_file = os.path.join(root, "classes.txt")
        names = read_lines(names_file) if os.path.isfile(names_file) else None
        members: Dict[int, List[str]] = {}
        for key, (_, mp) in self.records.items():
            for v in np.unique(read_mask(mp, "index")):
                if 1 <= v <= 254:
                    members.setdefault(int(v), []).append(key)
        values = sorted(members)
        if self.wanted:
            values = [self._class_value(c, names, members, root) for c in self.wanted]
        self._values = {i: v for i, v in enumerate(values)}
        self.class_ids = list(range(len(values)))
        self.class_names = {i: (names[v - 1] if names and v - 1 < len(names) else str(v)) for i, v in self._values.items()}
        self.samples_by_class = {i: sorted(members[v]) for i, v in self._values.items()}

    @staticmethod
    def _class_value(c: str, names: Optional[List[str]], members: Dict[int, List[str]], root: str) -> int:
        """Mask value of a class given by name (``classes.txt``) or by value."""
        if str(c).isdigit():
            v = int(c)
        elif names and c in names:
            v = names.index(c) + 1
        else:
            hint = (f"names in {os.path.join(root, 'classes.txt')}: {names[:10]}..." if names else
                    f"no {os.path.join(root, 'classes.txt')} (line k = name of value k): give mask values instead")
            raise ValueError(f"{root}: class {c!r} unknown ({hint})")
        if v not in members:
            raise ValueError(f"{root}: class {c!r} (mask value {v}) appears in no mask; values present: "
                             f"{sorted(members)[:20]}")
        return v

    def mask_value(self, key: str, class_id: int) -> Optional[int]:
        return None if self._values is None else self._values[class_id]


def _class_list(classes) -> List[str]:
    """``"dog,airplane"`` / ``["dog", "airplane"]`` / ``[18, 5]`` -> ``["dog", "airplane"]``."""
    if classes is None:
        return []
    if isinstance(classes, str):
        classes = classes.split(",")
    return [str(c).strip() for c in classes if str(c).strip()]


class UnlabelledImageFolder:
    """Any folder of images (recursive, sorted). Items: ``{"image": [3,S,S] float, "path", "index"}``.

    Non-image files are skipped with one counted warning; an empty folder is an error naming it.
    Images are resized to ``image_size`` x ``image_size`` without augmentation (cacheable).
    ``teacher_view='longest_side'`` adds ``"teacher_image"`` (the image as SAM's predictor resizes it:
    long side ``image_size``, zero padded at the bottom/right, ``transforms.sam_longest_side``) and
    ``"teacher_valid"`` (h, w of its content).
    """

    def __init__(self, root: str, image_size: int = 1024, teacher_view: str = "none") -> None:
        if teacher_view not in ("none", "longest_side"):
            raise ValueError(f"teacher_view must be 'none' or 'longest_side', got {teacher_view!r}")
        self.root, self.image_size, self.teacher_view = root, image_size, teacher_view
        self.paths = list_images(root, recursive=True, what="unlabelled image folder")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        from ..transforms import image_to_tensor, resize_image, sam_longest_side

        original = read_image(self.paths[index])
        import torch

        item = {"image": image_to_tensor(resize_image(original, self.image_size)), "path": self.paths[index],
                "index": torch.tensor(index, dtype=torch.int64)}
        if self.teacher_view == "longest_side":
            padded, valid = sam_longest_side(original, self.image_size)
            item["teacher_image"] = image_to_tensor(padded)
            item["teacher_valid"] = torch.tensor(valid, dtype=torch.int64)
        return item
