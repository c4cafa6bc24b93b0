"""Albumentations transforms applied identically to an image and its mask(s).

* train: random resized crop to ``image_size`` (scale 0.5-1), horizontal flip, colour jitter.
  If a crop removes all foreground of the class, up to 3 new draws are tried, then a plain resize.
  Query and each support get *independent* draws of the same kind of augmentation.
* train with ``augmentation="hdmnet"``: HDMNet's chain (``data_modules/hdmnet_augment.py``).
* test: resize to ``image_size`` (image bilinear, mask nearest so 255 survives).

Scoring labels (``scoring_label``): the query label at the scoring size (docs/protocols/scoring.md).

Random state: each call is seeded explicitly (``seed`` argument) so results do not depend on
albumentations' global state, worker count or process count.
"""

from __future__ import annotations

from typing import List, Literal, Optional, Sequence, Tuple, Union

import albumentations as A
import cv2
import numpy as np
import torch

from .device_decode import EncodedJPEG
from .hdmnet_augment import HDMNET_SCALE, FusedHDMNetAugment, HDMNetAugment


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
    """Callable ``(image, masks, seed) -> (image, masks)``; masks is a list of [H, W] uint8.

    ``augmentation`` (training only): ``fsseg`` (random resized crop, flip, colour jitter) or
    ``hdmnet`` (``HDMNetAugment`` with ``hdmnet_scale``); the image comes back uint8 or, for
    ``hdmnet``, float32 in 0-255. ``exact=False``: ``hdmnet`` runs ``FusedHDMNetAugment`` (uint8,
    one resampling; not bit-equal to HDMNet's chain), the image then comes back uint8 too;
    ``device=True`` (with ``exact=False``): the image comes back as a ``DeferredWarp`` for
    ``warp_on_device``, the masks warped here."""

    def __init__(self, image_size: int, train: bool, augmentation: Literal["fsseg", "hdmnet"] = "fsseg",
                 hdmnet_scale: Tuple[float, float] = HDMNET_SCALE["pascal"], exact: bool = True,
                 device: bool = False) -> None:
        if augmentation not in ("fsseg", "hdmnet"):
            raise ValueError(f"augmentation must be 'fsseg' or 'hdmnet', got {augmentation!r}")
        self.image_size = image_size
        self.train = train
        self.augmentation = augmentation
        self.resize = build_test_transform(image_size)
        self.aug = build_train_transform(image_size) if train and augmentation == "fsseg" else None
        chain = HDMNetAugment if exact else FusedHDMNetAugment
        self.device = device and not exact
        self.hdmnet = chain(image_size, scale=hdmnet_scale) if train and augmentation == "hdmnet" else None

    def __call__(self, image: np.ndarray, masks: Sequence[np.ndarray], seed: Optional[int] = None,
                 keep_foreground: bool = True) -> Tuple[np.ndarray, List[np.ndarray]]:
        if self.aug is not None or self.hdmnet is not None:
            seed = int(seed if seed is not None else np.random.randint(2**31))
            rng = np.random.default_rng(seed)
            if self.aug is not None:
                self.aug.set_random_seed(seed)
            for _ in range(4):
                img, out = self._augment(image, masks, rng)
                # The models cannot pool an empty support mask: when augmentation removed all
                # foreground, draw again (HDMNet keeps it; only objects lying entirely in a corner
                # that the rotation cuts away are affected).
                if not keep_foreground or all((m == 1).any() for m in out[:1]) \
                        or not all((m == 1).any() for m in masks[:1]):
                    return img, out
        if isinstance(image, EncodedJPEG):  # the plain resize runs here
            image = image.decode()
        out = self.resize(image=image, masks=list(masks))
        return out["image"], list(out["masks"])

    def _augment(self, image, masks, rng) -> Tuple[np.ndarray, List[np.ndarray]]:
        if self.hdmnet is not None:
            return self.hdmnet.deferred(image, masks, rng) if self.device else self.hdmnet(image, masks, rng)
        out = self.aug(image=image, masks=list(masks))
        return out["image"], list(out["masks"])


def scoring_label(mask: np.ndarray, scoring_size: Union[str, int]) -> torch.Tensor:
    """The query label the metric scores against: int64 ``[H0, W0]`` (``"original"``: never resized)
    or ``[S, S]`` (an int ``S``: nearest-neighbour resize with ``torch.nn.functional.interpolate``,
    as HSNet resizes its query label to 400x400: data/pascal.py:38-39, coco.py:39-40, fss.py:39)."""
    label = torch.from_numpy(np.ascontiguousarray(mask).astype(np.int64))
    if scoring_size == "original":
        return label
    if isinstance(scoring_size, bool) or not isinstance(scoring_size, int) or scoring_size < 1:
        raise ValueError(f"scoring_size must be 'model', 'original' or a positive int, got {scoring_size!r}")
    resized = torch.nn.functional.interpolate(label[None, None].float(), size=(scoring_size, scoring_size),
                                              mode="nearest")
    return resized[0, 0].long()


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (or float32 in 0-255) [H, W, 3] -> float32 [3, H, W] in [0, 1] (not normalised)."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


def image_to_uint8_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> uint8 [3, H, W] (a view of the array: no copy); ``images_to_float`` turns
    it into ``image_to_tensor``'s float32 on the device, bit-equal (one IEEE division by 255 each)."""
    if image.dtype != np.uint8:
        raise TypeError(f"image_to_uint8_tensor: expected a uint8 image, got {image.dtype}")
    return torch.from_numpy(image).permute(2, 0, 1)


def images_to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (0-255) -> float32 in [0, 1], where they are (the device); float images unchanged."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images


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
