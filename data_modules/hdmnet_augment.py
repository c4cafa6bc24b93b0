"""HDMNet's training augmentation (``train.py:140-145`` composing ``util/transform.py``) in three
forms: ``HDMNetAugment`` bit-equal to HDMNet's float32 chain, ``FusedHDMNetAugment`` as one uint8
warp (the ``fast`` input path), and ``DeferredWarp`` + ``warp_on_device`` with the image warp and blur
on the device (the ``device`` path). docs/protocols/hdmnet.md and scoring.md say how they differ.
"""

from __future__ import annotations

import warnings
from typing import List, Sequence, Tuple, Union

import cv2
import numpy as np
import torch

from .device_decode import EncodedJPEG

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

    reproduces_reference = True  # bit-equal to HDMNet's chain (under OpenCV 4.x)

    def __init__(self, image_size: int, scale: Tuple[float, float] = HDMNET_SCALE["pascal"],
                 rotate: Tuple[float, float] = (-10.0, 10.0), p_rotate: float = 0.5, blur_kernel: int = 5,
                 p_blur: float = 0.5, p_flip: float = 0.5, padding: Sequence[float] = IMAGENET_MEAN_255,
                 ignore_label: int = 255) -> None:
        if not 0 < scale[0] <= scale[1]:
            raise ValueError(f"HDMNetAugment: scale range must satisfy 0 < min <= max, got {tuple(scale)}")
        self.image_size, self.scale, self.rotate = image_size, tuple(scale), tuple(rotate)
        self.p_rotate, self.blur_kernel, self.p_blur, self.p_flip = p_rotate, blur_kernel, p_blur, p_flip
        self.padding, self.ignore_label = tuple(float(v) for v in padding), ignore_label
        if self.reproduces_reference:
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


