"""UINO-FSS: Mamba-HyperCorrelation Module (MHCM) + Contrastive Enhancement (CE).

The UINO-FSS text available to us (seed 002) only gives the abstract and figure captions: "MHCM
stacks two Hierarchical Global Modeling Blocks (HGMB), which process 4D volumetric correlation
while maintaining high efficiency" and "a Mamba-based 4D hypercorrelation module and contrastive
enhancement generate robust dense prompts". Our reading, a drop-in replacement for
``Correlation4D`` (same inputs, same prior-mask output):

* the 4D volume is built and reduced exactly as in FS-DINO (``CorrelationVolume``: masked cosine
  correlation, conv1x1 g^2->512, conv3x3/2 512->r^2), giving ``[B, r^2 (support), r, r (query)]``;
* **ContrastiveEnhancement**: foreground prototype p_fg (MAP inside the support mask) and
  background prototype p_bg (MAP outside it, shots averaged); the contrast map
  ``cos(Fq, p_fg) - cos(Fq, p_bg)`` (scaled by a learnable scalar, init 1) is added to the PCS
  similarity, and this enhanced similarity is added per channel to the reduced volume *before*
  the MHCM (as S_pcs is in FS-DINO). If the support mask covers the whole image the background
  prototype falls back to the global average (contrast ~0 there);
* **HGMB** (hierarchical: local -> global over query -> global over support), each with residual:
  depthwise 3x3 conv over the query grid; LayerNorm + Mamba scan along the query positions
  (sequence length r^2, features = support positions); LayerNorm + Mamba scan along the support
  positions (sequence length r^2, features = query positions). Two HGMBs are stacked;
* the same ``PriorHead`` (3x3 convs, x4 up to 4g) produces prior logits.

Mamba layers use ``MambaLayer`` (``backend='auto'|'torch'|'cuda'``: mambapy's parallel scan on CPU,
mamba-ssm's kernels on CUDA when installed).
K > 1 shots: correlation volumes are averaged (``'mean_corr'``) or priors averaged (``'mean_prior'``).

Two sizes (``fsseg params`` lists both; DINOv2-B at 518):

* ``CompactMambaHyperCorrelation`` (variant ``uino``, default): within the paper's budget (seed 002,
  Fig. 1: the whole segmenter -- adapter, prompts, MHCM, decoder -- is 5.6M). The 4D volume is
  reduced *without* parameters (support grid average-pooled to s x s = 8 x 8 = 64 channels, query
  grid to r x r), so the Mamba layers have d_model = 64; the support-direction scan runs over the
  64 support positions with the query grid pooled to s x s as features and is upsampled back; a
  light head (3x3 conv 64->16, GN, ReLU, x4 upsampling, 3x3 conv 16->1). 76,482 parameters
  (segmenter 5.59M).
* ``MambaHyperCorrelation`` (variant ``uino_large``, fsseg's first reading): FS-DINO's 2.37M
  reduction convs and 1.2M prior head around Mamba layers of d_model = r^2 = 361 (5.29M).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .correlation import (
    SHOT_FUSIONS,
    SUPPORT_MASKINGS,
    CorrelationVolume,
    PriorHead,
    SupportMemo,
    _gn,
    _resize,
    correlation_volume,
    memoised,
    swap_query_support,
)
from .mamba import MambaLayer
from .prompts import masked_average_pool


class ContrastiveEnhancement(nn.Module):
    """``cos(Fq, p_fg) - cos(Fq, p_bg)`` added (scaled by a learnable ``alpha``) to the PCS map."""

    def __init__(self, alpha_init: float = 1.0):
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))

    def forward(self, fq: torch.Tensor, fs: torch.Tensor, support_masks: torch.Tensor, sim: torch.Tensor,
                memo: Optional[SupportMemo] = None) -> torch.Tensor:
        p_fg, p_bg = memoised(memo, ("contrast_prototypes", fs.shape[0]), lambda: self.prototypes(fs, support_masks))
        c_fg = F.cosine_similarity(fq, p_fg[:, :, None, None], dim=1)
        c_bg = F.cosine_similarity(fq, p_bg[:, :, None, None], dim=1)
        return sim + self.alpha * (c_fg - c_bg).unsqueeze(1)

    @staticmethod
    def prototypes(fs: torch.Tensor, support_masks: torch.Tensor):
        """Foreground and background prototypes ``[B,C]`` (masked average pools, mean over shots)."""
        B, K = fs.shape[:2]
        flat = fs.flatten(0, 1)
        m = support_masks.flatten(0, 1).float()
        p_fg = masked_average_pool(flat, m, allow_empty=True).view(B, K, -1).mean(1)
        p_bg = masked_average_pool(flat, 1.0 - m, allow_empty=True).view(B, K, -1).mean(1)
        return p_fg, p_bg


class HierarchicalGlobalModelingBlock(nn.Module):
    """Local (depthwise 3x3 over query grid) -> Mamba over query positions -> Mamba over support positions."""

    def __init__(self, r2: int, backend: str = "auto", d_state: int = 16, d_conv: int = 4, expand: int = 1):
        super().__init__()
        self.local = nn.Conv2d(r2, r2, 3, padding=1, groups=r2)
        self.norm_q = nn.LayerNorm(r2)
        self.scan_q = MambaLayer(r2, backend=backend, d_state=d_state, d_conv=d_conv, expand=expand)
        self.norm_s = nn.LayerNorm(r2)
        self.scan_s = MambaLayer(r2, backend=backend, d_state=d_state, d_conv=d_conv, expand=expand)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, S, r, r]`` (support channels, query grid) -> same shape."""
        n, c, h, w = x.shape
        x = x + self.local(x)
        t = x.flatten(2).transpose(1, 2)  # [N, Q, S]: sequence over query positions
        t = t + self.scan_q(self.norm_q(t))
        t = t.transpose(1, 2)  # [N, S, Q]: sequence over support positions
        t = t + self.scan_s(self.norm_s(t))
        return t.reshape(n, c, h, w)


