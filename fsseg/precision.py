"""One meaning of ``precision`` for every entry point (CLI trainer, ``export``, ``demo-ui``, Python API).

========================  ================================================================================
``32``                    fp32 everywhere
``bf16-mixed``            CPU and GPU: matmuls/convolutions in bfloat16 (autocast); frozen parts (DINOv2,
                          a frozen adapter, the SAM teacher) held in bf16 weights; losses, the metric,
                          the correlation's cosine, the Mamba scan and the final upsampling in fp32
``16-mixed``              GPU only (float16 autocast; CPUs have no fast fp16 matmul): refused on CPU; the
                          SAM teacher runs in bf16 (fp32 on GPUs without bf16): ``teacher_precision``
``auto``                  ``bf16-mixed`` on a CPU that multiplies bf16 natively (``avx512_bf16`` or
                          ``amx_bf16`` in ``/proc/cpuinfo``) and on a GPU that supports bf16, else ``32``.
                          The recommended setting on a GPU (``--precision auto`` or ``trainer.precision``)
========================  ================================================================================

fp32 matmuls on a CUDA GPU use TF32 (``--float32_matmul auto``, ``set_float32_matmul``) unless the
run says ``--float32_matmul highest``.

On a CPU with AVX512-BF16, bf16 DINOv2 attention and the correlation's dot products run in
``fsseg.kernels`` (compiled on first use; torch's ops elsewhere, same functions and precision).

Plain torch (no Lightning): ``fsseg.models`` uses it too. Lightning's ``Trainer(precision=...)``
takes the resolved strings unchanged (``32`` is Lightning's ``32-true``).
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterable, Optional, Union

import torch

PRECISIONS = ("32", "bf16-mixed", "16-mixed", "auto")
# Lightning's spellings of the same settings
_ALIASES = {"32-true": "32", "fp32": "32", "32": "32", "bf16": "bf16-mixed", "bf16-mixed": "bf16-mixed",
            "16": "16-mixed", "16-mixed": "16-mixed", "auto": "auto"}
# x86 flags of a CPU with native bf16 dot products (AVX512-BF16: Cooper Lake, Zen 4+; AMX: Sapphire Rapids+)
NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
_DTYPES = {"32": torch.float32, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def cpu_flags(cpuinfo: Union[str, Path] = "/proc/cpuinfo") -> set:
    """The ``flags`` of the first CPU in ``cpuinfo`` (empty where the file does not exist: not Linux)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):  # x86 / ARM spelling
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_has_native_bf16(flags: Optional[Iterable[str]] = None) -> bool:
    """True when the CPU multiplies bf16 natively (without it bf16 matmuls are emulated and slower
    than fp32). ``flags``: the CPU flags to judge (default: read from ``/proc/cpuinfo``). ARM's
    ``bf16`` feature (Graviton3, Apple M2+) counts too."""
    f = set(cpu_flags() if flags is None else flags)
    return any(x in f for x in NATIVE_BF16_CPU_FLAGS) or "bf16" in f


def normalize_precision(precision: Union[str, int]) -> str:
    """``precision`` in any accepted spelling -> one of ``PRECISIONS``; a clear error otherwise."""
    p = _ALIASES.get(str(precision).strip().lower())
    if p is None:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    return p


def resolve_precision(precision: Union[str, int], device: Union[str, torch.device] = "cpu",
                      cpu_flag_set: Optional[Iterable[str]] = None) -> str:
    """``precision`` on ``device`` -> ``32``, ``bf16-mixed`` or ``16-mixed`` (``auto`` resolved; see module doc).
    ``cpu_flag_set`` overrides the CPU flags read from ``/proc/cpuinfo`` (tests)."""
    p = normalize_precision(precision)
    kind = torch.device(device).type
    if p == "auto":
        if kind == "cuda":
            return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32"
        if kind == "cpu":
            return "bf16-mixed" if cpu_has_native_bf16(cpu_flag_set) else "32"
        return "32"
    if p == "16-mixed" and kind == "cpu":
        raise ValueError("precision 16-mixed needs a GPU (CPUs have no fast float16 matmul); "
                         "use bf16-mixed or 32 on CPU")
    return p