class FusedHDMNetAugment(HDMNetAugment):
    """``HDMNetAugment``'s chain with the same random draws, in uint8 and one resampling: the
    scale, rotation, flip and final resize are one affine map (``chain_matrix``) applied by a
    single ``cv2.warpAffine`` from the decoded image straight to ``image_size`` (image bilinear,
    masks nearest, padding = the mean rounded to uint8 / 255), and the 5x5 blur runs after it with
    the spread it has at the scaled size (OpenCV's 5-tap binomial kernel: 1 px, ``kernel_sigma``)
    carried to the output size (a 5-tap Gaussian). NOT bit-equal to HDMNet's chain (``HDMNetAugment``): one
    interpolation instead of three, uint8 rounding, blur after the resize (docs/protocols/hdmnet.md
    gives the measured difference); the geometry of every draw is the same map."""

    reproduces_reference = False

    @staticmethod
    def kernel_sigma(ksize: int) -> float:
        """The standard deviation (px) of the kernel ``cv2.GaussianBlur(image, (ksize, ksize), 0)``
        applies (for 5 taps OpenCV's fixed binomial [1, 4, 6, 4, 1] / 16: exactly 1 px)."""
        w = cv2.getGaussianKernel(ksize, 0, cv2.CV_64F)[:, 0]
        x = np.arange(ksize) - (ksize - 1) / 2
        return float(np.sqrt((w * x * x).sum()))

    def chain_matrix(self, h: int, w: int, rng: np.random.Generator
                     ) -> Tuple[np.ndarray, Tuple[int, int], bool, bool]:
        """The 3x3 map from pixel centres of an ``h x w`` image to the output, drawn as
        ``HDMNetAugment`` draws (scale; rotate p, angle; blur p; flip p); also the scaled size
        (h1, w1) the blur acts at, whether to blur and whether the map flips."""
        s = self.scale[0] + (self.scale[1] - self.scale[0]) * rng.random()
        # cv2.resize(fx=s, fy=s): size rounded, map x1 = s * (x0 + 0.5) - 0.5 (imgproc resize.cpp)
        w1, h1 = int(round(w * s)), int(round(h * s))
        m = np.array([[s, 0, 0.5 * (s - 1)], [0, s, 0.5 * (s - 1)], [0, 0, 1]], np.float64)
        if rng.random() < self.p_rotate:
            angle = self.rotate[0] + (self.rotate[1] - self.rotate[0]) * rng.random()
            m = np.vstack([cv2.getRotationMatrix2D((w1 / 2, h1 / 2), angle, 1), [0, 0, 1]]) @ m
        blur = rng.random() < self.p_blur
        flip = rng.random() < self.p_flip
        if flip:
            m = np.array([[-1, 0, w1 - 1], [0, 1, 0], [0, 0, 1]], np.float64) @ m
        S = self.image_size  # resize (w1, h1) -> (S, S): x = (S / w1) * (x3 + 0.5) - 0.5
        m = np.array([[S / w1, 0, 0.5 * (S / w1 - 1)], [0, S / h1, 0.5 * (S / h1 - 1)], [0, 0, 1]]) @ m
        return m, (h1, w1), blur, flip

    def __call__(self, image: np.ndarray, masks: Sequence[np.ndarray], rng: np.random.Generator
                 ) -> Tuple[np.ndarray, List[np.ndarray]]:
        h, w = masks[0].shape
        m, (h1, w1), blur, flip = self.chain_matrix(h, w, rng)
        out = self._warp(image, m, flip, cv2.INTER_LINEAR, tuple(int(round(v)) for v in self.padding))
        if blur:  # 5 taps: at 518 the carried spread is 0.65-1.35 px for 640x480 COCO images
            k = self.blur_kernel
            sx, sy = self.blur_sigmas(h1, w1)
            out = cv2.GaussianBlur(out, (k, k), sigmaX=sx, sigmaY=sy)
        return out, [self._warp(k, m, flip, cv2.INTER_NEAREST, self.ignore_label) for k in masks]

    def _warp(self, a: np.ndarray, m: np.ndarray, flip: bool, interpolation: int, border) -> np.ndarray:
        S = self.image_size
        if m[0, 1] == 0 and m[1, 0] == 0:
            # no rotation: the map is the whole image onto the whole output (scale x S/w1 = S/w up
            # to the rounding of w1, < 0.5 output px), i.e. a plain resize (3x cheaper than a warp)
            a = cv2.resize(a, (S, S), interpolation=interpolation)
            return cv2.flip(a, 1) if flip else a
        return cv2.warpAffine(a, m[:2], (S, S), flags=interpolation, borderMode=cv2.BORDER_CONSTANT,
                              borderValue=border)


    def blur_sigmas(self, h1: int, w1: int) -> Tuple[float, float]:
        """(sigma_x, sigma_y) in output pixels of the 5x5 blur HDMNet applies at the scaled size."""
        sigma, S = self.kernel_sigma(self.blur_kernel), self.image_size
        return sigma * S / w1, sigma * S / h1

    def deferred(self, image: np.ndarray, masks: Sequence[np.ndarray], rng: np.random.Generator
                 ) -> Tuple["DeferredWarp", List[np.ndarray]]:
        """The same draws and map, the masks warped here (nearest, as ``__call__``) and the image left
        for ``warp_on_device``: a ``DeferredWarp`` of the decoded image, the map and the blur."""
        h, w = masks[0].shape
        m, (h1, w1), blur, flip = self.chain_matrix(h, w, rng)
        masks = [self._warp(k, m, flip, cv2.INTER_NEAREST, self.ignore_label) for k in masks]
        if m[0, 1] == 0 and m[1, 0] == 0:  # the map ``_warp``'s plain resize (+ flip) applies
            S = self.image_size
            m = np.array([[S / w, 0, 0.5 * (S / w - 1)], [0, S / h, 0.5 * (S / h - 1)], [0, 0, 1]])
            if flip:
                m = np.array([[-1, 0, S - 1], [0, 1, 0], [0, 0, 1]]) @ m
        return DeferredWarp(image, m[:2].astype(np.float32), self.blur_sigmas(h1, w1) if blur else (0.0, 0.0)), masks


