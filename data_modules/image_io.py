"""Reading images and segmentation masks in the encodings found in the wild.

Everything here returns numpy arrays: images ``uint8 [H, W, 3]`` RGB, masks ``uint8 [H, W]``.
Binary masks come back as ``{0, 1}`` plus ``255`` (ignore) where the file marks it.

Mask encodings (``read_mask(path, encoding=...)``):

``'index'``     single-channel (or palette) class-index PNG: value k = class k, 0 = background,
                255 = ignore (PASCAL boundaries). Without ``class_value`` the raw index map is
                returned; with ``class_value=k`` a binary mask ``(m == k)`` with 255 kept.
``'binary255'`` values {0, 255}: 255 is foreground.
``'binary01'``  values {0, 1} (255 allowed as ignore).
``'rgb'``       colour mask: foreground = any channel > 0, or with ``class_value=(r, g, b)`` exactly
                that colour.
``'jpeg'``      lossy mask (e.g. Kvasir-SEG): grey level (PIL ``convert('L')``) > 127.
``'threshold128'`` the same rule for any file: grey level >= 128 is foreground (HSNet's and PATNet's
                ``read_mask``, e.g. PATNet ``data/deepglobe.py:73-77``).
``'auto'``      detection, in this order:
                1. ``.jpg``/``.jpeg`` file -> ``'jpeg'``;
                2. RGB(A) whose channels differ -> ``'rgb'`` (equal channels are read as grey);
                3. grey/palette values within {0, 1} (+255) -> ``'binary01'``;
                   within {0, 255} -> ``'binary255'``;
                4. anything else -> ``'index'`` (raw map returned unless ``class_value`` is given).
                Where a binary mask is needed (a single-class or per-class folder, the web demo) a
                grey map that is neither is a *soft* mask when it holds 0 and 255 and 255 covers more
                pixels than the in-between grey levels (anti-aliased edges; a class-index mask with a
                255 ignore border, as VOC's, is the other way round): grey >= 128
                (``SOFT_MASK_THRESHOLD``) is the object (``soft_mask_to_binary``). Any other map is an
                error naming ``--data.mask_encoding threshold128`` and ``--data.classes``.
                Note the ambiguity: an index mask holding only class 1 decodes as binary01,
                which gives the same foreground.

Errors on bad files are ``BadSampleError`` (a ``ValueError``) with ``.path`` and ``.reason``.
"""

from __future__ import annotations

import os
import warnings
from typing import Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

# EXIF orientation tag (0x0112) -> the transpose that shows the picture as every viewer does
# (the table of PIL.ImageOps.exif_transpose).
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
HIGH_BIT_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
MASK_ENCODINGS = ("auto", "index", "binary255", "binary01", "rgb", "jpeg", "threshold128")
IGNORE_INDEX = 255


class BadSampleError(ValueError):
    """A sample (image or mask file) that cannot be used. ``path`` names the offending file."""

    def __init__(self, path: Union[str, os.PathLike], reason: Optional[str] = None):
        if reason is None:  # re-raised from a DataLoader worker, which passes only the formatted text
            text = str(path)
            last = text.rstrip().splitlines()[-1] if text.strip() else text
            path, _, reason = last.split("BadSampleError: ", 1)[-1].partition(": ")
            super().__init__(text)
        else:
            super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def is_image_file(path: Union[str, os.PathLike]) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def _open(path) -> Image.Image:
    path = str(path)
    if not os.path.isfile(path):
        raise BadSampleError(path, "file not found")
    try:
        img = Image.open(path)
        img.load()  # force decoding so truncated / corrupt files fail here, naming the file
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise BadSampleError(path, f"cannot decode image ({type(e).__name__}: {e})") from e
    return img


def exif_orientation(path_or_image) -> int:
    """EXIF orientation of an image (1 = stored upright; 2..8 = flipped / rotated)."""
    try:
        if isinstance(path_or_image, Image.Image):
            return int(path_or_image.getexif().get(0x0112, 1) or 1)
        with Image.open(str(path_or_image)) as im:
            return int(im.getexif().get(0x0112, 1) or 1)
    except (OSError, ValueError, TypeError, SyntaxError):
        return 1


