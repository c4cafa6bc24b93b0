"""Prompt-side building blocks of the Meta-Visual Prompt Generator (FS-DINO sec. 3.4.1) and SAM's
prompt-encoder parts that FS-DINO reuses (learnable random-Fourier PE, mask downscaling).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from segment_anything.modeling.common import LayerNorm2d
from torch import nn


def resize_masks(masks: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """``[N,H,W]`` (0/1, any dtype) -> ``[N,1,h,w]`` float soft masks by area averaging
    (adaptive average pooling: any non-empty mask keeps a non-zero sum on the grid)."""
    m = masks.float().unsqueeze(1)
    if tuple(m.shape[-2:]) == tuple(size):
        return m
    return F.interpolate(m, size=size, mode="area")


def masked_average_pool(
    feats: torch.Tensor, masks: torch.Tensor, allow_empty: bool = False, eps: float = 1e-6, name: str = "support mask"
) -> torch.Tensor:
    """Masked average pooling (MAP): ``feats [N,C,h,w]``, ``masks [N,H,W]`` -> ``[N,C]``.

    Masks are area-resized to the feature grid. An empty mask raises ``ValueError`` naming its
    index, unless ``allow_empty`` (then that row falls back to the global average).
    """
    if feats.dim() != 4 or masks.dim() != 3 or feats.shape[0] != masks.shape[0]:
        raise ValueError(f"masked_average_pool expects feats [N,C,h,w] and masks [N,H,W], got {tuple(feats.shape)} and {tuple(masks.shape)}")
    m = resize_masks(masks, feats.shape[-2:]).to(feats.dtype)
    area = m.sum(dim=(2, 3))  # [N,1]
    empty = area[:, 0] <= eps
    if bool(empty.any()):
        if not allow_empty:
            idx = empty.nonzero().flatten().tolist()
            raise ValueError(f"{name} is empty (no foreground pixel) at index {idx}: cannot build a prototype")
        m = torch.where(empty.view(-1, 1, 1, 1), torch.ones_like(m), m)
        area = m.sum(dim=(2, 3))
    return (feats * m).sum(dim=(2, 3)) / area


class PrototypeSimilarity(nn.Module):
    """Parameter-free PCS: ``S_pcs(i,j) = cos(p, F_q(i,j))``, eq. (2).

    The prototype is the masked average (MAP) of the support's last-layer features; for K shots the
    per-shot prototypes are averaged (each shot weighs the same whatever its mask area).
    """

    def __init__(self, eps: float = 1e-6):
        super().__init__()
        self.eps = eps

    @staticmethod
    def prototype(shot_prototypes: torch.Tensor) -> torch.Tensor:
        """``[B,K,C]`` per-shot MAP vectors -> ``[B,C]``."""
        return shot_prototypes.mean(dim=1)

    def forward(self, query_feats: torch.Tensor, prototype: torch.Tensor) -> torch.Tensor:
        """``query_feats [B,C,h,w]``, ``prototype [B,C]`` -> ``[B,1,h,w]`` in [-1, 1]."""
        return F.cosine_similarity(query_feats, prototype[:, :, None, None], dim=1, eps=self.eps).unsqueeze(1)


class SemanticVisualPrompt(nn.Module):
    """SVP: support features projected to the decoder dim and masked-averaged -> sparse prompt tokens.

    Projection and masked averaging commute for a linear layer, so we pool first (cheaper) and
    project the per-shot MAP vectors: one token per shot; with ``per_shot_tokens=False`` (default,
    the paper's "average them to a vector") the K tokens are averaged into one.
    ``hidden_dim`` switches to a 2-layer MLP (then the order matters: pool -> MLP).
    """

    def __init__(self, in_dim: int, out_dim: int = 256, hidden_dim: Optional[int] = None, per_shot_tokens: bool = False):
        super().__init__()
        self.per_shot_tokens = per_shot_tokens
        if hidden_dim:
            self.proj = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim))
        else:
            self.proj = nn.Linear(in_dim, out_dim)

    def forward(self, shot_prototypes: torch.Tensor) -> torch.Tensor:
        """``[B,K,C]`` -> ``[B,K,D]`` if ``per_shot_tokens`` else ``[B,1,D]``."""
        tok = self.proj(shot_prototypes)
        return tok if self.per_shot_tokens else tok.mean(dim=1, keepdim=True)


class RandomFourierPositionEncoding(nn.Module):
    """SAM's ``PositionEmbeddingRandom`` with a *learnable* Gaussian matrix (FS-DINO sec. 3.4.2).

    Parameter name ``positional_encoding_gaussian_matrix`` ([2, num_pos_feats]) so it loads from
    ``prompt_encoder.pe_layer.positional_encoding_gaussian_matrix`` of a SAM checkpoint.
    """

    def __init__(self, num_pos_feats: int = 128, scale: Optional[float] = None, learnable: bool = True):
        super().__init__()
        scale = 1.0 if scale is None or scale <= 0 else scale
        self.positional_encoding_gaussian_matrix = nn.Parameter(scale * torch.randn(2, num_pos_feats), requires_grad=learnable)

    def _pe_encoding(self, coords: torch.Tensor) -> torch.Tensor:
        coords = 2 * coords - 1
        coords = coords @ self.positional_encoding_gaussian_matrix
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def forward(self, size: Tuple[int, int]) -> torch.Tensor:
        """``(h, w)`` -> ``[2*num_pos_feats, h, w]`` (same grid convention as SAM)."""
        h, w = size
        device = self.positional_encoding_gaussian_matrix.device
        grid = torch.ones((h, w), device=device, dtype=torch.float32)
        y = (grid.cumsum(dim=0) - 0.5) / h
        x = (grid.cumsum(dim=1) - 0.5) / w
        return self._pe_encoding(torch.stack([x, y], dim=-1)).permute(2, 0, 1)


class MaskDownscaling(nn.Module):
    """SAM prompt-encoder mask downscaling: ``[B,1,4h,4w]`` mask logits -> ``[B,embed_dim,h,w]``.

    Same layer layout and names as SAM (``mask_downscaling.*``; ``no_mask_embed`` optional) so it
    loads from ``prompt_encoder.mask_downscaling.*``. ``no_mask_embed`` is off by default: every
    FS-DINO variant has a dense prompt, and a never-used trainable parameter would upset DDP.
    """

    def __init__(self, embed_dim: int = 256, mask_in_chans: int = 16, with_no_mask_embed: bool = False):
        super().__init__()
        self.embed_dim = embed_dim
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim) if with_no_mask_embed else None

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        return self.mask_downscaling(masks)

    def empty(self, batch: int, size: Tuple[int, int]) -> torch.Tensor:
        if self.no_mask_embed is None:
            raise RuntimeError("MaskDownscaling built without no_mask_embed")
        return self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, *size)
