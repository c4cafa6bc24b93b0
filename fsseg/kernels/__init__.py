"""fsseg.kernels: the CPU inference fast paths, kept apart from the models that call them.

Compiled once on first use (``cpu_kernels.py``; source ``cpu_kernels.cpp``):

- ``bf16_attention`` / ``fp32_attention``: exact softmax attention of ViT tokens (DINOv2's and the
  adapter's inference passes on CPU; heads of ``HEAD_DIMS``).
- ``bf16_scaled_dot``: fp32 dot products of bf16 feature rows (the 4D correlation's cosines).

Where the models call them: ``cpu_attention.py`` (which attention calls take the kernels),
``onednn_linear.py`` (``OneDNNLinear``: the ViT's linear layers on oneDNN's matmul, bias and GELU
fused), ``cosine_volume.py`` (the 4D correlation's cosine volume).

The compiled kernels need AVX512-BF16; ``cpu_kernels_status()`` says whether they run here and, if not, why.
``--cpu_kernels false`` (any LightningCLI command), ``set_cpu_kernels_enabled(False)`` or
``FSSEG_CPU_KERNELS=0`` turns them off.
"""
from .cpu_kernels import (
    HEAD_DIMS,
    bf16_attention,
    bf16_scaled_dot,
    cpu_kernels_enabled,
    cpu_kernels_status,
    fp32_attention,
    set_cpu_kernels_enabled,
)

__all__ = ["bf16_attention", "fp32_attention", "bf16_scaled_dot", "cpu_kernels_status", "HEAD_DIMS",
           "set_cpu_kernels_enabled", "cpu_kernels_enabled"]
