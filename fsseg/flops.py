"""FLOP counts that do not depend on which ops a torch release's ``FlopCounterMode`` knows.

Convention (torch's ``torch.utils.flop_counter``): matrix products and convolutions only, a multiply-add
counted as 2 FLOPs; softmax, norms, activations, scaling and additions are not counted.

torch's counter has formulas for matmuls and convolutions in every release, but its attention ops come
and go: 2.14.1 counts CPU ``scaled_dot_product_attention`` (``_scaled_dot_product_flash_attention_for_cpu``)
as 0, 2.15.0 counts it. Every attention path fsseg runs therefore gets its count here, from one formula
(``attention_flops``), passed to the counter as ``custom_mapping`` (which wins over torch's registry):
torch's SDPA kernels on CPU and CUDA (forward and backward), fsseg's CPU kernels
(``fsseg/kernels/cpu_kernels.py``) and the fused oneDNN linear (``fsseg/kernels/onednn_linear.py``).
SAM's attention (``segment_anything/modeling/image_encoder.py``, ``transformer.py``) and the
decomposed-relative-position terms are plain ``matmul``/``einsum`` calls, which every release counts as
``bmm``/``mm`` (``tests/test_fsseg_flops.py`` checks a SAM block against a count by hand).

``make bench`` and the tests count with ``count_flops`` / ``flop_counter`` only.
"""
from __future__ import annotations

import math
from typing import Callable

import torch


def attention_flops(batch_heads: int, q_len: int, kv_len: int, qk_dim: int, v_dim: int | None = None) -> int:
    """Softmax attention, forward: the scores ``Q K^T`` (2 Lq Lk d per batch x head) and the
    softmax-weighted sum ``P V`` (2 Lq Lk dv). A causal mask is counted as a full one, as torch does."""
    v_dim = qk_dim if v_dim is None else v_dim
    return 2 * batch_heads * q_len * kv_len * (qk_dim + v_dim)


def attention_backward_flops(batch_heads: int, q_len: int, kv_len: int, qk_dim: int,
                             v_dim: int | None = None) -> int:
    """Backward of ``attention_flops``: two products per forward product (dQ = dS K and dK = dS^T Q for
    the scores; dV = P^T dO and dP = dO V^T for the weighted sum); a recomputed forward is not counted."""
    return 2 * attention_flops(batch_heads, q_len, kv_len, qk_dim, v_dim)


def _sdpa_forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    # every aten SDPA kernel takes query [B, H, Lq, D], key [B, H, Lk, D], value [B, H, Lk, Dv] first
    *bh, lq, d = query_shape
    return attention_flops(math.prod(bh), lq, key_shape[-2], d, value_shape[-1])


def _sdpa_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    # every aten SDPA backward takes grad_out, query, key, value first
    *bh, lq, d = query_shape
    return attention_backward_flops(math.prod(bh), lq, key_shape[-2], d, value_shape[-1])


def _packed_qkv_attention(qkv_shape, num_heads, *args, out_shape=None, **kwargs) -> int:
    # fsseg_kernels::{bf16,fp32}_attention: qkv [B, N, 3 * heads * D] (timm Attention.qkv's output)
    b, n, width = qkv_shape
    return attention_flops(b * num_heads, n, n, width // (3 * num_heads))


def _scaled_dot(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    # fsseg_kernels::bf16_scaled_dot: a [B, M, C] x b [B, C, N], a batched product (as aten.bmm)
    return 2 * a_shape[0] * a_shape[1] * a_shape[2] * b_shape[-1]


def _linear_pointwise(x_shape, *args, out_shape=None, **kwargs) -> int:
    # mkldnn::_linear_pointwise: x [..., K] -> [..., N], as aten.addmm; the fused GELU is not counted
    return 2 * math.prod(x_shape) * out_shape[-1]


_SDPA_FORWARD = ("_scaled_dot_product_flash_attention", "_scaled_dot_product_flash_attention_for_cpu",
                 "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
                 "_scaled_dot_product_fused_attention_overrideable")


def flop_formulas() -> dict:
    """``{op packet: formula}`` for every attention op fsseg can run that exists in this torch build;
    ``FlopCounterMode(custom_mapping=...)`` puts them above its own registry."""
    import fsseg.kernels.cpu_kernels  # noqa: F401  defines the fsseg_kernels ops (their schemas only)

    aten = torch.ops.aten
    formulas = {}
    for name in _SDPA_FORWARD:
        if hasattr(aten, name):
            formulas[getattr(aten, name)] = _sdpa_forward
        if hasattr(aten, name + "_backward"):
            formulas[getattr(aten, name + "_backward")] = _sdpa_backward
    ops = torch.ops.fsseg_kernels
    formulas[ops.bf16_attention] = _packed_qkv_attention
    formulas[ops.fp32_attention] = _packed_qkv_attention
    formulas[ops.bf16_scaled_dot] = _scaled_dot
    if hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        formulas[torch.ops.mkldnn._linear_pointwise] = _linear_pointwise
    return formulas


def flop_counter(display: bool = False):
    """A ``torch.utils.flop_counter.FlopCounterMode`` with fsseg's attention formulas (a context manager;
    ``get_total_flops()`` / ``get_flop_counts()`` after the block)."""
    from torch.utils.flop_counter import FlopCounterMode

    return FlopCounterMode(display=display, custom_mapping=flop_formulas())


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn()`` (the count does not depend on the precision or the torch release)."""
    with flop_counter() as counter:
        fn()
    return int(counter.get_total_flops())


__all__ = ["attention_flops", "attention_backward_flops", "count_flops", "flop_counter", "flop_formulas"]
