"""The interface every few-shot dataset exposes, so one episode sampler serves all of them.

A dataset is a list of classes and, per class, a list of sample keys (strings: file path or id):

* ``class_ids``: ``list[int]`` classes of this split (dataset-level, 0-based ids);
* ``class_names``: ``dict[int, str]``;
* ``samples_by_class``: ``dict[int, list[str]]`` (sorted, deterministic);
* ``load_image(key) -> uint8 [H, W, 3]``;
* ``load_mask(key, class_id) -> uint8 [H, W]`` in {0, 1, 255} (255 = ignore);
* ``load(key, class_ids) -> (image, [mask per class])`` with the mask/image size check.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..device_decode import read_encoded_jpeg
from ..image_io import (
    BINARY_MASK_HINT,
    BadSampleError,
    check_same_size,
    read_image,
    read_image_oriented,
    read_mask,
    soft_mask_to_binary,
)


class FewShotDataset:
    name: str = "dataset"

    def __init__(self) -> None:
        self.class_ids: List[int] = []
        self.class_names: Dict[int, str] = {}
        self.samples_by_class: Dict[int, List[str]] = {}

    # -- interface -------------------------------------------------------------------------
    def load_image(self, key: str) -> np.ndarray:
        raise NotImplementedError

    def load_mask(self, key: str, class_id: int) -> np.ndarray:
        raise NotImplementedError

    def describe(self, key: str) -> str:
        """Human-readable name used in batches (``query_name``) and error messages."""
        return key

    def load(self, key: str, class_ids: Sequence[int]) -> Tuple[np.ndarray, List[np.ndarray]]:
        image = self.load_image(key)
        masks = [self.load_mask(key, c) for c in class_ids]
        return image, masks

    def load_for_device(self, key: str, class_ids: Sequence[int]):
        """``load``, with the image as an ``EncodedJPEG`` where the device can decode it
        (``device_decode``); a reader without image files decodes as ``load``."""
        return self.load(key, class_ids)

    # -- helpers ---------------------------------------------------------------------------
    def num_samples(self, class_id: int) -> int:
        return len(self.samples_by_class.get(class_id, ()))

    def all_keys(self) -> List[str]:
        seen, out = set(), []
        for c in self.class_ids:
            for k in self.samples_by_class.get(c, ()):
                if k not in seen:
                    seen.add(k)
                    out.append(k)
        return out

    def __repr__(self) -> str:
        n = sum(len(v) for v in self.samples_by_class.values())
        return f"{type(self).__name__}({self.name!r}, classes={len(self.class_ids)}, samples={n})"


class FileFewShotDataset(FewShotDataset):
    """Dataset whose samples are (image file, mask file) pairs.

    ``self.records[key] = (image_path, mask_path)``; ``self.mask_value(key, class_id)`` says how to
    pull one class out of the mask: ``None`` = the mask is binary for this class, an int = class
    value in an index mask. Subclasses fill ``records``/``class_ids``/``samples_by_class``.
    """

    def __init__(self, mask_encoding: str = "auto") -> None:
        super().__init__()
        self.mask_encoding = mask_encoding
        self.records: Dict[str, Tuple[str, str]] = {}

    def mask_value(self, key: str, class_id: int) -> Optional[int]:
        return None

    def load_image(self, key: str) -> np.ndarray:
        return read_image(self.records[key][0])

    def _decode(self, key: str, class_id: int, orientation: Optional[int] = None) -> np.ndarray:
        mask_path = self.records[key][1]
        value = self.mask_value(key, class_id)
        if value is None:
            m = read_mask(mask_path, self.mask_encoding, orientation=orientation)
            vals = set(np.unique(m).tolist())
            if not vals <= {0, 1, 255}:
                soft = soft_mask_to_binary(m) if self.mask_encoding == "auto" else None
                if soft is not None:  # anti-aliased edges: grey >= 128 is the object (image_io.py)
                    return soft
                raise BadSampleError(
                    mask_path,
                    f"unexpected mask values {sorted(vals - {0, 1, 255})[:10]} in a binary mask "
                    f"(decoded with encoding {self.mask_encoding!r}); {BINARY_MASK_HINT}",
                )
            return m
        enc = "index" if self.mask_encoding == "auto" else self.mask_encoding
        return read_mask(mask_path, enc, class_value=value, orientation=orientation)

    def load_mask(self, key: str, class_id: int) -> np.ndarray:
        return self.load(key, [class_id])[1][0]

    def load_for_device(self, key: str, class_ids: Sequence[int]):
        # a reader that reads its images its own way (an override of ``load``/``load_image``) decodes them
        own = type(self).load is not FileFewShotDataset.load or type(self).load_image is not FileFewShotDataset.load_image
        encoded = None if own else read_encoded_jpeg(self.records[key][0])
        if encoded is None:
            return self.load(key, class_ids)
        masks = [self._decode(key, c, 1) for c in class_ids]  # an encoded image has no EXIF turn
        for m in masks:
            check_same_size(encoded, m, encoded.path, self.records[key][1])
        return encoded, masks

    def load(self, key: str, class_ids: Sequence[int]):
        """Image and masks, the image's EXIF orientation applied to both. A mask already drawn on the
        turned picture (its size matches only unturned) is used as it is."""
        image_path, mask_path = self.records[key]
        image, orientation = read_image_oriented(image_path)
        masks = [self._decode(key, c, orientation) for c in class_ids]
        if orientation != 1 and any(m.shape[:2] != image.shape[:2] for m in masks):
            unturned = [self._decode(key, c, 1) for c in class_ids]
            if all(m.shape[:2] == image.shape[:2] for m in unturned):
                masks = unturned
        for m in masks:
            check_same_size(image, m, image_path, mask_path)
        return image, masks

    def describe(self, key: str) -> str:
        return self.records[key][0] if key in self.records else key


def stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def first_dot_id(path: str) -> str:
    """A file's name up to its first dot: DistillFSS's ids (``kvasir.py:31``, ``pothole.py:25``,
    ``isic.py:31``), which differ from ``stem`` for names with inner dots."""
    return os.path.basename(path).split(".")[0]
