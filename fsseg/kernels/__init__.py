"""fsseg.kernels: CPU kernels torch does not have fast enough, compiled once on first use
(``cpu_bf16.py``; source ``bf16_kernels.cpp``).

- ``bf16_attention``: exact softmax attention of bf16 ViT tokens (DINOv2's bf16 passes on CPU).
- ``bf16_scaled_dot``: fp32 dot products of bf16 feature rows (the 4D correlation's cosines).

Both need AVX512-BF16; ``bf16_kernels_status()`` says whether they run here and, if not, why.
"""
from .cpu_bf16 import bf16_attention, bf16_kernels_status, bf16_scaled_dot

__all__ = ["bf16_attention", "bf16_scaled_dot", "bf16_kernels_status"]
