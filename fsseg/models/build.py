"""The FS-DINO network every method shares (``build_fsdino``), with random weights or initialised
from the official DINOv2 and SAM checkpoints (local paths or URLs, see ``weights.resolve_checkpoint``)
and from a stage-1 adapter checkpoint. The methods themselves: ``fsseg.models.methods``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import torch

from .adapter import BottleneckAdapter
from .backbones import BACKBONES
from .decoder import FewShotMaskDecoder
from .encoder import DINOv2Encoder
from .fsdino import FSDINO
from .prompts import MaskDownscaling, RandomFourierPositionEncoding, SemanticVisualPrompt
from .weights import (
    CheckpointMismatchError,
    CheckpointNotFoundError,
    WeightsError,
    load_state_dict_file,
    resolve_checkpoint,
    strict_load,
)


def build_encoder(backbone: str = "dinov2_vitb14", image_size: int = 518, checkpoint: Optional[str] = None,
                  sha256: Optional[str] = None, tap_block: int = 3, cache_dir: Optional[str] = None,
                  tap_norm: bool = False, **overrides) -> DINOv2Encoder:
    return DINOv2Encoder(backbone, tap_block=tap_block, checkpoint=checkpoint, sha256=sha256,
                         cache_dir=cache_dir, tap_norm=tap_norm, **overrides)


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
    ``{"adapter_kwargs": {...}, "tap_norm": bool}`` (every ``BottleneckAdapter`` argument, its defaults
    filled in, so a differing explicit setting is seen); None for a file without hyper-parameters (a
    plain adapter state dict)."""
    sd = load_state_dict_file(resolve_checkpoint(path_or_url, sha256=sha256, cache_dir=cache_dir))
    hp = sd.get("hyper_parameters") if isinstance(sd, dict) else None
    if not isinstance(hp, dict) or "adapter_mid_dim" not in hp:
        return None
    if "adapter_kwargs" not in hp or "tap_norm" not in hp:
        raise CheckpointMismatchError(f"{path_or_url}: a stage-1 checkpoint without its adapter settings "
                                      "(adapter_kwargs, tap_norm): not written by this fsseg version")
    return {"adapter_kwargs": {**_adapter_defaults(), **hp["adapter_kwargs"]}, "tap_norm": bool(hp["tap_norm"])}


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
    model_class: type = FSDINO,
    parts: Optional[Callable[[int], dict]] = None,
    /,
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
    svp: bool = True,
    svp_kwargs: Optional[dict] = None,
    mask_in_chans: int = 16,
    tap_block: int = 3,
    tap_norm: Optional[bool] = None,
    freeze_adapter: bool = True,
    pcs_prior_scale: float = 10.0,
    pcs_prior_shift: float = 0.0,
    allow_empty_support: bool = False,
    dinov2_sha256: Optional[str] = None,
    sam_sha256: Optional[str] = None,
    adapter_sha256: Optional[str] = None,
    cache_dir: Optional[str] = None,
    encoder_overrides: Optional[dict] = None,
) -> FSDINO:
    """The network every method shares: frozen DINOv2, bottleneck adapter, SVP (``svp``), PE, mask
    downscaling and SAM's mask decoder, assembled into ``model_class`` with the method's own modules
    (``parts(image_size) -> constructor kwargs``, e.g. the correlation). Random weights where no
    checkpoint is given. ``adapter_kwargs`` / ``tap_norm``: taken from a stage-1 ``adapter_checkpoint``
    when it records them (a differing explicit value is an error); otherwise today's adapter and the
    raw block tap."""
    BACKBONES.canonical(backbone)  # an unknown name fails here, naming the registered ones
    adapter_kwargs, tap_norm = resolve_adapter_settings(adapter_checkpoint, adapter_kwargs, tap_norm,
                                                        sha256=adapter_sha256, cache_dir=cache_dir)
    encoder = build_encoder(backbone, image_size, dinov2_checkpoint, dinov2_sha256, tap_block, cache_dir,
                            tap_norm=tap_norm, **(encoder_overrides or {}))
    C = encoder.embed_dim
    adapter = BottleneckAdapter(in_dim=C, out_dim=decoder_dim, **adapter_kwargs)
    if adapter_checkpoint is not None:
        load_adapter_state(adapter, adapter_checkpoint, sha256=adapter_sha256, cache_dir=cache_dir)
    decoder = FewShotMaskDecoder(decoder_dim, decoder_depth, decoder_mlp_dim, decoder_heads)
    # creation order = order of the random draws: seeded runs build the same weights
    svp_module = SemanticVisualPrompt(C, decoder_dim, **(svp_kwargs or {})) if svp else None
    own = parts(image_size) if parts is not None else {}
    model = model_class(
        encoder=encoder,
        adapter=adapter,
        decoder=decoder,
        svp=svp_module,
        pe_layer=RandomFourierPositionEncoding(decoder_dim // 2),
        mask_downscaling=MaskDownscaling(decoder_dim, mask_in_chans),
        freeze_adapter=freeze_adapter,
        pcs_prior_scale=pcs_prior_scale,
        pcs_prior_shift=pcs_prior_shift,
        allow_empty_support=allow_empty_support,
        **own,
    )
    if sam_checkpoint is not None:
        load_sam_prompt_decoder(model, sam_checkpoint, sha256=sam_sha256, cache_dir=cache_dir)
    return model


__all__ = [
    "build_fsdino", "build_encoder", "load_adapter_state", "load_sam_prompt_decoder", "WeightsError",
]