class DeferredWarp:
    """An image whose augmentation runs on the device (``warp_on_device``): the uint8 image (decoded,
    or an ``EncodedJPEG`` the device decodes), the 2x3 map from its pixel centres to the output's
    and the blur sigmas (0: no blur)."""

    def __init__(self, image: Union[np.ndarray, EncodedJPEG], matrix: np.ndarray, blur: Tuple[float, float]) -> None:
        self.image, self.matrix, self.blur = image, matrix, blur

    def fit(self, canvas: int) -> Tuple[Union[np.ndarray, EncodedJPEG], torch.Tensor]:
        """The image as it goes to the device, at most ``canvas`` square (``canvases_on_device`` puts
        it at the top left of one), and the map from those pixels to the output, float32 [2, 3]. An
        image larger than the canvas is decoded and shrunk here first (``cv2.INTER_AREA``; the map
        composed with it)."""
        image, m = self.image, self.matrix.astype(np.float64)
        h, w = image.shape[:2]
        if max(h, w) > canvas:
            image = image.decode() if isinstance(image, EncodedJPEG) else image
            f = canvas / max(h, w)
            nw, nh = min(canvas, max(1, int(round(w * f)))), min(canvas, max(1, int(round(h * f))))
            image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
            fx, fy = nw / w, nh / h  # canvas pixel centre -> image pixel centre: x0 = (x + 0.5) / f - 0.5
            m = m @ np.array([[1 / fx, 0, 0.5 / fx - 0.5], [0, 1 / fy, 0.5 / fy - 0.5], [0, 0, 1]])
        return image, torch.from_numpy(m.astype(np.float32))


def _gaussian_taps(sigma: torch.Tensor, taps: int = 5) -> torch.Tensor:
    """[N] sigmas -> [N, taps] normalised Gaussian weights (cv2.getGaussianKernel's formula); sigma 0
    -> the identity kernel."""
    x = torch.arange(taps, device=sigma.device, dtype=torch.float32) - (taps - 1) / 2
    s = sigma.clamp_min(1e-6)[:, None]
    w = torch.exp(-(x[None] ** 2) / (2 * s * s))
    w = w / w.sum(1, keepdim=True)
    ident = (x == 0).float()[None].expand_as(w)
    return torch.where(sigma[:, None] > 0, w, ident)


def warp_on_device(canvas: torch.Tensor, matrix: torch.Tensor, blur: torch.Tensor, size: int,
                   pad: Sequence[float] = IMAGENET_MEAN_255) -> torch.Tensor:
    """``FusedHDMNetAugment`` on a batch where it lies (the GPU): uint8 canvases [N, H, W, 3], maps
    [N, 2, 3] (canvas pixel centres -> output pixel centres, cv2's convention), blur sigmas [N, 2]
    -> float32 [N, 3, size, size] in [0, 1]. Bilinear ``grid_sample`` (outside the canvas: the
    padding colour, as cv2's ``BORDER_CONSTANT``), then the 5-tap Gaussian with reflect-101 borders
    (cv2's default). Equal to the CPU fused chain up to its uint8 rounding (tests measure it)."""
    import torch.nn.functional as F

    canvas = canvas.permute(0, 3, 1, 2)
    n, _, hc, wc = canvas.shape
    dev = canvas.device
    full = torch.cat([matrix.double(), torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64, device=dev)
                      .expand(n, 1, 3)], dim=1)
    inv = torch.linalg.inv(full)[:, :2].float()  # output pixel -> canvas pixel
    ys, xs = torch.meshgrid(torch.arange(size, device=dev, dtype=torch.float32),
                            torch.arange(size, device=dev, dtype=torch.float32), indexing="ij")
    pts = torch.stack([xs, ys, torch.ones_like(xs)], -1).reshape(-1, 3)
    src = torch.einsum("nij,pj->npi", inv, pts)
    grid = torch.stack([(2 * src[..., 0] + 1) / wc - 1, (2 * src[..., 1] + 1) / hc - 1], -1).view(n, size, size, 2)
    pad_t = torch.tensor([v / 255.0 for v in pad], device=dev).view(1, 3, 1, 1)
    out = F.grid_sample(canvas.float().div_(255.0) - pad_t, grid, mode="bilinear", padding_mode="zeros",
                        align_corners=False) + pad_t
    if bool((blur > 0).any()):
        wx, wy = _gaussian_taps(blur[:, 0].float()), _gaussian_taps(blur[:, 1].float())
        flat = out.reshape(1, n * 3, size, size)
        k = wx.shape[1] // 2
        flat = F.conv2d(F.pad(flat, (k, k, 0, 0), mode="reflect"), wx.repeat_interleave(3, 0).view(n * 3, 1, 1, -1),
                        groups=n * 3)
        flat = F.conv2d(F.pad(flat, (0, 0, k, k), mode="reflect"), wy.repeat_interleave(3, 0).view(n * 3, 1, -1, 1),
                        groups=n * 3)
        out = flat.view(n, 3, size, size)
    return out
