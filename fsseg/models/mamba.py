"""One Mamba (selective SSM) layer class with two interchangeable backends.

* ``backend='torch'``: ``mambapy.mamba.MambaBlock`` -- pure PyTorch, parallel scan; runs on CPU.
* ``backend='cuda'``: ``mamba_ssm.Mamba`` (fused CUDA kernels); imported lazily, a clear
  ``ImportError`` if requested but not installed.
* ``backend='auto'``: the CUDA implementation when ``mamba_ssm`` imports *and* the input is on a
  CUDA device, otherwise the PyTorch scan -- with the *same* parameters (both implementations use
  the parameter names ``in_proj, conv1d, x_proj, dt_proj, A_log, D, out_proj``, so state dicts are
  interchangeable between backends and machines).
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import nn

BACKENDS = ("auto", "torch", "cuda")


_import_error: list = []  # [None] or [the error's one-line description], once per process
_warned: list = []


def mamba_ssm_import_error() -> Optional[str]:
    """Why ``mamba_ssm`` does not import here (``None`` when it does); asked once per process."""
    if not _import_error:
        try:
            import mamba_ssm  # noqa: F401

            _import_error.append(None)
        except Exception as e:  # a missing package, or a CUDA build that does not load (ABI, driver)
            lines = str(e).strip().splitlines() or [""]
            _import_error.append(f"{type(e).__name__}: {lines[0][:300]}")
    return _import_error[0]


def mamba_ssm_available() -> bool:
    return mamba_ssm_import_error() is None


class MambaLayer(nn.Module):
    """``[B, L, d_model] -> [B, L, d_model]`` selective-scan mixer (no residual, no norm)."""

    def __init__(self, d_model: int, backend: str = "auto", d_state: int = 16, d_conv: int = 4, expand: int = 2):
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"Mamba backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "cuda" and not mamba_ssm_available():
            raise ImportError(
                f"MambaLayer(backend='cuda') needs the 'mamba-ssm' package (CUDA kernels), which does not import "
                f"({mamba_ssm_import_error()}): `pip install mamba-ssm causal-conv1d`, or use backend='torch' / 'auto'"
            )
        self.backend = backend
        self.d_model = d_model
        from mambapy.mamba import MambaBlock, MambaConfig

        cfg = MambaConfig(d_model=d_model, n_layers=1, d_state=d_state, d_conv=d_conv, expand_factor=expand, pscan=True)
        # parameters live in the pure-PyTorch block (registered as a submodule: `mixer.*` keys)
        self.mixer = MambaBlock(cfg)
        self._cuda_impl: Optional[nn.Module] = None  # lazily created, shares self.mixer's parameters

    def _use_cuda(self, x: torch.Tensor) -> bool:
        if self.backend == "torch":
            return False
        if self.backend == "cuda":
            return True
        if not x.is_cuda:
            return False
        if mamba_ssm_available():
            return True
        if not _warned:  # on a GPU the torch scan is much slower: say so, once, with the reason
            _warned.append(True)
            warnings.warn(f"Mamba: mamba-ssm's CUDA scan not used ({mamba_ssm_import_error()}); the PyTorch "
                          "scan runs instead (same parameters and results, slower)", stacklevel=2)
        return False

    def _cuda(self) -> nn.Module:
        if self._cuda_impl is None:
            from mamba_ssm import Mamba

            m = self.mixer
            cfg = m.config
            impl = Mamba(d_model=self.d_model, d_state=cfg.d_state, d_conv=cfg.d_conv, expand=cfg.expand_factor,
                         dt_rank=cfg.dt_rank, conv_bias=cfg.conv_bias, bias=cfg.bias)
            # tie parameters: the CUDA module uses exactly the torch block's tensors
            for name in ("in_proj", "conv1d", "x_proj", "dt_proj", "out_proj"):
                setattr(impl, name, getattr(m, name))
            impl.A_log = m.A_log
            impl.D = m.D
            object.__setattr__(self, "_cuda_impl", impl)  # not registered: no duplicate state-dict keys
        return self._cuda_impl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._use_cuda(x):
            if not x.is_cuda:
                raise RuntimeError("MambaLayer(backend='cuda') got a CPU tensor; use backend='auto' or 'torch'")
            return self._cuda()(x)
        # fp32 selective scan (fsseg.precision): the recurrence multiplies exp(dt*A) over the whole
        # sequence, and bf16 rounding compounds along it; mamba_ssm's CUDA kernel scans in fp32 too
        with torch.autocast(x.device.type, enabled=False):
            return self.mixer(x.float()).to(x.dtype)
