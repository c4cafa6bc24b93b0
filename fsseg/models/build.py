"""Builders / registry: any FS-DINO variant with random weights, or initialised from the official
DINOv2 and SAM checkpoints (local paths or URLs, see ``weights.resolve_checkpoint``) and from a
stage-1 adapter checkpoint.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Optional

import torch

from .adapter import BottleneckAdapter
from .backbones import BACKBONES
from .correlation import Correlation4D
from .decoder import FewShotMaskDecoder
from .encoder import DINOv2Encoder
from .fsdino import FSDINO, VARIANTS
from .hypercorrelation import CompactMambaHyperCorrelation, MambaHyperCorrelation
from .prompts import MaskDownscaling, RandomFourierPositionEncoding, SemanticVisualPrompt
from .teacher import SAMImageEncoder
from .weights import (
    CheckpointMismatchError,
    CheckpointNotFoundError,
    WeightsError,
    load_state_dict_file,
    resolve_checkpoint,
    strict_load,
)

VARIANT_ALIASES = {
    "ba_pcs": "ba_pcs", "ba+pcs": "ba_pcs",
    "compact": "compact", "ba+svp+pcs": "compact",
    "full": "full", "ba+svp+pcs+4d": "full",
    "uino": "uino", "uino-fss": "uino", "uino_fss": "uino",
    "uino_large": "uino_large",
}


def canonical_variant(name: str) -> str:
    key = name.strip().lower().replace(" ", "")
    if key not in VARIANT_ALIASES:
        raise ValueError(f"unknown FS-DINO variant {name!r}; choose one of {sorted(set(VARIANT_ALIASES))}")
    return VARIANT_ALIASES[key]


def build_encoder(backbone: str = "dinov2_vitb14", image_size: int = 518, checkpoint: Optional[str] = None,
                  sha256: Optional[str] = None, tap_block: int = 3, cache_dir: Optional[str] = None,
                  tap_norm: bool = False, pos_interpolation: str = "official", **overrides) -> DINOv2Encoder:
    if pos_interpolation != "official":  # the encoder resamples its 518 table as the dinov2 hub models do
        raise ValueError(f"pos_interpolation {pos_interpolation!r}: only 'official' exists")
    return DINOv2Encoder(backbone, tap_block=tap_block, checkpoint=checkpoint, sha256=sha256,
                         cache_dir=cache_dir, tap_norm=tap_norm, **overrides)


def build_teacher(variant: str = "vit_h", checkpoint: Optional[str] = None, sha256: Optional[str] = None,
                  cache_dir: Optional[str] = None, **overrides) -> SAMImageEncoder:
    return SAMImageEncoder(variant, checkpoint=checkpoint, sha256=sha256, cache_dir=cache_dir, **overrides)


def _adapter_subdict(sd: dict, adapter_keys) -> dict:
    """Adapter weights from a plain adapter state dict, a dict with an ``adapter.`` (or
    ``<anything>.adapter.``) prefix, or a Lightning checkpoint (``state_dict`` entry)."""
    if "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if set(adapter_keys) <= set(sd):
        return {k: sd[k] for k in adapter_keys} if set(sd) == set(adapter_keys) else dict(sd)
    prefixes = {k[: k.index("adapter.") + len("adapter.")] for k in sd if "adapter." in k}
    best, best_n = None, -1
    for p in prefixes:
        n = sum(1 for k in adapter_keys if p + k in sd)
        if n > best_n:
            best, best_n = p, n
    if best is None:
        return dict(sd)  # strict_load will report the mismatch
    return {k[len(best):]: v for k, v in sd.items() if k.startswith(best)}


def require_previous_stage(arg: str, path_or_url: Optional[str]) -> None:
    """A stage-1 adapter file named by ``arg`` (``adapter_init`` / ``adapter_checkpoint``) must exist
    before anything is built: say which run writes it and how to start from another adapter or none."""
    if not path_or_url or "://" in str(path_or_url) or Path(str(path_or_url)).expanduser().is_file():
        return
    raise CheckpointNotFoundError(
        f"{arg} {path_or_url}: file not found. It is the adapter of the previous distillation stage: run that "
        f"stage first (lightning_configs/distill_126.yaml -> distill_252.yaml -> distill_518.yaml, or "
        f"distill_curriculum.yaml), start from another adapter with --model.init_args.{arg} PATH, or from "
        f"random adapter weights with --model.init_args.{arg} null")


def load_adapter_state(adapter: torch.nn.Module, path_or_url: str, sha256: Optional[str] = None,
                       cache_dir: Optional[str] = None) -> torch.nn.Module:
    """Load a stage-1 adapter: plain ``BottleneckAdapter`` state dict (optionally under ``adapter.``)
    or a Lightning checkpoint whose ``state_dict`` holds ``adapter.*`` (or ``*.adapter.*``) keys."""
    path = resolve_checkpoint(path_or_url, sha256=sha256, cache_dir=cache_dir)
    sd = load_state_dict_file(path)
    if not isinstance(sd, dict):
        raise CheckpointMismatchError(f"adapter checkpoint {path} does not hold a state dict")
    strict_load(adapter, _adapter_subdict(sd, list(adapter.state_dict())), source=str(path))
    return adapter


# FS-DINO sec. 3.3.1 taken literally: convs with nothing between them, no position encoding
PAPER_LITERAL_ADAPTER = {"pos_encoding": "none", "conv_act": False}


def _adapter_defaults() -> dict:
    import inspect

    sig = inspect.signature(BottleneckAdapter.__init__)
    return {k: p.default for k, p in sig.parameters.items() if k not in ("self", "in_dim", "out_dim")}


def stage1_adapter_settings(path_or_url: str, sha256: Optional[str] = None,
                            cache_dir: Optional[str] = None) -> Optional[dict]:
    """The adapter settings a stage-1 (``DistillationModule``) checkpoint was trained with:
    ``{"adapter_kwargs": {...}, "tap_norm": bool}``; None for a file without hyper-parameters (a
    plain adapter state dict). Checkpoints written before these settings existed give fsseg's
    defaults of that time (sine position encoding, GELUs, raw block tap)."""
    sd = load_state_dict_file(resolve_checkpoint(path_or_url, sha256=sha256, cache_dir=cache_dir))
    hp = sd.get("hyper_parameters") if isinstance(sd, dict) else None
    if not isinstance(hp, dict) or "adapter_mid_dim" not in hp:
        return None
    kw = dict(_adapter_defaults(), mid_dim=hp["adapter_mid_dim"],
              bottleneck_dim=hp.get("adapter_bottleneck_dim", 128))
    kw.update(hp.get("adapter_kwargs") or {})
    return {"adapter_kwargs": kw, "tap_norm": bool(hp.get("tap_norm") or False)}


def resolve_adapter_settings(adapter_checkpoint: Optional[str], adapter_kwargs: Optional[dict],
                             tap_norm: Optional[bool], **resolve_kw) -> tuple[dict, bool]:
    """Adapter kwargs and ``tap_norm`` for an adapter built on ``adapter_checkpoint``: taken from
    the checkpoint's hyper-parameters when it has them; an explicit setting that differs from
    them is an error naming both values (it would load the weights into another computation)."""
    stored = stage1_adapter_settings(adapter_checkpoint, **resolve_kw) if adapter_checkpoint else None
    if stored is None:
        return dict(adapter_kwargs or {}), bool(tap_norm)
    kw = dict(stored["adapter_kwargs"])
    for k, v in (adapter_kwargs or {}).items():
        if k in kw and kw[k] != v:
            raise ValueError(f"adapter_kwargs {k}={v!r} conflicts with the adapter checkpoint "
                             f"{adapter_checkpoint}, trained with {k}={kw[k]!r}; drop the setting or "
                             f"use a matching checkpoint")
        kw[k] = v
    if tap_norm is not None and bool(tap_norm) != stored["tap_norm"]:
        raise ValueError(f"tap_norm={tap_norm!r} conflicts with the adapter checkpoint {adapter_checkpoint}, "
                         f"trained with tap_norm={stored['tap_norm']!r}")
    return kw, stored["tap_norm"]


def load_sam_prompt_decoder(model: FSDINO, path_or_url: str, sha256: Optional[str] = None,
                            cache_dir: Optional[str] = None) -> FSDINO:
    """Initialise decoder (``mask_decoder.*``), mask downscaling (``prompt_encoder.mask_downscaling.*``)
    and the PE Gaussian matrix (``prompt_encoder.pe_layer.*``) from an official SAM checkpoint."""
    path = resolve_checkpoint(path_or_url, sha256=sha256, cache_dir=cache_dir)
    sd = load_state_dict_file(path)
    sd = sd.get("state_dict", sd)
    src = str(path)
    model.decoder.load_sam_state(sd, source=src)
    md = {k[len("prompt_encoder."):]: v for k, v in sd.items() if k.startswith("prompt_encoder.mask_downscaling.")}
    if model.mask_downscaling.no_mask_embed is not None and "prompt_encoder.no_mask_embed.weight" in sd:
        md["no_mask_embed.weight"] = sd["prompt_encoder.no_mask_embed.weight"]
    strict_load(model.mask_downscaling, md, source=src)
    key = "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
    if key not in sd:
        raise CheckpointMismatchError(f"checkpoint {src} has no {key} (not a SAM checkpoint?)")
    strict_load(model.pe_layer, {"positional_encoding_gaussian_matrix": sd[key]}, source=src)
    return model


def build_fsdino(
    variant: str = "full",
    backbone: str = "dinov2_vitb14",
    image_size: int = 518,
    dinov2_checkpoint: Optional[str] = None,
    sam_checkpoint: Optional[str] = None,
    adapter_checkpoint: Optional[str] = None,
    decoder_dim: int = 256,
    decoder_depth: int = 2,
    decoder_mlp_dim: int = 2048,
    decoder_heads: int = 8,
    adapter_kwargs: Optional[dict] = None,
    correlation_kwargs: Optional[dict] = None,
    svp_kwargs: Optional[dict] = None,
    mamba_backend: str = "auto",
    mask_in_chans: int = 16,
    tap_block: int = 3,
    tap_norm: Optional[bool] = None,
    pos_interpolation: str = "official",
    freeze_adapter: bool = True,
    dinov2_sha256: Optional[str] = None,
    sam_sha256: Optional[str] = None,
    adapter_sha256: Optional[str] = None,
    cache_dir: Optional[str] = None,
    encoder_overrides: Optional[dict] = None,
    **fsdino_kwargs,
) -> FSDINO:
    """Build any variant (``ba_pcs``/``BA+PCS``, ``compact``/``BA+SVP+PCS``, ``full``/``BA+SVP+PCS+4D``,
    ``uino``, ``uino_large``). Random weights where no checkpoint is given. ``correlation_kwargs`` go to
    ``Correlation4D``/``MambaHyperCorrelation`` (default ``corr_grid = image_size // 14``).
    ``adapter_kwargs`` / ``tap_norm``: taken from a stage-1 ``adapter_checkpoint`` when it records
    them (a differing explicit value is an error); otherwise today's adapter and the raw block tap."""
    variant = canonical_variant(variant)
    BACKBONES.canonical(backbone)  # an unknown name fails here, naming the registered ones
    adapter_kwargs, tap_norm = resolve_adapter_settings(adapter_checkpoint, adapter_kwargs, tap_norm,
                                                        sha256=adapter_sha256, cache_dir=cache_dir)
    encoder = build_encoder(backbone, image_size, dinov2_checkpoint, dinov2_sha256, tap_block, cache_dir,
                            tap_norm=tap_norm, pos_interpolation=pos_interpolation, **(encoder_overrides or {}))
    C = encoder.embed_dim
    adapter = BottleneckAdapter(in_dim=C, out_dim=decoder_dim, **adapter_kwargs)
    if adapter_checkpoint is not None:
        load_adapter_state(adapter, adapter_checkpoint, sha256=adapter_sha256, cache_dir=cache_dir)
    decoder = FewShotMaskDecoder(decoder_dim, decoder_depth, decoder_mlp_dim, decoder_heads)
    svp = SemanticVisualPrompt(C, decoder_dim, **(svp_kwargs or {})) if variant != "ba_pcs" else None
    ck = dict(corr_grid=image_size // 14)
    ck.update(correlation_kwargs or {})
    correlation = None
    if variant == "full":
        correlation = Correlation4D(**ck)
    elif variant in ("uino", "uino_large"):
        ck.setdefault("backend", mamba_backend)
        cls = CompactMambaHyperCorrelation if variant == "uino" else MambaHyperCorrelation
        import inspect

        unknown = sorted(set(ck) - set(inspect.signature(cls.__init__).parameters))
        if unknown:
            raise ValueError(f"correlation_kwargs {unknown} do not apply to variant {variant!r} ({cls.__name__})")
        correlation = cls(**ck)
    model = FSDINO(
        encoder=encoder,
        adapter=adapter,
        decoder=decoder,
        variant=variant,
        svp=svp,
        correlation=correlation,
        pe_layer=RandomFourierPositionEncoding(decoder_dim // 2),
        mask_downscaling=MaskDownscaling(decoder_dim, mask_in_chans),
        freeze_adapter=freeze_adapter,
        **fsdino_kwargs,
    )
    if sam_checkpoint is not None:
        load_sam_prompt_decoder(model, sam_checkpoint, sha256=sam_sha256, cache_dir=cache_dir)
    return model


MODEL_REGISTRY = {v: partial(build_fsdino, variant=v) for v in VARIANTS}

__all__ = [
    "build_fsdino", "build_encoder", "build_teacher", "load_adapter_state", "load_sam_prompt_decoder",
    "canonical_variant", "VARIANT_ALIASES", "MODEL_REGISTRY", "WeightsError",
]
