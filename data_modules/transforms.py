"""Albumentations transforms applied identically to an image and its mask(s).

* train: random resized crop to ``image_size`` (scale 0.5-1), horizontal flip, colour jitter.
  If a crop removes all foreground of the class, up to 3 new draws are tried, then a plain resize.
  Query and each support get *independent* draws of the same kind of augmentation.
* train with ``augmentation="hdmnet"``: HDMNet's chain (``HDMNetAugment``, below), own cv2 code.
* test: resize to ``image_size`` (image bilinear, mask nearest so 255 survives).

Scoring labels (``scoring_label``): the query label at the scoring size (docs/protocols/scoring.md).

Random state: each call is seeded explicitly (``seed`` argument) so results do not depend on
albumentations' global state, worker count or process count.
"""

from __future__ import annotations

import warnings
from typing import List, Literal, Optional, Sequence, Tuple, Union

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


# ImageNet mean in 0-255 units: HDMNet pads rotated images with it (train.py:142, mean = [0.485,
# 0.456, 0.406] * 255 at train.py:135-136).
IMAGENET_MEAN_255 = (0.485 * 255, 0.456 * 255, 0.406 * 255)
# HDMNet's RandScale ranges: config/pascal/*.yaml scale_min/max 0.9/1.1, config/coco/*.yaml 0.8/1.25.
HDMNET_SCALE = {"pascal": (0.9, 1.1), "coco": (0.8, 1.25)}


def _warn_unless_opencv4() -> None:
    """HDMNet ran on OpenCV 4.x; 5.0's ``warpAffine`` interpolates rotated images differently (0.02-0.19
    grey levels on average, up to 2.8; labels 0-3 pixels), so the chain is HDMNet's draw for draw only
    under 4.x (``constraints.txt`` pins it for ``make install``)."""
    if not cv2.__version__.startswith("4.") and not getattr(_warn_unless_opencv4, "said", False):
        _warn_unless_opencv4.said = True
        warnings.warn(f"augmentation 'hdmnet' reproduces HDMNet's util/transform.py under OpenCV 4.x; this is "
                      f"OpenCV {cv2.__version__}, whose warpAffine differs: install opencv-python-headless<5 "
                      "(`make install` does)", stacklevel=3)


