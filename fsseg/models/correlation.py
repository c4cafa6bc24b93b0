"""4D support-query correlation -> prior mask (FS-DINO sec. 3.4.1, "Dense Prompts of 4D Correlations").

Pipeline (defaults for DINOv2-B at 518, grid g=37, r=ceil(g/2)=19):

1. L2-normalise last-layer query/support features; **mask the support**: features outside the
   (area-resized) support mask are multiplied by the mask, i.e. zeroed (HSNet-style;
   ``support_masking='features'``, default). ``'none'`` keeps the unmasked volume (the paper's
   eq. (3) literally) -- then the support mask only enters through S_pcs.
2. ``S4d = Fq Fs^T``: ``[B, g*g (support), g, g (query)]`` -- each query vector unfolds its
   correlation to the whole support image, seen as channels.
3. conv1x1 g^2 -> 512, conv3x3 stride 2 512 -> r^2  => ``[B, r^2 (support), r, r (query)]``.
   GroupNorm + ReLU between the two convs and after (the paper names only the convs).
4. S1 = that tensor (query spatial x support channels): depthwise 3x3; S2 = its transpose (support
   spatial x query channels): pointwise conv (mixes query positions); transpose back; add.
5. per-channel addition of S_pcs (bilinearly resized to r x r).
6. head: resize r -> g, then two (x2 upsample, 3x3 conv, GN, ReLU) stages and a final 3x3 conv to one
   channel: prior logits at 4g x 4g (4x the *embedding* grid, 148 at 518 -- SAM's mask downscaling
   divides by 4 and must land on the image-embedding grid).

Other input sizes / aspect ratios: the conv widths are tied to ``corr_grid`` (g), so query and
support features are bilinearly resampled to g x g for the correlation and the prior is resampled
back to 4x the query's embedding grid.

K > 1 shots (``shot_fusion``): ``'mean_corr'`` (default) averages the K correlation volumes
before the convs; ``'mean_prior'`` runs the module per shot and averages the prior logits.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from fsseg.kernels.cosine_volume import bf16_cosine_volume, onednn_support_query_products

from .prompts import resize_masks

SHOT_FUSIONS = ("mean_corr", "mean_prior")
SUPPORT_MASKINGS = ("features", "none")


def _gn(c: int) -> nn.GroupNorm:
    for g in (32, 16, 8, 4, 2, 1):
        if c % g == 0:
            return nn.GroupNorm(g, c)
    return nn.GroupNorm(1, c)


def _resize(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class SupportMemo:
    """The support-side terms of a decode (the normalised, masked support features and their mean over
    the shots, the bf16 rows and their scales, prototypes), computed for one support set on its first
    query and reused by every later one (``SupportEncoding.memo``, which must then not change): they
    are the same for every query, and a third of a 5-shot decode on the CPU. Memoised only when no
    gradient is wanted: a training step computes its terms inside its own graph."""

    def __init__(self) -> None:
        self._terms: dict = {}

    def get(self, key: tuple, compute):
        if torch.is_grad_enabled():
            return compute()
        if key not in self._terms:
            self._terms[key] = compute()
        return self._terms[key]


def memoised(memo: Optional[SupportMemo], key: tuple, compute):
    """``compute()``, through ``memo`` when there is one."""
    return compute() if memo is None else memo.get(key, compute)


def correlation_volume(fq: torch.Tensor, fs: torch.Tensor, masks: torch.Tensor, g: int,
                       support_masking: str = "features", shot_mean: bool = False,
                       memo: Optional[SupportMemo] = None) -> torch.Tensor:
    """Masked cosine 4D correlation on a g x g grid: ``fq [B,C,hq,wq]``, ``fs [B,K,C,hs,ws]``,
    ``masks [B,K,H,W]`` -> ``[B,K,g*g (support),g,g (query)]``.

    ``shot_mean``: the mean over the K shots, ``[B,1,g*g,g,g]`` (``shot_fusion='mean_corr'``). The
    correlation is linear in the (normalised, masked) support features, so the mean of the K volumes
    is the volume of the mean support features: one product instead of K (K=5 at 518: 2.9 instead of
    14.4 GFLOP), equal up to fp32 rounding. ``memo``: the support set's ``SupportMemo`` (support-side
    terms computed once per support set).

    CPU inference runs the same cosines through ``fsseg.kernels.cosine_volume`` where it applies."""
    B, K, C = fs.shape[:3]
    # fp32 cosines (fsseg.precision): in bf16 (8-bit mantissa) the dot products of normalised
    # C=768 vectors round to ~0.004, the size of the differences the 4D convs read
    with torch.autocast(fq.device.type, enabled=False):
        if not (shot_mean and K > 1):
            corr = bf16_cosine_volume(fq, fs, g, lambda: _support_mask_weights(masks, g, support_masking),
                                      memo, memo_key=(B, g, support_masking))
            if corr is not None:
                return corr
        q = F.normalize(_resize(fq.float(), (g, g)), dim=1).flatten(2)  # [B,C,g*g]
        s = memoised(memo, ("support_features", B, g, support_masking, shot_mean),
                     lambda: _support_features(fs, masks, g, support_masking, shot_mean))
        corr = onednn_support_query_products(s, q)
        if corr is None:
            corr = torch.einsum("bksc,bcq->bksq", s, q)  # support positions as channels
    return corr.reshape(B, s.shape[1], g * g, g, g)


def _support_mask_weights(masks: torch.Tensor, g: int, support_masking: str) -> Optional[torch.Tensor]:
    """The support masks area-resized to the grid, ``[B*K,1,g,g]`` (None for an unmasked volume)."""
    return resize_masks(masks.flatten(0, 1), (g, g)) if support_masking == "features" else None


def _support_features(fs: torch.Tensor, masks: torch.Tensor, g: int, support_masking: str,
                      shot_mean: bool) -> torch.Tensor:
    """The support side of the volume: normalised (and masked) features on the g x g grid,
    ``[B, K (1 with shot_mean), g*g, C]`` fp32 (a support position's features contiguous)."""
    B, K, C = fs.shape[:3]
    s = F.normalize(_resize(fs.float().flatten(0, 1), (g, g)), dim=1)  # [BK,C,g,g]
    weights = _support_mask_weights(masks, g, support_masking)
    if weights is not None:
        s = s * weights.to(s.dtype)
    s = s.flatten(2).view(B, K, C, g * g)
    if shot_mean:
        s = s.mean(dim=1, keepdim=True)
    return s.transpose(2, 3).contiguous()


class CorrelationVolume(nn.Module):
    """Masked cosine 4D correlation + the paper's two reduction convs (shared by 4D and MHCM)."""

    def __init__(self, corr_grid: int = 37, mid_channels: int = 512, support_masking: str = "features"):
        super().__init__()
        if support_masking not in SUPPORT_MASKINGS:
            raise ValueError(f"support_masking must be one of {SUPPORT_MASKINGS}, got {support_masking!r}")
        self.g = corr_grid
        self.r = math.ceil(corr_grid / 2)
        self.support_masking = support_masking
        n_in, n_out = corr_grid * corr_grid, self.r * self.r
        self.reduce = nn.Sequential(
            nn.Conv2d(n_in, mid_channels, 1),
            _gn(mid_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_channels, n_out, 3, stride=2, padding=1),
            _gn(n_out),
            nn.ReLU(inplace=True),
        )

    def volume(self, fq: torch.Tensor, fs: torch.Tensor, masks: torch.Tensor, shot_mean: bool = False,
               memo: Optional[SupportMemo] = None) -> torch.Tensor:
        """``fq [B,C,hq,wq]``, ``fs [B,K,C,hs,ws]``, ``masks [B,K,H,W]`` -> ``[B,K,g*g,g,g]``
        (``[B,1,g*g,g,g]``, the mean over shots, with ``shot_mean``)."""
        return correlation_volume(fq, fs, masks, self.g, self.support_masking, shot_mean, memo)

    def forward(self, corr: torch.Tensor) -> torch.Tensor:
        """``[N, g*g, g, g]`` -> ``[N, r*r, r, r]``."""
        return self.reduce(corr)


class PriorHead(nn.Module):
    """``[N, r*r, r, r]`` -> prior logits ``[N, 1, 4g, 4g]`` by 3x3 convs with two x2 upsamplings."""

    def __init__(self, in_channels: int, corr_grid: int, channels: Tuple[int, int, int] = (256, 128, 64)):
        super().__init__()
        self.g = corr_grid
        c1, c2, c3 = channels
        self.block1 = nn.Sequential(nn.Conv2d(in_channels, c1, 3, padding=1), _gn(c1), nn.ReLU(inplace=True))
        self.block2 = nn.Sequential(nn.Conv2d(c1, c2, 3, padding=1), _gn(c2), nn.ReLU(inplace=True))
        self.block3 = nn.Sequential(nn.Conv2d(c2, c3, 3, padding=1), _gn(c3), nn.ReLU(inplace=True))
        self.out = nn.Conv2d(c3, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.g
        # channels-last: oneDNN's convolutions work in it, and torch's CPU bilinear x2 is several times
        # faster on it than on NCHW (bf16 NCHW is the slowest: 74->148, 128 channels, 7.8 vs 1.6 ms)
        x = x.contiguous(memory_format=torch.channels_last)
        x = self.block1(_resize(x, (g, g)))
        x = self.block2(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
        x = self.block3(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
        return self.out(x)


def swap_query_support(x: torch.Tensor) -> torch.Tensor:
    """``[N, S (support), rq, rq]`` <-> ``[N, Q (query), rs, rs]`` (square grids of r*r)."""
    n, c, h, w = x.shape
    r = int(round(math.sqrt(c)))
    return x.flatten(2).transpose(1, 2).reshape(n, h * w, r, r)


class Correlation4D(nn.Module):
    """Prior-mask generator from the 4D correlation (see module docstring)."""

    def __init__(
        self,
        corr_grid: int = 37,
        mid_channels: int = 512,
        head_channels: Tuple[int, int, int] = (256, 128, 64),
        shot_fusion: str = "mean_corr",
        support_masking: str = "features",
    ):
        super().__init__()
        if shot_fusion not in SHOT_FUSIONS:
            raise ValueError(f"shot_fusion must be one of {SHOT_FUSIONS}, got {shot_fusion!r}")
        self.shot_fusion = shot_fusion
        self.corr = CorrelationVolume(corr_grid, mid_channels, support_masking)
        r2 = self.corr.r ** 2
        self.depthwise = nn.Conv2d(r2, r2, 3, padding=1, groups=r2)  # S1: query spatial, support channels
        self.pointwise = nn.Conv2d(r2, r2, 1)  # S2: support spatial, query channels
        self.head = PriorHead(r2, corr_grid, tuple(head_channels))

    @property
    def corr_grid(self) -> int:
        return self.corr.g

    def mix(self, x: torch.Tensor, sim: torch.Tensor) -> torch.Tensor:
        s1 = self.depthwise(x)
        s2 = swap_query_support(self.pointwise(swap_query_support(x)))
        return s1 + s2 + _resize(sim, x.shape[-2:])  # per-channel addition of S_pcs

    def forward(self, fq: torch.Tensor, fs: torch.Tensor, support_masks: torch.Tensor, sim: torch.Tensor,
                memo: Optional[SupportMemo] = None) -> torch.Tensor:
        """``fq [B,C,hq,wq]``, ``fs [B,K,C,hs,ws]``, ``support_masks [B,K,H,W]``, ``sim`` = S_pcs
        ``[B,1,hq,wq]`` -> prior logits ``[B,1,4hq,4wq]``. ``memo``: the support set's ``SupportMemo``."""
        B, K = fs.shape[:2]
        mean_corr = self.shot_fusion == "mean_corr"
        vol = self.corr.volume(fq, fs, support_masks, shot_mean=mean_corr, memo=memo)  # [B,K (1 if mean_corr),g2,g,g]
        if mean_corr:
            x = self.corr(vol[:, 0])
            prior = self.head(self.mix(x, sim))
        else:
            x = self.corr(vol.flatten(0, 1))
            prior = self.head(self.mix(x, sim.repeat_interleave(K, dim=0)))
            prior = prior.view(B, K, *prior.shape[1:]).mean(dim=1)
        return _resize(prior, (4 * fq.shape[-2], 4 * fq.shape[-1]))