def apply_orientation(img: Image.Image, orientation: int) -> Image.Image:
    """``img`` turned as an EXIF ``orientation`` says (1 or unknown: unchanged)."""
    method = _ORIENTATION_TRANSPOSE.get(int(orientation or 1))
    return img.transpose(method) if method is not None else img


def high_bit_depth_to_uint8(img: Image.Image) -> np.ndarray:
    """16-bit / 32-bit / float grey image -> ``uint8 [H, W]`` scaled to 0..255: ``I;16*`` by 65535 ->
    255; ``I`` (32-bit) by 257 when it holds values above 255 (16-bit data); ``F`` by 255 when in
    [0, 1]. Reading such a file as 8 bit would clip it to white."""
    a = np.asarray(img).astype(np.float64)
    if img.mode.startswith("I;16") or (img.mode == "I" and a.size and a.max() > 255):
        a = a / 257.0
    elif img.mode == "F" and a.size and a.max() <= 1.0:
        a = a * 255.0
    return np.clip(np.round(a), 0, 255).astype(np.uint8)


def read_image(path: Union[str, os.PathLike]) -> np.ndarray:
    """Read any image file as RGB ``uint8 [H, W, 3]`` (grey / palette / RGBA converted; 16-bit and
    float images scaled to 0..255, ``high_bit_depth_to_uint8``).

    The EXIF orientation is applied (the picture as every viewer shows it); ``read_mask`` applies
    the same turn to the image's mask (``orientation``), so both stay aligned.
    """
    return read_image_oriented(path)[0]


def read_image_oriented(path: Union[str, os.PathLike]) -> Tuple[np.ndarray, int]:
    """``read_image`` and the EXIF orientation it applied, from one opening of the file."""
    img = _open(path)
    orientation = exif_orientation(img)
    img = apply_orientation(img, orientation)
    if img.mode in HIGH_BIT_DEPTH_MODES:
        grey = high_bit_depth_to_uint8(img)
        return np.repeat(grey[..., None], 3, axis=2), orientation
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.array(img, dtype=np.uint8), orientation


def image_size(path: Union[str, os.PathLike]) -> tuple:
    """(H, W) of an image file without decoding the pixels."""
    try:
        with Image.open(str(path)) as im:
            w, h = im.size
    except (UnidentifiedImageError, OSError) as e:
        raise BadSampleError(path, f"cannot read image header ({e})") from e
    return h, w


def detect_mask_encoding(path: Union[str, os.PathLike], arr: Optional[np.ndarray] = None) -> str:
    """Resolve ``'auto'`` for one file (see module docstring for the rules)."""
    if str(path).lower().endswith((".jpg", ".jpeg")):
        return "jpeg"
    if arr is None:
        arr = _raw_mask_array(_open(path))
    if arr.ndim == 3:
        return "rgb"
    values = set(np.unique(arr).tolist())
    if values <= {0, 1, IGNORE_INDEX} and 1 in values:
        return "binary01"
    if values <= {0, IGNORE_INDEX}:
        return "binary255"
    return "index"


def _raw_mask_array(img: Image.Image) -> np.ndarray:
    """2-D array for grey/palette masks (palette indices kept), 3-D only for truly coloured masks."""
    if img.mode in ("L", "P", "1"):
        a = np.asarray(img)
        if img.mode == "1":
            a = a.astype(np.uint8)
        return a
    if img.mode in HIGH_BIT_DEPTH_MODES:
        a = np.asarray(img)
        values = np.unique(a)
        full = 65535 if img.mode != "F" else 1.0
        if len(values) <= 2 and set(values.tolist()) <= {0, full} and full in values.tolist():
            return (a > 0).astype(np.uint8) * np.uint8(255)  # 16-bit 0/65535 (or float 0/1) binary mask
        if a.size and a.min() >= 0 and a.max() <= 255 and np.all(a == np.round(a)):
            return a.astype(np.uint8)  # class-index values stored in a 16-bit file
        return a
    if img.mode in ("LA", "PA"):
        return np.asarray(img)[..., 0]
    a = np.asarray(img.convert("RGB"))
    if (a[..., 0] == a[..., 1]).all() and (a[..., 0] == a[..., 2]).all():
        return a[..., 0]
    return a


