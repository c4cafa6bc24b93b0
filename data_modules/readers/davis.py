"""The DAVIS-2017 layout (semi-supervised task) and its results layout.

Dataset root ``R``::

    R/ImageSets/2017/{train,val}.txt          one sequence name a line
    R/JPEGImages/480p/<seq>/%05d.jpg          frames (not every sequence is 854x480)
    R/Annotations/480p/<seq>/%05d.png         mode-P index maps: 0 = background, k = object k, 255 = void

Results folder ``P`` (what ``fsseg davis`` writes and ``fsseg davis-eval`` reads)::

    P/<seq>/%05d.png                          index maps (DAVIS palette), one per annotated frame

Frames and annotations are listed in sorted file-name order, the frame ids are the file stems, as the
official evaluator does (davis2017-evaluation ``davis2017/davis.py:48-53``). Stand-alone: no fsseg imports.
Protocol card: docs/protocols/davis17.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

VOID_LABEL = 255
RESOLUTION = "480p"
SUBSETS = ("train", "val")


def davis_palette() -> np.ndarray:
    """The DAVIS / PASCAL VOC colour map, ``uint8 [256, 3]``: the bits of the index are spread over
    the high bits of R, G, B (bit 0 -> R, bit 1 -> G, bit 2 -> B, next three bits one place lower)."""
    idx = np.arange(256)
    cmap = np.zeros((256, 3), dtype=np.int64)
    for shift in range(8):
        for channel in range(3):
            bit = (idx >> (3 * shift + channel)) & 1
            cmap[:, channel] |= bit << (7 - shift)
    return cmap.astype(np.uint8)


@dataclass(frozen=True)
class DavisSequence:
    name: str
    frame_paths: list[Path]       # JPEGImages, sorted
    annotation_paths: list[Path]  # Annotations, sorted

    @property
    def frame_ids(self) -> list[str]:
        return [p.stem for p in self.frame_paths]

    @property
    def annotation_ids(self) -> list[str]:
        return [p.stem for p in self.annotation_paths]


def read_sequence_names(root: str | Path, subset: str = "val") -> list[str]:
    """Names listed in ``ImageSets/2017/<subset>.txt``, or in the file ``subset`` when that is an
    existing file (blank lines skipped)."""
    path = Path(subset) if Path(subset).is_file() else Path(root) / "ImageSets" / "2017" / f"{subset}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no DAVIS-2017 sequence list for set {subset!r} "
                                f"(expected <davis_root>/ImageSets/2017/{subset}.txt)")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def read_sequence(root: str | Path, name: str) -> DavisSequence:
    root = Path(root)
    frames = sorted((root / "JPEGImages" / RESOLUTION / name).glob("*.jpg"))
    annotations = sorted((root / "Annotations" / RESOLUTION / name).glob("*.png"))
    if not frames:
        raise FileNotFoundError(f"{root / 'JPEGImages' / RESOLUTION / name}: no .jpg frames for sequence {name!r}")
    if not annotations:
        raise FileNotFoundError(f"{root / 'Annotations' / RESOLUTION / name}: no .png annotations for "
                                f"sequence {name!r}")
    return DavisSequence(name, frames, annotations)


def read_sequences(root: str | Path, subset: str = "val") -> list[DavisSequence]:
    return [read_sequence(root, n) for n in read_sequence_names(root, subset)]


def read_index_png(path: str | Path) -> np.ndarray:
    """A single-channel index map (mode P / L / 1, or 16/32-bit grey with ids <= 255) -> ``uint8 [H, W]``;
    a colour PNG is an error (its palette indices are the object ids, an RGB rendering has lost them)."""
    with Image.open(path) as im:
        if im.mode not in ("P", "L", "1", "I", "I;16", "I;16B"):
            raise ValueError(f"{path}: mode {im.mode} PNG; DAVIS masks are single-channel index maps "
                             "(mode P with the DAVIS palette, or L)")
        arr = np.array(im)
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise ValueError(f"{path}: ids {arr.min()}..{arr.max()}; DAVIS index maps hold 0..255")
    return arr.astype(np.uint8)


def read_frame(path: str | Path) -> np.ndarray:
    """A frame as ``uint8 [H, W, 3]`` RGB."""
    with Image.open(path) as im:
        return np.array(im.convert("RGB"))


def write_index_png(index_map: np.ndarray, path: str | Path) -> None:
    """``uint8 [H, W]`` object ids -> mode-P PNG with the DAVIS palette (the results format)."""
    index_map = np.asarray(index_map)
    if index_map.ndim != 2 or index_map.min(initial=0) < 0 or index_map.max(initial=0) > 255:
        raise ValueError(f"{path}: an index map must be 2-D with ids in 0..255")
    im = Image.fromarray(index_map.astype(np.uint8))
    im.putpalette(davis_palette().flatten().tolist())  # mode L + palette -> mode P
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
