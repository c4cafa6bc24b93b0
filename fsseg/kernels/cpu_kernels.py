"""Build and call ``cpu_kernels.cpp``: attention for DINOv2's bf16 and fp32 inference passes and
fp32-exact dot products of bf16 features for the 4D correlation, on x86 CPUs with AVX512-BF16.

The kernel is compiled on first use with torch's extension builder (g++ and ninja; about 15 s) into
``$XDG_CACHE_HOME/fsseg/kernels/<torch version>-<source hash>`` (``~/.cache`` by default); later processes
load the built library. Where it cannot run (a CPU without ``avx512_bf16``, no compiler) the callers
use torch's own ops instead (``scaled_dot_product_attention``; an fp32 matmul), and a warning says once
why: the results are the same function at the same precision, only slower.

Turning them off (torch's ops everywhere, nothing compiled): ``fsseg <fit|test|...> --cpu_kernels false``,
``set_cpu_kernels_enabled(False)``, or, for any fsseg command, the environment variable
``FSSEG_CPU_KERNELS=0`` (read here only).
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Iterable, Optional

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cpu_kernels.cpp")
HEAD_DIMS = (16, 32, 64)  # the attention kernel's head sizes: DINOv2's (every ViT-S/B/L/g) 64, the adapter's 16
# the instructions the kernel is compiled for: AVX-512 foundation + the bf16 dot product
REQUIRED_CPU_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16")
_CFLAGS = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512bf16", "-mfma",
           "-fopenmp"]  # -fopenmp: at::parallel_for is an OpenMP region compiled into this library

_lock = threading.Lock()
_state: dict = {}  # "ok": bool, "reason": str
_enabled: list = []  # [bool] once set_cpu_kernels_enabled is called; else FSSEG_CPU_KERNELS decides
OFF_VALUES = ("0", "false", "off", "no")


def set_cpu_kernels_enabled(enabled: bool) -> None:
    """Use the kernels where they can run (True, the default) or never (False: torch's ops)."""
    _enabled[:] = [bool(enabled)]


def cpu_kernels_enabled() -> bool:
    if _enabled:
        return _enabled[0]
    return os.environ.get("FSSEG_CPU_KERNELS", "1").strip().lower() not in OFF_VALUES


def _build_dir() -> Path:
    # The source's path is in the key: torch's builder writes it into build.ninja, so two checkouts
    # sharing one folder would each see the other's build as stale and rebuild it, in turn.
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(_CFLAGS).encode()
                            + str(SOURCE.resolve()).encode()).hexdigest()[:12]
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fsseg" / "kernels"
    return root / f"torch{torch.__version__.replace('+', '_')}-{digest}"


def missing_cpu_flags(flags: Optional[Iterable[str]] = None) -> list:
    """The ``REQUIRED_CPU_FLAGS`` this CPU lacks (``flags``: a simulated flag set, for tests)."""
    from fsseg.precision import cpu_flags

    have = set(cpu_flags() if flags is None else flags)
    return [f for f in REQUIRED_CPU_FLAGS if f not in have]


def cpu_kernels_status(cpu_flag_set: Optional[Iterable[str]] = None) -> tuple:
    """``(usable, reason)``; builds (or loads) the kernel the first time it is asked on this CPU.
    ``cpu_flag_set`` simulates another CPU (nothing is built then)."""
    if cpu_flag_set is not None:
        miss = missing_cpu_flags(cpu_flag_set)
        return (False, f"the CPU lacks {', '.join(miss)}") if miss else (True, "")
    if not cpu_kernels_enabled():
        return False, "turned off (--cpu_kernels false or FSSEG_CPU_KERNELS=0)"
    with _lock:
        if not _state:
            _state.update(_load())
            if not _state["ok"]:
                log.warning("fsseg CPU kernels not used (%s): DINOv2's attention and the 4D correlation "
                            "run in torch's ops, same results, slower", _state["reason"])
    return _state["ok"], _state["reason"]


def _load() -> dict:
    miss = missing_cpu_flags()
    if miss:
        return dict(ok=False, reason=f"the CPU lacks {', '.join(miss)}")
    if torch._C._dispatch_has_kernel_for_dispatch_key("fsseg_kernels::fp32_attention", "CPU"):
        return dict(ok=True, reason="")  # already loaded in this process
    try:
        from torch.utils.cpp_extension import load

        _ninja_on_path()
        build = _build_dir()
        if not any(build.glob("*.so")):  # to build: say plainly what is missing, not ninja's last line
            compiler = os.environ.get("CXX", "c++")  # what torch's builder runs
            if shutil.which(compiler) is None:
                return dict(ok=False, reason=f"no C++ compiler to build them ({compiler!r} not on PATH; install "
                                             "g++, or set CXX)")
            if shutil.which("ninja") is None:
                return dict(ok=False, reason="ninja is not installed (pip install ninja)")
        build.mkdir(parents=True, exist_ok=True)
        if not any(build.glob("*.so")):
            log.warning("compiling fsseg's CPU kernels into %s (once; about 20 s)", build)
        load(name="fsseg_cpu_kernels", sources=[str(SOURCE)], extra_cflags=_CFLAGS, extra_ldflags=["-fopenmp"],
             build_directory=str(build), is_python_module=False, verbose=False)
    except Exception as e:  # no compiler / ninja, or a failed build: say why, run torch's attention
        return dict(ok=False, reason=f"build failed: {type(e).__name__}: {str(e).strip().splitlines()[-1][:300]}")
    return dict(ok=True, reason="")


