"""Shared file-layout helpers of the benchmark readers (split aliases, list files, image/mask pairing)."""

from __future__ import annotations

import os
import warnings
from typing import Dict, List, Optional

from ..image_io import BadSampleError, check_not_dangling, is_image_file, list_images
from .base import stem

SPLIT_ALIASES = {"train": "trn", "trn": "trn", "val": "val", "test": "test"}


def read_lines(path: str) -> List[str]:
    with open(path) as f:
        return [x.strip() for x in f if x.strip()]


def pair_folder(image_dir: str, mask_dir: str, skipped: Optional[list] = None) -> Dict[str, tuple]:
    """Match images with masks by file stem: exactly, else ignoring case when that is unambiguous.
    Two images (or two masks) with the same stem are an error naming both; a broken symbolic link is
    an error naming it; images without a mask are skipped with a warning (and, with non-image files,
    appended to ``skipped`` as ``{"file", "reason"}`` when a list is given)."""
    images = list_images(image_dir, recursive=False, what="image folder", skipped=skipped)
    by_stem: Dict[str, str] = {}
    for p in images:
        if stem(p) in by_stem:
            raise BadSampleError(p, f"two images with the stem {stem(p)!r}: {by_stem[stem(p)]} and {p} "
                                    "(masks are matched by stem); rename or remove one")
        by_stem[stem(p)] = p
    masks: Dict[str, str] = {}
    for f in sorted(os.listdir(mask_dir)):
        full = os.path.join(mask_dir, f)
        check_not_dangling(full)
        if is_image_file(f):
            if stem(f) in masks:
                raise BadSampleError(full, f"two masks with the stem {stem(f)!r}: {masks[stem(f)]} and {full}; "
                                           "rename or remove one")
            masks[stem(f)] = full
    masks_ci: Dict[str, List[str]] = {}
    for s, m in masks.items():
        masks_ci.setdefault(s.lower(), []).append(m)
    images_ci: Dict[str, int] = {}
    for s in by_stem:
        images_ci[s.lower()] = images_ci.get(s.lower(), 0) + 1
    out, missing, ambiguous = {}, [], []
    for p in images:
        m = masks.get(stem(p))
        if m is None:
            cands = masks_ci.get(stem(p).lower(), [])
            if len(cands) == 1 and images_ci[stem(p).lower()] == 1:
                m = cands[0]  # IMG_1.JPG <-> img_1.png
            elif cands:
                ambiguous.append(f"{p} ~ {cands}")
        if m is None:
            missing.append(p)
        else:
            out[p] = (p, m)
    if skipped is not None:
        skipped += [{"file": os.path.abspath(p), "reason": f"no mask with its stem in {mask_dir}"} for p in missing]
    if missing:
        why = f"; stems that differ only in case are ambiguous: {ambiguous[:3]}" if ambiguous else ""
        warnings.warn(f"{image_dir}: {len(missing)} image(s) without a mask in {mask_dir} skipped, "
                      f"e.g. {missing[:3]} (matched by file stem, ignoring case when unambiguous){why}", stacklevel=3)
    if not out:
        raise FileNotFoundError(f"no image/mask pairs found in {image_dir!r} + {mask_dir!r} (matched by file stem)")
    return out


def single_class_dirs(root: str):
    for img, lab in (("support/image", "support/label"), ("image", "label"), ("images", "masks")):
        a, b = os.path.join(root, img), os.path.join(root, lab)
        if os.path.isdir(a) and os.path.isdir(b):
            return a, b
    return None


def classes_by_area(label, wanted, min_pixels: int = 0, drop_if_unwanted: bool = False) -> List[int]:
    """The classes (label values) an image counts for, by BAM/HDMNet's rule (HDMNet util/dataset.py:24-80,
    make_dataset): values 0 and 255 are not classes; with ``drop_if_unwanted`` an image holding any
    class outside ``wanted`` (of any size) counts for nothing (training images with a test-fold class,
    dataset.py:59); otherwise each wanted class counts when it covers >= ``min_pixels`` pixels of the
    label at its original size (dataset.py:65/73 use 2*32*32)."""
    import numpy as np

    values, counts = np.unique(label, return_counts=True)
    return classes_from_areas({int(v): int(n) for v, n in zip(values, counts)}, wanted, min_pixels, drop_if_unwanted)


def classes_from_areas(areas: Dict[int, int], wanted, min_pixels: int = 0, drop_if_unwanted: bool = False) -> List[int]:
    """``classes_by_area``'s rule on a label's ``{value: pixels}`` (``mask_index.mask_areas``)."""
    present = {v: n for v, n in areas.items() if v not in (0, 255) and n > 0}
    if drop_if_unwanted and not set(present) <= set(wanted):
        return []
    return [v for v, n in sorted(present.items()) if v in wanted and n >= min_pixels]
