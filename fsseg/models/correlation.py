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
    terms computed once per support set)."""
    B, K, C = fs.shape[:3]
    # fp32 cosines (fsseg.precision): in bf16 (8-bit mantissa) the dot products of normalised
    # C=768 vectors round to ~0.004, the size of the differences the 4D convs read
    with torch.autocast(fq.device.type, enabled=False):
        if not (shot_mean and K > 1):
            corr = _bf16_cosine_volume(fq, fs, masks, g, support_masking, memo) if _bf16_dot_applies(fq, fs, g) else None
            if corr is not None:
                return corr
        q = F.normalize(_resize(fq.float(), (g, g)), dim=1).flatten(2)  # [B,C,g*g]
        s = memoised(memo, ("support_features", B, g, support_masking, shot_mean),
                     lambda: _support_features(fs, masks, g, support_masking, shot_mean))
        corr = _support_query_products(s, q)  # support positions as channels
    return corr.reshape(B, s.shape[1], g * g, g, g)


def _support_query_products(s: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``s [B,K,S,C]``, ``q [B,C,Q]`` fp32 -> ``[B,K,S,Q]``. CPU inference: oneDNN's fp32 matmul, whose
    ``[Q, K*S]`` result is the volume with its channels (support positions) last in memory, the layout
    the reduction convs read best (torch's bmm is MKL's sgemm, which on AMD CPUs runs at about half the
    cores' fp32 rate: 26 vs 14 ms for one 1369 x 768 x 1369 product here). Elsewhere ``einsum``."""
    from .onednn_linear import cpu_inference_call, onednn_linear_available, onednn_matmul

    if not (onednn_linear_available() and cpu_inference_call(q, s) and q.dtype == s.dtype == torch.float32):
        return torch.einsum("bksc,bcq->bksq", s, q)
    B, K, S, C = s.shape
    out = torch.stack([onednn_matmul(q[b].t().contiguous(), s[b].reshape(K * S, C)) for b in range(B)])  # [B, Q, K*S]
    return out.view(B, -1, K, S).permute(0, 2, 3, 1)


def _support_features(fs: torch.Tensor, masks: torch.Tensor, g: int, support_masking: str,
                      shot_mean: bool) -> torch.Tensor:
    """The support side of the fp32 volume: normalised (and masked) features on the g x g grid,
    ``[B, K (1 with shot_mean), g*g, C]`` fp32 (a support position's features contiguous)."""
    B, K, C = fs.shape[:3]
    s = F.normalize(_resize(fs.float().flatten(0, 1), (g, g)), dim=1)  # [BK,C,g,g]
    if support_masking == "features":
        s = s * resize_masks(masks.flatten(0, 1), (g, g)).to(s.dtype)
    s = s.flatten(2).view(B, K, C, g * g)
    if shot_mean:
        s = s.mean(dim=1, keepdim=True)
    return s.transpose(2, 3).contiguous()


def _bf16_dot_applies(fq: torch.Tensor, fs: torch.Tensor, g: int) -> bool:
    """CPU features already on the g x g grid, no gradient wanted, AVX512-BF16 kernels here: try
    ``_bf16_cosine_volume`` (which still checks that the values are bf16 numbers)."""
    if fq.device.type != "cpu" or fq.shape[1] % 2 or fq.dtype not in (torch.float32, torch.bfloat16):
        return False
    if tuple(fq.shape[-2:]) != (g, g) or tuple(fs.shape[-2:]) != (g, g):
        return False
    if torch.is_grad_enabled() and (fq.requires_grad or fs.requires_grad):
        return False
    from fsseg.kernels import cpu_kernels_status

    return cpu_kernels_status()[0]


def _as_bf16_exactly(x: torch.Tensor) -> Optional[torch.Tensor]:
    """``x`` in bf16 if every value is a bf16 number (features of an encoder that ran in bf16, upcast
    to fp32 by the decoder), else None: rounding would change the cosines."""
    if x.dtype == torch.bfloat16:
        return x
    y = x.to(torch.bfloat16)
    return y if torch.equal(y.to(x.dtype), x) else None


def _bf16_cosine_volume(fq: torch.Tensor, fs: torch.Tensor, masks: torch.Tensor, g: int,
                        support_masking: str, memo: Optional[SupportMemo] = None) -> Optional[torch.Tensor]:
    """``correlation_volume`` for features whose values are bf16 numbers, the same numbers as its
    fp32 path: their dot products are summed in fp32 by ``fsseg.kernels.bf16_scaled_dot`` at the bf16
    matmul rate, then scaled by 1 / max(|f|, 1e-12) (``F.normalize``'s eps) and the support mask.
    None when the values are not bf16 numbers (an fp32 encoder)."""
    from fsseg.kernels import bf16_scaled_dot

    B, K, C = fs.shape[:3]
    q16 = _as_bf16_exactly(fq)
    if q16 is None:  # before the support side: an fp32 query never needs its bf16 rows
        return None
    support = memoised(memo, ("bf16_rows", B, g, support_masking), lambda: _bf16_support_rows(fs, masks, g, support_masking))
    if support is None:
        return None
    rows, row_scale = support
    col_scale = 1.0 / torch.linalg.vector_norm(fq.float(), dim=1).clamp_min(1e-12)  # [B,g,g]
    cols = q16.flatten(2).transpose(1, 2)  # query position x C
    corr = bf16_scaled_dot(rows, cols, row_scale, col_scale.reshape(B, -1))
    return corr.view(B, K, g * g, g, g)


def _bf16_support_rows(fs: torch.Tensor, masks: torch.Tensor, g: int, support_masking: str):
    """The support side of ``_bf16_cosine_volume``: ``(rows [B, K*g*g, C] bf16, row scales [B, K*g*g])``,
    or None when the support features are not bf16 numbers."""
    B, K, C = fs.shape[:3]
    s16 = _as_bf16_exactly(fs)
    if s16 is None:
        return None
    row_scale = 1.0 / torch.linalg.vector_norm(fs.float(), dim=2).clamp_min(1e-12)  # [B,K,g,g]
    if support_masking == "features":
        row_scale = row_scale * resize_masks(masks.flatten(0, 1), (g, g)).float().view(B, K, g, g)
    rows = s16.flatten(3).transpose(-1, -2).reshape(B, K * g * g, C)  # (shot, support position) x C
    return rows, row_scale.reshape(B, -1)


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
