"""Frozen SAM image encoder used as the distillation teacher.

Architectures from the backbone table (``fsseg.models.backbones.TEACHERS``: segment-anything
``build_sam.py``'s vit_h / vit_l / vit_b, and ``tiny`` for tests). Loads the ``image_encoder.*`` keys
of an official SAM checkpoint (plain state dict) strictly.

Input handling (``forward``): images ``[B,3,H,W]`` in ``[0,1]``, any size. As SAM's
``ResizeLongestSide`` + ``Sam.preprocess`` (``segment_anything/utils/transforms.py:94-102``,
``modeling/sam.py:164-174``): the longest side is resized to ``img_size`` with SAM's rounding
``int(x + 0.5)`` (bilinear, antialiased: ``apply_image_torch``), the image is normalised with SAM's
pixel mean/std and zero-padded at the bottom/right to ``img_size x img_size``. For square inputs this
is a plain resize. ``forward_padded`` takes images already resized and padded by the data (the
exact ``apply_image`` PIL resize, see ``data_modules.transforms.sam_longest_side``) with their valid
sizes. Output ``[B, out_chans, img_size/16, img_size/16]`` (256 x 64 x 64 for official models);
``valid_embedding_size`` says which part of it covers the image.
"""
from __future__ import annotations

import hashlib
from functools import partial
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import TEACHERS
from .weights import load_state_dict_file, resolve_checkpoint, strict_load

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


def build_sam_image_encoder(variant: str = "vit_h", **overrides) -> nn.Module:
    """segment-anything's ``ImageEncoderViT`` for a ``TEACHERS`` name; ``overrides`` change its arguments."""
    from segment_anything.modeling import ImageEncoderViT

    cfg = TEACHERS.get(variant).kwargs(**overrides)
    return ImageEncoderViT(norm_layer=partial(nn.LayerNorm, eps=1e-6), **cfg)


def extract_prefixed(state_dict: dict, prefix: str) -> dict:
    """Keys of ``state_dict`` under ``prefix`` (prefix stripped); the dict itself if none match."""
    sub = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    return sub


class SAMImageEncoder(nn.Module):
    def __init__(
        self,
        variant: str = "vit_h",
        checkpoint: Optional[str] = None,
        sha256: Optional[str] = None,
        cache_dir: Optional[str] = None,
        **overrides,
    ):
        super().__init__()
        self.variant = variant
        self.encoder = build_sam_image_encoder(variant, **overrides)
        self.img_size = self.encoder.img_size
        cfg = TEACHERS.get(variant).kwargs(**overrides)
        self.out_chans = cfg["out_chans"]
        self.embed_dim = cfg["embed_dim"]
        self.depth = cfg["depth"]
        self.patch_size = cfg["patch_size"]
        self.register_buffer("pixel_mean", torch.tensor(SAM_PIXEL_MEAN).view(1, 3, 1, 1) / 255.0, persistent=False)
        self.register_buffer("pixel_std", torch.tensor(SAM_PIXEL_STD).view(1, 3, 1, 1) / 255.0, persistent=False)
        self._weights_id: Optional[str] = None
        self.checkpoint_path = None
        if checkpoint is not None:
            self.load_checkpoint(checkpoint, sha256=sha256, cache_dir=cache_dir)
        self.requires_grad_(False)
        self.eval()

    @property
    def embedding_size(self) -> int:
        return self.img_size // self.patch_size

    def load_checkpoint(self, path_or_url: str, sha256: Optional[str] = None, cache_dir: Optional[str] = None):
        path = resolve_checkpoint(path_or_url, sha256=sha256, cache_dir=cache_dir)
        sd = load_state_dict_file(path)
        sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
        sub = extract_prefixed(sd, "image_encoder.")
        strict_load(self.encoder, sub if sub else sd, source=str(path))
        self.checkpoint_path = str(path)
        self._weights_id = None
        return self

    def train(self, mode: bool = True):  # always frozen
        return super().train(False)

    @property
    def fingerprint(self) -> str:
        """Architecture + sha256 of the weights (first 16 hex): a cache key for teacher embeddings."""
        if self._weights_id is None:
            h = hashlib.sha256()
            for k, v in sorted(self.encoder.state_dict().items()):
                h.update(k.encode())
                h.update(v.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
            self._weights_id = h.hexdigest()[:16]
        return (
            f"sam-{self.variant}-img{self.img_size}-d{self.embed_dim}-L{self.depth}-out{self.out_chans}"
            f"-w{self._weights_id}"
        )

    def input_size(self, h: int, w: int) -> tuple[int, int]:
        return sam_preprocess_shape(h, w, self.img_size)

    def valid_embedding_size(self, h: int, w: int) -> tuple[int, int]:
        """Embedding rows/columns holding image content for an ``h x w`` original (ceil: the last
        row/column may be partly padding)."""
        nh, nw = self.input_size(h, w)
        return -(-nh // self.patch_size), -(-nw // self.patch_size)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        nh, nw = self.input_size(*images.shape[-2:])
        x = images
        if (nh, nw) != tuple(images.shape[-2:]):
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
        x = (x - self.pixel_mean) / self.pixel_std
        return F.pad(x, (0, self.img_size - nw, 0, self.img_size - nh))

    def preprocess_padded(self, images: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``images [B,3,S,S]`` holding ``valid [B,2]`` (h, w) of content at the top left -> SAM input.
        The content is resized again only when ``S`` is not the teacher's size."""
        out = []
        for img, (h, w) in zip(images, valid.tolist()):
            out.append(self.preprocess(img[None, :, :h, :w]))
        return torch.cat(out)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.preprocess(images))

    def forward_padded(self, images: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.preprocess_padded(images, valid))


def sam_preprocess_shape(h: int, w: int, long_side: int) -> tuple[int, int]:
    """``ResizeLongestSide.get_preprocess_shape`` (segment_anything/utils/transforms.py:94-102)."""
    scale = long_side * 1.0 / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)