class _ShotFusedMHCM(nn.Module):
    """``forward`` of both MHCM sizes: contrastive enhancement, 4D volume, shot fusion, prior.
    Subclasses provide ``contrast``, ``volume``, ``reduce`` and ``_run``."""

    def __init__(self, shot_fusion: str) -> None:
        super().__init__()
        if shot_fusion not in SHOT_FUSIONS:
            raise ValueError(f"shot_fusion must be one of {SHOT_FUSIONS}, got {shot_fusion!r}")
        self.shot_fusion = shot_fusion

    def forward(self, fq: torch.Tensor, fs: torch.Tensor, support_masks: torch.Tensor, sim: torch.Tensor,
                memo: Optional[SupportMemo] = None) -> torch.Tensor:
        """As ``Correlation4D.forward`` (``memo``: the support set's ``SupportMemo``)."""
        B, K = fs.shape[:2]
        if self.contrast is not None:
            sim = self.contrast(fq, fs, support_masks, sim, memo)
        mean_corr = self.shot_fusion == "mean_corr"
        vol = self.volume(fq, fs, support_masks, shot_mean=mean_corr, memo=memo)
        if mean_corr:
            prior = self._run(self.reduce(vol[:, 0]), sim)
        else:
            prior = self._run(self.reduce(vol.flatten(0, 1)), sim.repeat_interleave(K, dim=0))
            prior = prior.view(B, K, *prior.shape[1:]).mean(dim=1)
        return _resize(prior, (4 * fq.shape[-2], 4 * fq.shape[-1]))


class MambaHyperCorrelation(_ShotFusedMHCM):
    """MHCM: drop-in replacement for ``Correlation4D`` (same ``forward`` signature/output)."""

    def __init__(
        self,
        corr_grid: int = 37,
        mid_channels: int = 512,
        head_channels: Tuple[int, int, int] = (256, 128, 64),
        shot_fusion: str = "mean_corr",
        support_masking: str = "features",
        num_blocks: int = 2,
        backend: str = "auto",
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 1,
        contrastive: bool = True,
    ):
        super().__init__(shot_fusion)
        self.corr = CorrelationVolume(corr_grid, mid_channels, support_masking)
        r2 = self.corr.r ** 2
        self.contrast = ContrastiveEnhancement() if contrastive else None
        self.blocks = nn.ModuleList(
            HierarchicalGlobalModelingBlock(r2, backend, d_state, d_conv, expand) for _ in range(num_blocks)
        )
        self.head = PriorHead(r2, corr_grid, tuple(head_channels))

    @property
    def corr_grid(self) -> int:
        return self.corr.g

    def volume(self, fq: torch.Tensor, fs: torch.Tensor, support_masks: torch.Tensor, shot_mean: bool = False,
               memo: Optional[SupportMemo] = None) -> torch.Tensor:
        return self.corr.volume(fq, fs, support_masks, shot_mean, memo)

    def reduce(self, vol: torch.Tensor) -> torch.Tensor:
        return self.corr(vol)

    def _run(self, x: torch.Tensor, sim: torch.Tensor) -> torch.Tensor:
        x = x + _resize(sim, x.shape[-2:])
        for blk in self.blocks:
            x = blk(x)
        return self.head(x)