def _define_ops() -> torch.library.Library:
    """The kernels' op schemas (the compiled library only implements them), defined at import so that
    a FLOP count started before the first kernel call (``make bench``) sees them; their FLOP formulas
    are in ``fsseg/flops.py`` with every other attention path's."""
    lib = torch.library.Library("fsseg_kernels", "DEF")
    lib.define("bf16_attention(Tensor qkv, int num_heads, float scale) -> Tensor")
    lib.define("fp32_attention(Tensor qkv, int num_heads, float scale) -> Tensor")
    lib.define("bf16_scaled_dot(Tensor a, Tensor b, Tensor row_scale, Tensor col_scale) -> Tensor")
    lib.define("instruction_peak(bool bf16, int iterations) -> float")
    return lib


_LIBRARY = _define_ops()  # kept: a Library object un-defines its ops when collected


def _ninja_on_path() -> None:
    """torch's builder runs ``ninja`` from PATH; the ``ninja`` wheel (a dependency) installs it next to
    the interpreter, which is not on PATH when the venv is not activated (``.venv/bin/python -m ...``)."""
    if shutil.which("ninja") is None:
        try:
            import ninja

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        except ImportError:
            pass  # the build then fails with torch's "Ninja is required" message, reported as the reason


def bf16_attention(qkv: torch.Tensor, num_heads: int, scale: float) -> torch.Tensor:
    """Softmax attention of ``qkv`` ``[B, N, 3 * num_heads * D]`` bf16 (timm ``Attention.qkv``'s output),
    ``D`` in ``HEAD_DIMS`` -> ``[B, N, num_heads * D]`` bf16. Scores, softmax and sums in fp32; P rounded to bf16 for the
    second product, as torch's bf16 CPU kernel does. Raises where ``cpu_kernels_status`` is False."""
    _require()
    return torch.ops.fsseg_kernels.bf16_attention(qkv, int(num_heads), float(scale))


def fp32_attention(qkv: torch.Tensor, num_heads: int, scale: float) -> torch.Tensor:
    """Softmax attention of ``qkv`` ``[B, N, 3 * num_heads * D]`` fp32 -> ``[B, N, num_heads * D]`` fp32,
    every product, exponential and sum in fp32 (FMA). Raises where ``cpu_kernels_status`` is False."""
    _require()
    return torch.ops.fsseg_kernels.fp32_attention(qkv, int(num_heads), float(scale))


def bf16_scaled_dot(a: torch.Tensor, b: torch.Tensor, row_scale: torch.Tensor, col_scale: torch.Tensor) -> torch.Tensor:
    """``out[n, i, j] = row_scale[n, i] * col_scale[n, j] * <a[n, i], b[n, j]>`` for bf16 ``a [B, M, C]``,
    ``b [B, N, C]`` (C even), fp32 scales ``[B, M]``, ``[B, N]`` -> fp32 ``[B, M, N]``: every product and
    sum in fp32, i.e. an fp32 matmul of the bf16 values at the bf16 rate."""
    _require()
    return torch.ops.fsseg_kernels.bf16_scaled_dot(a, b, row_scale, col_scale)


def instruction_peak(bf16: bool, iterations: int = 20_000_000) -> float:
    """GFLOP/s of the cores' register-only multiply-adds on all of torch's threads: fp32 FMAs, or bf16
    dot products (vdpbf16ps) with ``bf16``. The rate no matmul can pass; ``make bench`` reads its
    matmul peak against it. Raises where ``cpu_kernels_status`` is False."""
    _require()
    return float(torch.ops.fsseg_kernels.instruction_peak(bool(bf16), int(iterations)))


def _require() -> None:
    ok, reason = cpu_kernels_status()
    if not ok:
        raise RuntimeError(f"fsseg CPU kernels unavailable: {reason}")


__all__ = ["bf16_attention", "fp32_attention", "bf16_scaled_dot", "instruction_peak", "cpu_kernels_status", "missing_cpu_flags",
           "REQUIRED_CPU_FLAGS", "HEAD_DIMS", "set_cpu_kernels_enabled", "cpu_kernels_enabled"]
