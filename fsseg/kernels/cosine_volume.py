"""CPU inference paths of the 4D correlation's cosine volume (``fsseg.models.correlation``).

Both compute the function of the plain path (fp32 cosines of L2-normalised, masked features), only
faster on the CPU:

- ``bf16_cosine_volume``: features whose values are bf16 numbers (an encoder that ran in bf16, its
  output upcast to fp32 by the decoder) are multiplied by ``fsseg.kernels.bf16_scaled_dot`` at the bf16
  matmul rate with every product and sum in fp32, then scaled by 1 / max(|f|, 1e-12) (``F.normalize``'s
  eps) and the support mask: the same numbers as normalising first, to fp32 rounding.
- ``onednn_support_query_products``: the fp32 product by oneDNN's matmul, whose ``[Q, K*S]`` result is
  the volume with its channels (support positions) last in memory, the layout the reduction convs read
  best (torch's bmm is MKL's sgemm, which on AMD CPUs runs at about half the cores' fp32 rate: 26 vs
  14 ms for one 1369 x 768 x 1369 product here).

Each returns None where it does not apply (a GPU, gradients wanted, a graph being captured, kernels
unavailable, values bf16 cannot hold); the caller then runs torch's ops.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from .onednn_linear import cpu_inference_call, onednn_linear_available, onednn_matmul


def bf16_dot_applies(fq: torch.Tensor, fs: torch.Tensor, g: int) -> bool:
    """CPU features already on the g x g grid, no gradient wanted, AVX512-BF16 kernels here: try
    ``bf16_cosine_volume`` (which still checks that the values are bf16 numbers)."""
    if fq.device.type != "cpu" or fq.shape[1] % 2 or fq.dtype not in (torch.float32, torch.bfloat16):
        return False
    if tuple(fq.shape[-2:]) != (g, g) or tuple(fs.shape[-2:]) != (g, g):
        return False
    if torch.is_grad_enabled() and (fq.requires_grad or fs.requires_grad):
        return False
    from fsseg.kernels import cpu_kernels_status

    return cpu_kernels_status()[0]


def as_bf16_exactly(x: torch.Tensor) -> Optional[torch.Tensor]:
    """``x`` in bf16 if every value is a bf16 number, else None: rounding would change the cosines."""
    if x.dtype == torch.bfloat16:
        return x
    y = x.to(torch.bfloat16)
    return y if torch.equal(y.to(x.dtype), x) else None


def bf16_support_rows(fs: torch.Tensor, g: int, support_weights: Callable[[], Optional[torch.Tensor]]):
    """The support side of ``bf16_cosine_volume``: ``(rows [B, K*g*g, C] bf16, row scales [B, K*g*g])``,
    or None when the support features are not bf16 numbers. ``support_weights()``: the support masks on
    the grid, ``[B*K, 1, g, g]``, or None (unmasked volume)."""
    B, K, C = fs.shape[:3]
    s16 = as_bf16_exactly(fs)
    if s16 is None:
        return None
    row_scale = 1.0 / torch.linalg.vector_norm(fs.float(), dim=2).clamp_min(1e-12)  # [B,K,g,g]
    weights = support_weights()
    if weights is not None:
        row_scale = row_scale * weights.float().view(B, K, g, g)
    rows = s16.flatten(3).transpose(-1, -2).reshape(B, K * g * g, C)  # (shot, support position) x C
    return rows, row_scale.reshape(B, -1)


def bf16_cosine_volume(fq: torch.Tensor, fs: torch.Tensor, g: int,
                       support_weights: Callable[[], Optional[torch.Tensor]],
                       memo: Any = None, memo_key: tuple = ()) -> Optional[torch.Tensor]:
    """The masked cosine volume ``[B, K, g*g, g, g]`` of ``fq [B,C,g,g]``, ``fs [B,K,C,g,g]`` by
    ``fsseg.kernels.bf16_scaled_dot``, or None where it does not apply. ``memo`` (a
    ``SupportMemo``: ``get(key, compute)``) keeps the support rows under ``("bf16_rows", *memo_key)``."""
    if not bf16_dot_applies(fq, fs, g):
        return None
    from fsseg.kernels import bf16_scaled_dot

    B, K = fs.shape[:2]
    q16 = as_bf16_exactly(fq)
    if q16 is None:  # before the support side: an fp32 query never needs its bf16 rows
        return None
    rows_of_support = lambda: bf16_support_rows(fs, g, support_weights)  # noqa: E731
    support = rows_of_support() if memo is None else memo.get(("bf16_rows", *memo_key), rows_of_support)
    if support is None:
        return None
    rows, row_scale = support
    col_scale = 1.0 / torch.linalg.vector_norm(fq.float(), dim=1).clamp_min(1e-12)  # [B,g,g]
    cols = q16.flatten(2).transpose(1, 2)  # query position x C
    corr = bf16_scaled_dot(rows, cols, row_scale, col_scale.reshape(B, -1))
    return corr.view(B, K, g * g, g, g)


def onednn_support_query_products(s: torch.Tensor, q: torch.Tensor) -> Optional[torch.Tensor]:
    """``s [B,K,S,C]``, ``q [B,C,Q]`` fp32 -> ``[B,K,S,Q]`` by oneDNN (CPU inference), else None."""
    if not (onednn_linear_available() and cpu_inference_call(q, s) and q.dtype == s.dtype == torch.float32):
        return None
    B, K, S, C = s.shape
    out = torch.stack([onednn_matmul(q[b].t().contiguous(), s[b].reshape(K * S, C)) for b in range(B)])  # [B, Q, K*S]
    return out.view(B, -1, K, S).permute(0, 2, 3, 1)


__all__ = ["bf16_cosine_volume", "bf16_dot_applies", "onednn_support_query_products"]