SOFT_MASK_THRESHOLD = 128
BINARY_MASK_HINT = ("soft-edged grey masks: --data.mask_encoding threshold128 (grey >= 128 is the object); "
                    "class-index masks: --data.classes NAMES_OR_VALUES; or fix the file")


def soft_mask_to_binary(arr: np.ndarray) -> Optional[np.ndarray]:
    """``{0, 1}`` from a soft (anti-aliased) grey mask (see the module docstring), None if ``arr`` is
    not one."""
    if arr.ndim != 2:
        return None
    counts = np.bincount(np.asarray(arr, dtype=np.uint8).ravel(), minlength=256)
    between = int(counts[1:255].sum())
    if counts[0] == 0 or counts[255] == 0 or between == 0 or counts[255] <= between:
        return None
    return (arr >= SOFT_MASK_THRESHOLD).astype(np.uint8)


def binary_mask_from_array(arr: np.ndarray, name: str = "mask") -> np.ndarray:
    """An in-memory mask (an upload: grey, RGB or RGBA) -> ``{0, 1}`` by the rules ``read_mask`` applies
    to files (``auto``; soft masks as ``soft_mask_to_binary``); 255 counts as the object."""
    a = np.asarray(arr)
    if a.ndim == 3:
        rgb = a[..., :3] if a.shape[-1] >= 3 else np.repeat(a[..., :1], 3, axis=-1)
        if not ((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all()):
            return (rgb > 0).any(axis=-1).astype(np.uint8)  # coloured mask: any colour is the object
        a = rgb[..., 0]
    if a.dtype == bool:
        return a.astype(np.uint8)
    values = set(np.unique(a).tolist())
    if values <= {0, 1} or values <= {0, 255}:
        return (a > 0).astype(np.uint8)
    soft = soft_mask_to_binary(a) if a.dtype == np.uint8 else None
    if soft is not None:
        return soft
    raise BadSampleError(name, f"mask values {sorted(values)[:10]} are neither 0/1, 0/255 nor a soft-edged "
                               f"0-255 mask ({BINARY_MASK_HINT})")


def _check_values(path, arr: np.ndarray, allowed: set, encoding: str) -> None:
    values = set(np.unique(arr).tolist())
    bad = values - allowed
    if bad:
        raise BadSampleError(
            path,
            f"unexpected mask values {sorted(bad)[:10]} for encoding {encoding!r} "
            f"(allowed {sorted(allowed)}; found {sorted(values)[:20]}). "
            f"Declare the right encoding: --data.mask_encoding index|binary255|binary01|rgb|jpeg ({BINARY_MASK_HINT}).",
        )


def read_mask(
    path: Union[str, os.PathLike],
    encoding: str = "auto",
    class_value: Optional[Union[int, Sequence[int]]] = None,
    orientation: Optional[int] = None,
) -> np.ndarray:
    """Decode a mask file to ``uint8 [H, W]``.

    Binary encodings give {0, 1} (+255 ignore). ``'index'`` without ``class_value`` gives the raw
    class-index map; with ``class_value`` (int, or an (r, g, b) colour for ``'rgb'``) a binary mask.
    ``orientation``: the EXIF orientation of the mask's *image* (``exif_orientation``), applied to the
    mask as ``read_image`` applies it to the image; None: the mask file's own EXIF orientation.
    16-bit masks: 0/65535 reads as 0/255, small class indices as they are.
    """
    if encoding not in MASK_ENCODINGS:
        raise ValueError(f"unknown mask encoding {encoding!r}; choose one of {MASK_ENCODINGS}")
    img = _open(path)
    img = apply_orientation(img, exif_orientation(img) if orientation is None else orientation)
    if encoding in ("jpeg", "threshold128") or (encoding == "auto" and str(path).lower().endswith((".jpg", ".jpeg"))):
        grey = np.asarray(img.convert("L"))
        return (grey > 127).astype(np.uint8)
    arr = _raw_mask_array(img)
    if encoding == "auto":
        encoding = detect_mask_encoding(path, arr)
    if encoding == "rgb":
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        if class_value is not None:
            colour = np.asarray(class_value, dtype=arr.dtype).reshape(1, 1, -1)
            return (arr[..., :3] == colour).all(axis=2).astype(np.uint8)
        return (arr[..., :3] > 0).any(axis=2).astype(np.uint8)
    if arr.ndim == 3:  # coloured file declared as grey encoding
        raise BadSampleError(path, f"mask has colour channels but encoding {encoding!r} expects one channel")
    if encoding == "binary255":
        _check_values(path, arr, {0, 255}, encoding)
        return (arr == 255).astype(np.uint8)
    if encoding == "binary01":
        _check_values(path, arr, {0, 1, IGNORE_INDEX}, encoding)
        return arr.astype(np.uint8)
    # index
    if class_value is None:
        if arr.dtype != np.uint8:
            if arr.max() > 255:
                raise BadSampleError(path, f"class-index mask has values > 255 (max {int(arr.max())})")
            arr = arr.astype(np.uint8)
        return arr
    out = (arr == int(class_value)).astype(np.uint8)
    out[arr == IGNORE_INDEX] = IGNORE_INDEX
    return out


def read_binary_mask(path, encoding: str = "auto", class_value=None) -> np.ndarray:
    """Like ``read_mask`` but guarantees {0, 1, 255}; a multi-valued index mask without a
    ``class_value`` is an error naming the file."""
    m = read_mask(path, encoding, class_value)
    _check_values(path, m, {0, 1, IGNORE_INDEX}, encoding if encoding != "auto" else "auto (binary)")
    return m


def check_same_size(image: np.ndarray, mask: np.ndarray, image_path, mask_path) -> None:
    if image.shape[:2] != mask.shape[:2]:
        raise BadSampleError(
            mask_path,
            f"mask size {mask.shape[1]}x{mask.shape[0]} (WxH) differs from image {image_path} "
            f"size {image.shape[1]}x{image.shape[0]}",
        )


def check_not_dangling(path: Union[str, os.PathLike]) -> None:
    """A symbolic link whose target is gone is an error naming both (never a silently smaller folder)."""
    if os.path.islink(path) and not os.path.exists(path):
        raise BadSampleError(path, f"broken symbolic link (points to {os.readlink(path)}, which does not exist); "
                                   "fix the link or remove it")


def list_images(root: Union[str, os.PathLike], recursive: bool = True, what: str = "image folder",
                skipped: Optional[list] = None) -> list:
    """Sorted image files under ``root``; non-image files are skipped with one counted warning (and
    appended to ``skipped`` as ``{"file", "reason"}`` when a list is given)."""
    root = str(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{what} {root!r} does not exist or is not a directory")
    found, skipped_here = [], []
    if recursive:
        for d, dirs, files in os.walk(root):
            dirs.sort()
            for f in files:
                p = os.path.join(d, f)
                check_not_dangling(p)
                (found if is_image_file(f) else skipped_here).append(p)
    else:
        for f in os.listdir(root):
            p = os.path.join(root, f)
            check_not_dangling(p)
            if os.path.isfile(p):
                (found if is_image_file(f) else skipped_here).append(p)
    skipped_here = [s for s in skipped_here if not os.path.basename(s).startswith(".")]
    if skipped is not None:
        skipped += [{"file": os.path.abspath(s), "reason": "not an image file"} for s in sorted(skipped_here)]
    if skipped_here:
        warnings.warn(
            f"{what} {root!r}: skipped {len(skipped_here)} non-image file(s), e.g. {sorted(skipped_here)[:3]}",
            stacklevel=2,
        )
    if not found:
        raise FileNotFoundError(f"{what} {root!r} contains no images (extensions {IMAGE_EXTENSIONS})")
    return sorted(found)