class CompactGlobalModelingBlock(nn.Module):
    """HGMB on ``[N, S, r, r]`` with S = s*s support cells: local depthwise 3x3 over the query grid,
    Mamba over the query positions (features = support cells), Mamba over the support cells
    (features = query grid pooled to s x s, upsampled back), each residual."""

    def __init__(self, support_grid: int, backend: str = "auto", d_state: int = 16, d_conv: int = 4, expand: int = 1):
        super().__init__()
        S = support_grid * support_grid
        self.s = support_grid
        self.local = nn.Conv2d(S, S, 3, padding=1, groups=S)
        self.norm_q = nn.LayerNorm(S)
        self.scan_q = MambaLayer(S, backend=backend, d_state=d_state, d_conv=d_conv, expand=expand)
        self.norm_s = nn.LayerNorm(S)
        self.scan_s = MambaLayer(S, backend=backend, d_state=d_state, d_conv=d_conv, expand=expand)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        x = x + self.local(x)
        t = x.flatten(2).transpose(1, 2)  # [N, Q, S]: sequence over query positions
        x = (t + self.scan_q(self.norm_q(t))).transpose(1, 2).reshape(n, c, h, w)
        p = F.adaptive_avg_pool2d(x, self.s).flatten(2)  # [N, S, s*s]: sequence over support cells
        u = self.scan_s(self.norm_s(p)).view(n, c, self.s, self.s)
        return x + F.interpolate(u, size=(h, w), mode="bilinear", align_corners=False)


class CompactMambaHyperCorrelation(_ShotFusedMHCM):
    """MHCM within UINO-FSS's parameter budget (module docstring); same ``forward`` as ``Correlation4D``."""

    def __init__(
        self,
        corr_grid: int = 37,
        support_grid: int = 8,
        head_channels: int = 16,
        shot_fusion: str = "mean_corr",
        support_masking: str = "features",
        num_blocks: int = 2,
        backend: str = "auto",
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 1,
        contrastive: bool = True,
    ):
        super().__init__(shot_fusion)
        if support_masking not in SUPPORT_MASKINGS:
            raise ValueError(f"support_masking must be one of {SUPPORT_MASKINGS}, got {support_masking!r}")
        self.g, self.r, self.s = corr_grid, math.ceil(corr_grid / 2), support_grid
        self.support_masking = support_masking
        S = support_grid * support_grid
        self.contrast = ContrastiveEnhancement() if contrastive else None
        self.blocks = nn.ModuleList(
            CompactGlobalModelingBlock(support_grid, backend, d_state, d_conv, expand) for _ in range(num_blocks))
        self.head = nn.Sequential(nn.Conv2d(S, head_channels, 3, padding=1), _gn(head_channels), nn.ReLU(inplace=True))
        self.out = nn.Conv2d(head_channels, 1, 3, padding=1)

    @property
    def corr_grid(self) -> int:
        return self.g

    def volume(self, fq: torch.Tensor, fs: torch.Tensor, support_masks: torch.Tensor, shot_mean: bool = False,
               memo: Optional[SupportMemo] = None) -> torch.Tensor:
        return correlation_volume(fq, fs, support_masks, self.g, self.support_masking, shot_mean, memo)

    def reduce(self, vol: torch.Tensor) -> torch.Tensor:
        """``[N, g*g (support), g, g (query)]`` -> ``[N, s*s, r, r]`` by average pooling (no parameters)."""
        n, g = vol.shape[0], self.g
        x = vol.view(n, g, g, g * g).permute(0, 3, 1, 2)  # [N, Q, gs, gs]
        x = F.adaptive_avg_pool2d(x, self.s).flatten(2).transpose(1, 2)  # [N, S, Q]
        return F.adaptive_avg_pool2d(x.reshape(n, -1, g, g), self.r)

    def _run(self, x: torch.Tensor, sim: torch.Tensor) -> torch.Tensor:
        x = x + _resize(sim, x.shape[-2:])  # per-channel addition of the (enhanced) PCS map
        for blk in self.blocks:
            x = blk(x)
        x = self.head(_resize(x, (self.g, self.g)))
        return self.out(F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False))


__all__ = ["MambaHyperCorrelation", "CompactMambaHyperCorrelation", "HierarchicalGlobalModelingBlock", "ContrastiveEnhancement", "swap_query_support"]
