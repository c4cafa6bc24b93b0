"""Albumentations transforms applied identically to an image and its mask(s).

* train: random resized crop to ``image_size`` (scale 0.5-1), horizontal flip, colour jitter.
  If a crop removes all foreground of the class, up to 3 new draws are tried, then a plain resize.
  Query and each support get *independent* draws of the same kind of augmentation.
* test: resize to ``image_size`` (image bilinear, mask nearest so 255 survives).

Random state: each call is seeded explicitly (``seed`` argument) so results do not depend on
albumentations' global state, worker count or process count.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import albumentations as A
import cv2
import numpy as np
import torch


def build_train_transform(image_size: int) -> A.Compose:
    return A.Compose([
        A.RandomResizedCrop(size=(image_size, image_size), scale=(0.5, 1.0), ratio=(0.75, 1.333),
                            interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST),
        A.HorizontalFlip(p=0.5),
        A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.03, p=0.5),
    ])


def build_test_transform(image_size: int) -> A.Compose:
    return A.Compose([
        A.Resize(image_size, image_size, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST),
    ])


class PairTransform:
    """Callable ``(image, masks, seed) -> (image, masks)``; masks is a list of [H, W] uint8."""

    def __init__(self, image_size: int, train: bool) -> None:
        self.image_size = image_size
        self.train = train
        self.resize = build_test_transform(image_size)
        self.aug = build_train_transform(image_size) if train else None

    def __call__(self, image: np.ndarray, masks: Sequence[np.ndarray], seed: Optional[int] = None,
                 keep_foreground: bool = True) -> Tuple[np.ndarray, List[np.ndarray]]:
        if self.aug is not None:
            self.aug.set_random_seed(int(seed if seed is not None else np.random.randint(2**31)))
            for _ in range(4):
                out = self.aug(image=image, masks=list(masks))
                if not keep_foreground or all((m == 1).any() for m in out["masks"][:1]) \
                        or not all((m == 1).any() for m in masks[:1]):
                    return out["image"], list(out["masks"])
        out = self.resize(image=image, masks=list(masks))
        return out["image"], list(out["masks"])


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> float32 [3, H, W] in [0, 1] (not normalised)."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


def resize_image(image: np.ndarray, image_size: int) -> np.ndarray:
    return cv2.resize(image, (image_size, image_size), interpolation=cv2.INTER_LINEAR)


def sam_longest_side(image: np.ndarray, long_side: int) -> tuple[np.ndarray, tuple[int, int]]:
    """What SAM's predictor feeds its encoder before normalisation: ``ResizeLongestSide.apply_image``
    (segment_anything/utils/transforms.py:26-31, 94-102: PIL bilinear to the long side, rounding
    ``int(x + 0.5)``), then zero padding at the bottom/right to ``long_side`` square
    (``Sam.preprocess``; the teacher re-zeroes the padding after normalising). Returns the padded
    uint8 image and the (h, w) of its content."""
    from PIL import Image

    h, w = image.shape[:2]
    scale = long_side * 1.0 / max(h, w)
    nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
    resized = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
    out = np.zeros((long_side, long_side, 3), dtype=np.uint8)
    out[:nh, :nw] = resized
    return out, (nh, nw)