def run_device(module: torch.nn.Module) -> torch.device:
    """The device ``module`` will run on: its trainer's (Lightning calls ``setup`` while the weights
    are still on the CPU and moves them afterwards), else where its weights are."""
    trainer = getattr(module, "_trainer", None)
    if trainer is not None:
        return trainer.strategy.root_device
    first = next(module.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def teacher_precision(precision: str, device: Union[str, torch.device] = "cpu",
                      bf16_supported: Optional[bool] = None) -> str:
    """The precision the frozen SAM teacher runs in under the resolved ``precision``. ``16-mixed``
    is not safe for it: SAM ViT-H's activations exceed float16's range (65504) and the embedding
    turns to inf/NaN (segment-anything issue 540; EfficientViT-SAM keeps LayerNorm in fp32), so the
    teacher runs in bf16 (float32's range) where the device has it, else in fp32.
    ``bf16_supported`` overrides the device query (tests)."""
    p = normalize_precision(precision)
    if p != "16-mixed":
        return p
    if bf16_supported is None:
        kind = torch.device(device).type
        bf16_supported = kind == "cpu" or (kind == "cuda" and torch.cuda.is_available()
                                           and torch.cuda.is_bf16_supported())
    return "bf16-mixed" if bf16_supported else "32"


def precision_region(precision: str, device: Union[str, torch.device] = "cpu"):
    """Autocast exactly at a resolved precision, whatever autocast surrounds it (``32``: autocast
    off, so an enclosing float16 autocast does not reach in)."""
    dtype = compute_dtype(precision)
    kind = torch.device(device).type
    return fp32_region(kind) if dtype == torch.float32 else torch.autocast(kind, dtype=dtype)


FLOAT32_MATMUL = ("auto", "highest", "high", "medium")


def set_float32_matmul(setting: str, device: Union[str, torch.device]) -> str:
    """Apply ``float32_matmul`` for a run on ``device`` (``torch.set_float32_matmul_precision``) and
    return what was set. ``auto``: ``high`` (TF32 tensor cores, 10-bit mantissa products summed in
    fp32, several times fp32's rate on Ampere and later) on CUDA, torch's own default elsewhere;
    ``highest`` keeps full fp32 products on the GPU too; ``high``/``medium`` as torch defines them."""
    if setting not in FLOAT32_MATMUL:
        raise ValueError(f"float32_matmul {setting!r} is not one of {', '.join(FLOAT32_MATMUL)}")
    if setting == "auto":
        if torch.device(device).type != "cuda":
            return torch.get_float32_matmul_precision()
        setting = "high"
    torch.set_float32_matmul_precision(setting)
    return setting


def compute_dtype(precision: str) -> torch.dtype:
    """The matmul dtype of a resolved precision (``resolve_precision``'s output)."""
    return _DTYPES[normalize_precision(precision)]


def autocast(precision: str, device: Union[str, torch.device] = "cpu"):
    """Autocast context of a resolved precision (a no-op for ``32``)."""
    dtype = compute_dtype(precision)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def fp32_region(device_type: str):
    """Autocast off: for the few computations bf16 would change (callers cast their inputs to fp32)."""
    return torch.autocast(device_type, enabled=False)


def dtype_key(dtype: torch.dtype) -> str:
    """Cache-namespace suffix naming the dtype frozen parts ran in; empty for fp32, so fp32 keys
    (and caches written before precisions existed) stay what they were."""
    return "" if dtype == torch.float32 else f"|dtype={str(dtype).replace('torch.', '')}"


def hold_frozen_in(module: torch.nn.Module, precision: str) -> torch.nn.Module:
    """Cast a frozen module's weights to the precision's dtype (no per-op casts at run time, half the
    weight memory). Only frozen modules: trainable weights stay fp32 (the optimiser's master copy)."""
    if any(p.requires_grad for p in module.parameters()):
        raise ValueError(f"{type(module).__name__} has trainable parameters: only frozen parts are held in low precision")
    return module.to(compute_dtype(precision))


__all__ = ["PRECISIONS", "NATIVE_BF16_CPU_FLAGS", "cpu_flags", "cpu_has_native_bf16", "normalize_precision",
           "resolve_precision", "compute_dtype", "autocast", "fp32_region", "dtype_key", "hold_frozen_in", "run_device",
           "teacher_precision", "precision_region", "FLOAT32_MATMUL", "set_float32_matmul"]
