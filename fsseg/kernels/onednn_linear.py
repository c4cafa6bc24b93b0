"""``OneDNNLinear``: an ``nn.Linear`` (same parameters, same state-dict keys) whose CPU inference runs
oneDNN's matmul with the bias, and optionally the exact (erf) GELU, fused into it.

Why: on an x86 CPU torch's fp32 ``F.linear`` calls MKL's sgemm. On this machine's AMD EPYC
(Zen 4) MKL reaches 169-189 GFLOP/s on a 2048^3 product where oneDNN's matmul reaches 214-219 (the two
timed in alternation, 2 threads), and a DINOv2-B pass at 518 with its four linear layers per block
on oneDNN takes 0.78-0.81x the time (medians of 12-16 interleaved passes, outputs within 1e-6). bf16
linears already run on oneDNN; fusing fc1's GELU saves a pass over the 1370x3072 hidden activations
(bf16 DINOv2-B pass 0.93-0.94x). The op is ``torch.ops.mkldnn._linear_pointwise``, the one torch's own CPU
compiler (Inductor) emits for linear + activation; where it is missing, the input needs gradients,
autocast is on, or the code is being traced/exported, the layer is plain ``F.linear`` (+ ``F.gelu``).
"""
from __future__ import annotations

import platform

import torch
import torch.nn.functional as F
from torch import nn


def onednn_linear_available() -> bool:
    """torch was built with oneDNN and exposes the fused linear op; x86-64 only (the CPUs measured:
    other oneDNN backends, e.g. Arm's, keep torch's own path)."""
    return (platform.machine().lower() in ("x86_64", "amd64") and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def onednn_dtypes() -> tuple:
    """The dtypes oneDNN's matmul runs on this CPU: bf16 only where oneDNN itself says it supports
    it (its own ISA check, which follows ``ONEDNN_MAX_CPU_ISA``; e.g. not on AVX2-only x86, where it
    cannot create the primitive and torch's ``F.linear`` does the product instead)."""
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return (torch.float32, torch.bfloat16)
    return (torch.float32,)


_AVAILABLE = onednn_linear_available()
_DTYPES = onednn_dtypes() if _AVAILABLE else ()


def capturing_graph() -> bool:
    """True while torch traces or compiles (ONNX/TorchScript export, torch.export, torch.compile): they
    must see the standard ops, not fsseg's CPU fast paths."""
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()


def cpu_inference_call(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """A call of a layer of ``weight`` on ``x`` that fsseg's CPU fast paths (``OneDNNLinear``,
    ``fsseg.kernels``' attention) may take: both on the CPU, no gradient wanted (they have no
    backward), no graph being captured."""
    if x.device.type != "cpu" or weight.device.type != "cpu":
        return False
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return False
    return not capturing_graph()


class OneDNNLinear(nn.Linear):
    """``nn.Linear`` whose CPU inference runs oneDNN (see the module docstring). ``enabled=False``
    keeps ``F.linear`` everywhere. ``forward(x, gelu=True)`` is ``F.gelu(self(x))`` with the GELU
    fused where the oneDNN path runs."""

    enabled: bool = True

    @classmethod
    def adopt(cls, linear: nn.Linear) -> "OneDNNLinear":
        """A ``OneDNNLinear`` holding ``linear``'s own parameters (no copy, no re-initialisation)."""
        new = nn.utils.skip_init(cls, linear.in_features, linear.out_features, bias=linear.bias is not None,
                                 device="meta")
        new.weight = linear.weight
        new.bias = linear.bias
        return new

    def onednn_applies(self, x: torch.Tensor) -> bool:
        if not (self.enabled and _AVAILABLE) or x.dim() < 2 or x.dtype not in _DTYPES or x.dtype != self.weight.dtype:
            return False
        if torch.is_autocast_enabled("cpu"):
            return False  # F.linear is what autocast casts
        return cpu_inference_call(x, self.weight)

    def packed_weight(self, rows: int) -> torch.Tensor:
        """The weight in oneDNN's blocked layout, packed once and kept while the weight is unchanged
        (same storage, dtype and in-place version): unpacked, oneDNN re-lays it out on every call
        (DINOv2-B pass 0.95x with it, bit-identical). ``rows``: the batch rows oneDNN picks the layout for;
        any other row count gives the same result."""
        w = self.weight
        if w.is_inference():  # created under inference_mode: no version counter to notice in-place changes
            return w
        key = (w.data_ptr(), w._version, w.dtype, tuple(w.shape))
        cached = self.__dict__.get("_packed")
        if cached is None or cached[0] != key:
            cached = (key, torch.ops.mkldnn._reorder_linear_weight(w.detach(), rows))
            self.__dict__["_packed"] = cached
        return cached[1]

    def __getstate__(self):  # copies and pickles (deepcopy, torch.save of the module) repack on first use
        state = super().__getstate__()
        state.pop("_packed", None)
        return state

    def forward(self, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
        if self.onednn_applies(x):
            attr, algorithm = ("gelu", "none") if gelu else ("none", "")  # "none": exact erf GELU
            weight = self.packed_weight(x.numel() // x.shape[-1])
            return torch.ops.mkldnn._linear_pointwise(x, weight, self.bias, attr, [], algorithm)
        y = F.linear(x, self.weight, self.bias)
        return F.gelu(y) if gelu else y


def onednn_matmul(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T`` (``F.linear`` without bias) by oneDNN's matmul, the op ``OneDNNLinear`` runs, for
    products outside a layer (unpacked ``weight``; where ``onednn_linear_available()``)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")


def packed_weight_bytes(module: nn.Module) -> int:
    """Bytes of the oneDNN-packed weight copies the ``OneDNNLinear`` layers in ``module`` hold now."""
    return sum(torch.ops.mkldnn._nbytes(m.__dict__["_packed"][1]) for m in module.modules()
               if isinstance(m, OneDNNLinear) and "_packed" in m.__dict__)


def use_onednn_linears(module: nn.Module) -> nn.Module:
    """Replace every ``nn.Linear`` inside ``module`` by a ``OneDNNLinear`` holding the same
    parameters (state-dict keys unchanged); returns ``module``."""
    for name, child in list(module.named_children()):
        if type(child) is nn.Linear:
            setattr(module, name, OneDNNLinear.adopt(child))
        else:
            use_onednn_linears(child)
    return module
