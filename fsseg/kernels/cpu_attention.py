"""Which CPU inference calls of an attention layer run ``fsseg.kernels``' attention, shared
by DINOv2's blocks (``DINOv2Attention``) and the adapter's (``SelfAttentionBlock``, through
``cpu_multihead_attention``).

torch's CPU attention kernel is no faster in bf16 than in fp32 on CPUs without AMX, and slow for
narrow heads: DINOv2-B's 64-wide heads at 518 run at about 140 GFLOP/s on 2 Zen 4 cores in either
precision, the adapter's 16-wide heads at about 90. The kernels compute the same function (fp32
scores, softmax and sums; in bf16 P rounded to bf16 as torch's bf16 kernel does).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .onednn_linear import cpu_inference_call


def cpu_compute_dtype(x: torch.Tensor, weight: torch.Tensor) -> Optional[torch.dtype]:
    """The dtype a linear layer of ``weight`` on ``x`` computes in on the CPU: bf16 (bf16 weights, or
    fp32 weights under a bf16 CPU autocast), fp32 (fp32 weights, no autocast), else None."""
    autocast = torch.is_autocast_enabled("cpu")
    if (x.dtype == weight.dtype == torch.bfloat16) or (autocast and torch.get_autocast_dtype("cpu") == torch.bfloat16):
        return torch.bfloat16
    if x.dtype == weight.dtype == torch.float32 and not autocast:
        return torch.float32
    return None


def cpu_attention_kernel(x: torch.Tensor, qkv_weight: torch.Tensor, num_heads: int, head_dim: int,
                         scale: float) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    """``qkv [B, N, 3 * heads * head_dim] -> [B, N, heads * head_dim]`` by ``fsseg.kernels`` for this
    call of a layer whose q/k/v projection is ``qkv_weight`` on ``x``, or None where torch's attention
    must run: gradients wanted, a graph being captured, a GPU, fp16, a head size the kernel lacks, or
    a CPU without AVX512-BF16. The caller checks its own layer's extras (masks, dropout, norms)."""
    import fsseg.kernels as kernels  # looked up per call (tests count the calls)

    if head_dim not in kernels.HEAD_DIMS or not cpu_inference_call(x, qkv_weight):
        return None
    dtype = cpu_compute_dtype(x, qkv_weight)
    if dtype is None or not kernels.cpu_kernels_status()[0]:
        return None
    if dtype == torch.bfloat16:
        return lambda qkv: kernels.bf16_attention(qkv.to(dtype), num_heads, scale)
    return lambda qkv: kernels.fp32_attention(qkv, num_heads, scale)


def cpu_multihead_attention(attn: nn.MultiheadAttention, qk: torch.Tensor, x: torch.Tensor) -> Optional[torch.Tensor]:
    """``attn(qk, qk, x)`` (queries and keys from ``qk``, values from ``x``; ``batch_first``) by the kernel
    where ``cpu_attention_kernel`` allows it, else None for ``nn.MultiheadAttention``. The adapter's 16-wide
    heads run at about 90 GFLOP/s in torch's CPU kernel, a third of the adapter's time per query at 518."""
    if not (attn.batch_first and attn._qkv_same_embed_dim) or attn.bias_k is not None or attn.add_zero_attn:
        return None
    if attn.training and attn.dropout > 0:
        return None
    kernel = cpu_attention_kernel(x, attn.in_proj_weight, attn.num_heads, attn.head_dim, attn.head_dim ** -0.5)
    if kernel is None:
        return None
    # the packed projection gives q and k from ``qk`` and v from ``x``, laid out [q | k | v] x heads x
    # head_dim as the kernel reads
    E, w, b = attn.embed_dim, attn.in_proj_weight, attn.in_proj_bias
    if qk is x:
        qkv = F.linear(x, w, b)
    else:
        qkv = torch.cat([F.linear(qk, w[: 2 * E], None if b is None else b[: 2 * E]),
                         F.linear(x, w[2 * E:], None if b is None else b[2 * E:])], dim=-1)
    return attn.out_proj(kernel(qkv))


__all__ = ["cpu_compute_dtype", "cpu_attention_kernel", "cpu_multihead_attention"]
