"""The registered methods: FS-DINO's ablation rows (paper Table 4), UINO-FSS, and the ``tiny`` preset.

================  ==========================  =====================================================
``ba_pcs``        BA+PCS                      no sparse token (SAM's empty sparse prompt); dense = PCS
``compact``       BA+SVP+PCS                  SVP token; dense = PCS
``full``          BA+SVP+PCS+4D               SVP token; dense = prior of ``Correlation4D``
``uino``          UINO-FSS                    SVP token; dense = prior of ``CompactMambaHyperCorrelation``
``uino_large``    UINO-FSS, larger MHCM       SVP token; dense = prior of ``MambaHyperCorrelation``
================  ==========================  =====================================================

Every builder takes its own arguments plus those of ``build_fsdino`` (the shared network).
"""
from __future__ import annotations

import inspect
from typing import Optional

from .build import build_fsdino
from .correlation import Correlation4D
from .fsdino import FSDINO, CorrelationFSDINO
from .hypercorrelation import CompactMambaHyperCorrelation, MambaHyperCorrelation
from .segmenters import MODULE_ARGS, SPEC_FLAG, build_segmenter, register_segmenter
from .specialized import exact_pcs_prior, fit_dense_prior


def _correlation_args(cls: type, image_size: int, correlation_kwargs: Optional[dict], **defaults) -> dict:
    """``cls``'s arguments: the grid of the image (``image_size // 14``), ``defaults``, then the user's."""
    ck = dict(corr_grid=image_size // 14, **defaults)
    ck.update(correlation_kwargs or {})
    unknown = sorted(set(ck) - set(inspect.signature(cls.__init__).parameters))
    if unknown:
        raise ValueError(f"{SPEC_FLAG}.correlation_kwargs {unknown} do not apply to {cls.__name__}")
    return ck


@register_segmenter("ba_pcs", aliases=("BA+PCS",), student_init=exact_pcs_prior, paper_row="BA+PCS",
                    extends=build_fsdino)
def ba_pcs(**network) -> FSDINO:
    return build_fsdino(FSDINO, svp=False, **network)


@register_segmenter("compact", aliases=("BA+SVP+PCS",), student_init=exact_pcs_prior, paper_row="BA+SVP+PCS",
                    extends=build_fsdino)
def compact(**network) -> FSDINO:
    return build_fsdino(FSDINO, **network)


@register_segmenter("full", aliases=("BA+SVP+PCS+4D",), student_init=fit_dense_prior, paper_row="BA+SVP+PCS+4D",
                    extends=build_fsdino)
def full(correlation_kwargs: Optional[dict] = None, **network) -> CorrelationFSDINO:
    """``correlation_kwargs``: ``Correlation4D`` options (default ``corr_grid = image_size // 14``)."""

    def parts(image_size: int) -> dict:
        return {"correlation": Correlation4D(**_correlation_args(Correlation4D, image_size, correlation_kwargs))}

    return build_fsdino(CorrelationFSDINO, parts, **network)


def _uino(cls: type, correlation_kwargs: Optional[dict], mamba_backend: str, network: dict) -> CorrelationFSDINO:
    def parts(image_size: int) -> dict:
        ck = _correlation_args(cls, image_size, correlation_kwargs, backend=mamba_backend)
        return {"correlation": cls(**ck), "correlation_part": "mhcm"}

    return build_fsdino(CorrelationFSDINO, parts, **network)


@register_segmenter("uino", aliases=("UINO-FSS",), student_init=fit_dense_prior, paper_row="UINO-FSS",
                    extends=build_fsdino)
def uino(correlation_kwargs: Optional[dict] = None, mamba_backend: str = "auto", **network) -> CorrelationFSDINO:
    """UINO-FSS: the compact MHCM (``CompactMambaHyperCorrelation``); ``mamba_backend``: ``auto`` /
    ``torch`` / ``mamba_ssm`` (``fsseg.models.mamba``)."""
    return _uino(CompactMambaHyperCorrelation, correlation_kwargs, mamba_backend, network)


@register_segmenter("uino_large", student_init=fit_dense_prior, extends=build_fsdino)
def uino_large(correlation_kwargs: Optional[dict] = None, mamba_backend: str = "auto", **network) -> CorrelationFSDINO:
    """UINO-FSS with the larger MHCM (``MambaHyperCorrelation``)."""
    return _uino(MambaHyperCorrelation, correlation_kwargs, mamba_backend, network)


# The small model of the tests and the demo: seconds on a CPU (at the module's image_size, 112 there).
TINY_NETWORK = dict(backbone="dinov2_tiny", decoder_dim=32, decoder_depth=2, decoder_mlp_dim=64, decoder_heads=2)


@register_segmenter("tiny", preset_of="method", preset=TINY_NETWORK)
def tiny(method: str = "full", **arguments) -> FSDINO:
    """``method`` (any registered one) with ``TINY_NETWORK``; further arguments are ``method``'s."""
    module_args = {k: arguments.pop(k) for k in MODULE_ARGS if k in arguments}
    return build_segmenter({"name": method, **TINY_NETWORK, **arguments}, **module_args)
