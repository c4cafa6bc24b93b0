"""JPEG decoding where the batch goes: the ``device`` input path's loader reads a JPEG's bytes and
header only, and the device decodes it (``torchvision.io.decode_jpeg``: nvJPEG on a CUDA device,
libjpeg-turbo on the CPU) before ``warp_on_device``.

A JPEG's decode is the largest CPU cost left in a training episode once the augmentation runs on
the device (``bench/results.md``, input pipeline); the bytes are also ~10x fewer than the decoded
image. Only files whose device decode is the picture ``read_image`` gives travel encoded: baseline
JPEGs, RGB or grey, with no EXIF turn, complete (ending in the EOI marker). Everything else is
decoded by the loader as before and sent decoded. torchvision's CPU decode equals PIL's on every
COCO image of ``../shared/data/coco128`` (tests); nvJPEG's IDCT may differ from libjpeg-turbo's by
a grey level, within what the ``device`` path already differs from HDMNet's chain by
(docs/protocols/hdmnet.md).
"""
from __future__ import annotations

import io
import os
import warnings
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .image_io import exif_orientation

JPEG_SUFFIXES = (".jpg", ".jpeg", ".jpe")
_EOI = (0xFF, 0xD9)


def decode_jpeg(data, device: Union[str, torch.device] = "cpu"):
    """``torchvision.io.decode_jpeg`` to RGB. torchvision 0.29 (constraints.txt) marks its image codecs
    deprecated in favour of TorchCodec; they are the ones with nvJPEG behind them in the tested set,
    so the notice is silenced here rather than printed per batch."""
    from torchvision.io import ImageReadMode
    from torchvision.io import decode_jpeg as tv_decode_jpeg

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*decoding and encoding capabilities of TorchVision",
                                category=DeprecationWarning)
        return tv_decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


class EncodedJPEG:
    """A JPEG file's bytes standing for its decoded ``[H, W, 3]`` uint8 image until the device
    decodes it; ``shape`` is the decoded one, so size checks against the masks run unchanged."""

    def __init__(self, path: str, data: np.ndarray, height: int, width: int) -> None:
        self.path, self.data = path, data
        self.shape = (height, width, 3)

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    def decode(self) -> np.ndarray:
        """The decoded image here, on the CPU (for a draw that falls back to a plain resize)."""
        return decode_jpeg(torch.from_numpy(self.data)).permute(1, 2, 0).numpy()


def read_encoded_jpeg(path: Union[str, os.PathLike]) -> Optional[EncodedJPEG]:
    """``EncodedJPEG`` of ``path`` when it may travel encoded, else None (the caller decodes it with
    ``read_image``, which also reports a broken file by name)."""
    path = str(path)
    if not path.lower().endswith(JPEG_SUFFIXES):
        return None
    try:
        data = np.fromfile(path, dtype=np.uint8)  # one read: the header is parsed from these bytes
        with Image.open(io.BytesIO(data.tobytes())) as im:  # the header only: no pixel is decoded here
            if (im.format != "JPEG" or im.mode not in ("RGB", "L") or im.info.get("progressive")
                    or exif_orientation(im) != 1):
                return None
            width, height = im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return None
    if data.size < 4 or tuple(data[-2:]) != _EOI:  # truncated (or trailing bytes): decode here
        return None
    return EncodedJPEG(path, data, height, width)


class DeviceImages:
    """The images of one item key for the device: each decoded (uint8 ``[h, w, 3]``, at most the
    canvas) or an ``EncodedJPEG``; ``lead`` is the item's image shape before ``[H, W, 3]`` (``()``
    for the query, ``(K,)`` or ``(N, K)`` for supports). Collated as a list, not stacked: the
    loader sends bytes, ``canvases_on_device`` makes the canvases."""

    def __init__(self, images: Sequence[Union[np.ndarray, EncodedJPEG]], lead: Tuple[int, ...]) -> None:
        self.images, self.lead = list(images), tuple(lead)

    @property
    def nbytes(self) -> int:
        return sum(int(im.nbytes) for im in self.images)


def canvases_on_device(items: Sequence[DeviceImages], canvas: int, pad: Sequence[int],
                       device: Union[str, torch.device]) -> torch.Tensor:
    """A batch's ``DeviceImages`` -> uint8 ``[B, *lead, canvas, canvas, 3]`` on ``device``: each image
    at the top left of a ``pad``-coloured square, the JPEGs decoded there in one call."""
    device = torch.device(device)
    flat: List[Union[np.ndarray, EncodedJPEG]] = [im for it in items for im in it.images]
    out = torch.empty((len(flat), canvas, canvas, 3), dtype=torch.uint8, device=device)
    out[:] = torch.tensor([int(round(v)) for v in pad], dtype=torch.uint8, device=device)
    jpegs = [i for i, im in enumerate(flat) if isinstance(im, EncodedJPEG)]
    if jpegs:
        data = [torch.from_numpy(flat[i].data) for i in jpegs]  # decode_jpeg takes CPU bytes on any device
        try:
            decoded = decode_jpeg(data, device)
        except RuntimeError:
            for i in jpegs:  # name the file that failed
                try:
                    decode_jpeg(torch.from_numpy(flat[i].data), device)
                except RuntimeError as e:
                    raise RuntimeError(f"{flat[i].path}: cannot decode the JPEG on {device} ({e}); "
                                       "--data.init_args.input_path fast decodes it in the loader") from e
            raise
        for i, img in zip(jpegs, decoded):
            h, w = flat[i].shape[:2]
            out[i, :h, :w] = img.permute(1, 2, 0)
    for i, im in enumerate(flat):
        if not isinstance(im, EncodedJPEG):
            h, w = im.shape[:2]
            out[i, :h, :w] = torch.from_numpy(np.ascontiguousarray(im)).to(device)
    lead = items[0].lead
    return out.view(len(items), *lead, canvas, canvas, 3)
