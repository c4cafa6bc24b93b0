"""Bottleneck adapter (BA), FS-DINO sec. 3.3.1: DINOv2 block-3 features -> SAM-like image embedding.

conv1x1 in->256, conv3x3 256->256, conv1x1 256->128, two self-attention blocks (dim 128, FFN 512,
structure of "Attention is all you need": post-norm residual MHA + FFN, ReLU), conv1x1 128->256.
At in_dim=768 this is 1,249,408 parameters (the paper's "~1.25M"), derived from the architecture.

Positional signal (paper silent): self-attention is permutation-equivariant and the only
positional cue would be the conv3x3's zero-padding at the borders, while SAM's embedding (the
distillation target) is strongly position-aware. We therefore add a parameter-free 2-D sine
encoding (DETR-style) to queries and keys of each attention block (``pos_encoding='sine'``,
default; ``'none'`` disables it). It adds no parameters and works at any grid size.
Activations between the convs: none in the paper's description; we use GELU after the first two
convs (``conv_act=True``) as a bottleneck normally has non-linearities; set ``conv_act=False`` for a
purely linear conv stem. ``pos_encoding='none', conv_act=False`` is the paper's adapter taken
literally (``fsseg.models.build.PAPER_LITERAL_ADAPTER``); both forms have the same parameters and
state-dict keys (``nn.Identity`` holds the activations' places), so only the computation differs --
which is why stage 2 takes these settings from the stage-1 checkpoint.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from fsseg.kernels.cpu_attention import cpu_multihead_attention


def sine_pos_2d(h: int, w: int, dim: int, device=None, dtype=None, temperature: float = 10000.0) -> torch.Tensor:
    """Parameter-free 2-D sine/cosine position encoding ``[h*w, dim]`` (dim divisible by 4)."""
    if dim % 4:
        raise ValueError(f"sine position encoding needs dim divisible by 4, got {dim}")
    y, x = torch.meshgrid(
        torch.arange(h, device=device, dtype=torch.float32),
        torch.arange(w, device=device, dtype=torch.float32),
        indexing="ij",
    )
    # normalise to [0, 2pi] so the encoding is resolution independent
    y = y / max(h, 1) * 2 * math.pi
    x = x / max(w, 1) * 2 * math.pi
    d = dim // 4
    omega = 1.0 / temperature ** (torch.arange(d, device=device, dtype=torch.float32) / d)
    oy = y.flatten()[:, None] * omega[None] * 10
    ox = x.flatten()[:, None] * omega[None] * 10
    pe = torch.cat([oy.sin(), oy.cos(), ox.sin(), ox.cos()], dim=1)
    return pe.to(dtype) if dtype is not None else pe


class SelfAttentionBlock(nn.Module):
    """Transformer encoder layer of Vaswani et al. (post-norm by default; ``norm_first`` for pre-norm)."""

    def __init__(self, dim: int = 128, num_heads: int = 8, mlp_dim: int = 512, dropout: float = 0.0, norm_first: bool = False):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(mlp_dim, dim))
        self.norm2 = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.norm_first = norm_first

    def _sa(self, x, pos):
        qk = x if pos is None else x + pos
        # CPU inference runs the same attention in fsseg.kernels (fsseg/kernels/cpu_attention.py)
        out = cpu_multihead_attention(self.attn, qk, x)
        if out is None:
            out = self.attn(qk, qk, x, need_weights=False)[0]
        return self.drop(out)

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        if self.norm_first:
            x = x + self._sa(self.norm1(x), pos)
            x = x + self.drop(self.mlp(self.norm2(x)))
        else:
            x = self.norm1(x + self._sa(x, pos))
            x = self.norm2(x + self.drop(self.mlp(x)))
        return x


class BottleneckAdapter(nn.Module):
    """``[B,in_dim,h,w] -> [B,out_dim,h,w]``."""

    def __init__(
        self,
        in_dim: int = 768,
        out_dim: int = 256,
        mid_dim: int = 256,
        bottleneck_dim: int = 128,
        num_blocks: int = 2,
        num_heads: int = 8,
        mlp_dim: int = 512,
        dropout: float = 0.0,
        norm_first: bool = False,
        pos_encoding: str = "sine",
        conv_act: bool = True,
    ):
        super().__init__()
        if pos_encoding not in ("sine", "none"):
            raise ValueError(f"pos_encoding must be 'sine' or 'none', got {pos_encoding!r}")
        self.in_dim, self.out_dim = in_dim, out_dim
        self.pos_encoding = pos_encoding
        act = nn.GELU if conv_act else nn.Identity
        self.reduce = nn.Sequential(
            nn.Conv2d(in_dim, mid_dim, 1),
            act(),
            nn.Conv2d(mid_dim, mid_dim, 3, padding=1),
            act(),
            nn.Conv2d(mid_dim, bottleneck_dim, 1),
        )
        self.blocks = nn.ModuleList(
            SelfAttentionBlock(bottleneck_dim, num_heads, mlp_dim, dropout, norm_first) for _ in range(num_blocks)
        )
        self.expand = nn.Conv2d(bottleneck_dim, out_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reduce(x)
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        pos = sine_pos_2d(h, w, c, x.device, x.dtype)[None] if self.pos_encoding == "sine" else None
        for blk in self.blocks:
            t = blk(t, pos)
        x = t.transpose(1, 2).reshape(b, c, h, w)
        return self.expand(x)