class HDMNetAugment:
    """HDMNet's training augmentation, as its ``train.py:140-145`` composes ``util/transform.py``:

    1. ``RandScale(scale)`` (transform.py:189-218): one factor ``s ~ U[scale]`` for both axes,
       ``cv2.resize(fx=s, fy=s)``, image bilinear, label nearest.
    2. ``RandRotate([-10, 10], padding=mean, ignore_label=255)`` with p 0.5 (transform.py:315-340):
       ``cv2.getRotationMatrix2D((w/2, h/2), angle, 1)``, ``warpAffine`` image bilinear padded with the
       ImageNet mean, label nearest padded with 255.
    3. ``RandomGaussianBlur(5)`` p 0.5 (transform.py:365-372): ``cv2.GaussianBlur(image, (5, 5), 0)``.
    4. ``RandomHorizontalFlip`` p 0.5 (transform.py:343-351).
    5. ``Resize([train_h, train_w])`` (transform.py:102-115): a plain resize to the model size (no
       crop), image bilinear, label nearest.

    Own cv2 code rather than albumentations: albumentations' ``Rotate`` turns about
    ``((w-1)/2, (h-1)/2)`` and its ``RandomScale``/``GaussianBlur`` round sizes and sigmas their own
    way, so they would not reproduce these ops exactly. The image stays float32 through the chain as
    in HDMNet (``dataset.py:213``: ``np.float32(image)``), so the mean padding is not rounded.
    Random draws come from a ``np.random.Generator`` in HDMNet's order (scale; rotate p, angle; blur
    p; flip p). ``PairTransform`` draws again when the chain removed all foreground (see there).
    """

    def __init__(self, image_size: int, scale: Tuple[float, float] = HDMNET_SCALE["pascal"],
                 rotate: Tuple[float, float] = (-10.0, 10.0), p_rotate: float = 0.5, blur_kernel: int = 5,
                 p_blur: float = 0.5, p_flip: float = 0.5, padding: Sequence[float] = IMAGENET_MEAN_255,
                 ignore_label: int = 255) -> None:
        if not 0 < scale[0] <= scale[1]:
            raise ValueError(f"HDMNetAugment: scale range must satisfy 0 < min <= max, got {tuple(scale)}")
        self.image_size, self.scale, self.rotate = image_size, tuple(scale), tuple(rotate)
        self.p_rotate, self.blur_kernel, self.p_blur, self.p_flip = p_rotate, blur_kernel, p_blur, p_flip
        self.padding, self.ignore_label = tuple(float(v) for v in padding), ignore_label
        _warn_unless_opencv4()

    def __call__(self, image: np.ndarray, masks: Sequence[np.ndarray], rng: np.random.Generator
                 ) -> Tuple[np.ndarray, List[np.ndarray]]:
        image, masks = image.astype(np.float32), [np.ascontiguousarray(m) for m in masks]
        for step in (self.rand_scale, self.rand_rotate, self.rand_blur, self.rand_hflip):
            image, masks = step(image, masks, rng)
        return self.resize(image, masks)

    def rand_scale(self, image, masks, rng):
        s = self.scale[0] + (self.scale[1] - self.scale[0]) * rng.random()
        image = cv2.resize(image, None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR)
        return image, [cv2.resize(m, None, fx=s, fy=s, interpolation=cv2.INTER_NEAREST) for m in masks]

    def rand_rotate(self, image, masks, rng):
        if not rng.random() < self.p_rotate:
            return image, masks
        angle = self.rotate[0] + (self.rotate[1] - self.rotate[0]) * rng.random()
        h, w = masks[0].shape
        matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1)
        image = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                               borderValue=self.padding)
        return image, [cv2.warpAffine(m, matrix, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                                      borderValue=self.ignore_label) for m in masks]

    def rand_blur(self, image, masks, rng):
        if rng.random() < self.p_blur:
            image = cv2.GaussianBlur(image, (self.blur_kernel, self.blur_kernel), 0)
        return image, masks

    def rand_hflip(self, image, masks, rng):
        if rng.random() < self.p_flip:
            return cv2.flip(image, 1), [cv2.flip(m, 1) for m in masks]
        return image, masks

    def resize(self, image, masks):
        size = (self.image_size, self.image_size)
        image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
        return image, [cv2.resize(m, size, interpolation=cv2.INTER_NEAREST) for m in masks]


class PairTransform:
    """Callable ``(image, masks, seed) -> (image, masks)``; masks is a list of [H, W] uint8.

    ``augmentation`` (training only): ``fsseg`` (random resized crop, flip, colour jitter) or
    ``hdmnet`` (``HDMNetAugment`` with ``hdmnet_scale``); the image comes back uint8 or, for
    ``hdmnet``, float32 in 0-255."""

    def __init__(self, image_size: int, train: bool, augmentation: Literal["fsseg", "hdmnet"] = "fsseg",
                 hdmnet_scale: Tuple[float, float] = HDMNET_SCALE["pascal"]) -> None:
        if augmentation not in ("fsseg", "hdmnet"):
            raise ValueError(f"augmentation must be 'fsseg' or 'hdmnet', got {augmentation!r}")
        self.image_size = image_size
        self.train = train
        self.augmentation = augmentation
        self.resize = build_test_transform(image_size)
        self.aug = build_train_transform(image_size) if train and augmentation == "fsseg" else None
        self.hdmnet = HDMNetAugment(image_size, scale=hdmnet_scale) if train and augmentation == "hdmnet" else None

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
        out = self.resize(image=image, masks=list(masks))
        return out["image"], list(out["masks"])

    def _augment(self, image, masks, rng) -> Tuple[np.ndarray, List[np.ndarray]]:
        if self.hdmnet is not None:
            return self.hdmnet(image, masks, rng)
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
