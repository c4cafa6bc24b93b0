"""Frozen DINOv2 encoder (timm ``VisionTransformer``) with two taps: block ``tap_block`` and last layer.

Built from an architecture of the backbone table (``fsseg.models.backbones.BACKBONES``: the official
DINOv2 ViT-S/B/L/g 14 and ``dinov2_tiny``). Any input whose height and width are multiples of 14 works.

Position embeddings at other sizes than 518: the table keeps the checkpoint's 37x37 grid (the hub
models are built with ``img_size=518``) and is resampled per input as facebookresearch/dinov2
``dinov2/models/vision_transformer.py:180-212`` ``interpolate_pos_encoding`` does: bicubic, in
float32; models without registers use ``interpolate_offset=0.1`` through
``scale_factor=((h+0.1)/37, (w+0.1)/37)`` and no antialias (``dinov2/hub/backbones.py:27-28``, the
``_make_dinov2_model`` defaults the four plain builders keep), ``_reg4`` models an output ``size``
with antialias (``backbones.py:107-108, 122-123, 137-138, 153-154``: ``interpolate_antialias=True,
interpolate_offset=0.0``). At the native grid the table is used as is (official ``npatch == N and
w == h`` early return).

Loading an official checkpoint (``dinov2_vitb14_pretrain.pth`` etc.): the state dict goes through
``timm.models.vision_transformer.checkpoint_filter_fn`` (drops ``mask_token``, maps
``register_tokens``, ``mlp.w12/w3`` -> ``fc1/fc2``, resamples ``pos_embed`` to the model grid)
and is then loaded strictly; a checkpoint of another architecture raises
``CheckpointMismatchError``. A checkpoint already in timm's layout loads too.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from timm.layers import Attention as TimmAttention
from timm.layers import Mlp as TimmMlp
from torch import nn

# importing fsseg.kernels defines the kernels' ops and FLOP formulas (it builds nothing)
from fsseg.kernels.cpu_attention import cpu_attention_kernel
from fsseg.kernels.onednn_linear import OneDNNLinear, use_onednn_linears

from .backbones import BACKBONES, DINOv2Arch
from .weights import CheckpointMismatchError, load_state_dict_file, resolve_checkpoint, strict_load

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

class EncoderFeatures(NamedTuple):
    early: torch.Tensor  # [B, C, H/14, W/14], output of block `tap_block` (final norm if tap_norm)
    last: torch.Tensor  # [B, C, H/14, W/14], final normed output


def interpolate_pos_encoding(patch_pos: torch.Tensor, grid: tuple[int, int], offset: float,
                             antialias: bool) -> torch.Tensor:
    """``[1, M*M, C]`` patch position table -> ``[1, h*w, C]`` for a ``grid=(h, w)`` input, as
    dinov2 ``vision_transformer.py:180-212`` (float32 bicubic; offset through ``scale_factor``)."""
    M = int(math.sqrt(patch_pos.shape[1]))
    if M * M != patch_pos.shape[1]:
        raise ValueError(f"position table of {patch_pos.shape[1]} tokens is not a square grid")
    h, w = grid
    dim = patch_pos.shape[-1]
    kw = dict(scale_factor=((h + offset) / M, (w + offset) / M)) if offset else dict(size=(h, w))
    x = F.interpolate(patch_pos.float().reshape(1, M, M, dim).permute(0, 3, 1, 2), mode="bicubic",
                      antialias=antialias, **kw)
    if tuple(x.shape[-2:]) != (h, w):
        raise RuntimeError(f"position interpolation gave {tuple(x.shape[-2:])} for grid {(h, w)}")
    return x.permute(0, 2, 3, 1).reshape(1, h * w, dim).to(patch_pos.dtype)


class DINOv2Attention(TimmAttention):
    """timm's ViT attention (same parameters and state-dict keys) whose CPU inference passes run
    ``fsseg.kernels.bf16_attention`` / ``fp32_attention`` (``fsseg/kernels/cpu_attention.py`` says when
    and why). Every other case (GPU, gradients, masks, fp16, no AVX512-BF16, tracing for export) is timm's
    forward. ``cpu_kernel=False`` keeps timm's forward everywhere (``DINOv2Encoder(attention_kernel=...)``)."""

    cpu_kernel: bool = True

    def _kernel(self, x: torch.Tensor, attn_mask, is_causal: bool):
        """The fsseg kernel for this call, or None for timm's forward."""
        if not self.cpu_kernel or attn_mask is not None or is_causal:
            return None
        if self.gate is not None or not all(isinstance(m, nn.Identity) for m in (self.q_norm, self.k_norm, self.norm)):
            return None
        if self.training and self.attn_drop.p > 0:
            return None
        return cpu_attention_kernel(x, self.qkv.weight, self.num_heads, self.head_dim, self.scale)

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False):
        kernel = self._kernel(x, attn_mask, is_causal)
        if kernel is None:
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        return self.proj_drop(self.proj(kernel(self.qkv(x))))


class DINOv2Mlp(TimmMlp):
    """timm's ViT MLP (same parameters and keys) with fc1's exact GELU fused into the matmul where
    fc1 runs on oneDNN (``OneDNNLinear``, CPU inference); elsewhere fc1 -> GELU as timm computes it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.fc1, OneDNNLinear) and type(self.act) is nn.GELU and self.act.approximate == "none":
            x = self.fc1(x, gelu=True)
        else:
            x = self.act(self.fc1(x))
        return self.drop2(self.fc2(self.norm(self.drop1(x))))


def build_dinov2_vit(arch: str | DINOv2Arch = "dinov2_vitb14", **overrides) -> nn.Module:
    """timm's ``VisionTransformer`` for a ``BACKBONES`` name (or an architecture), with the
    checkpoints' 518 position table; ``overrides`` go to ``VisionTransformer``."""
    from timm.layers import SwiGLUPacked
    from timm.models.vision_transformer import VisionTransformer

    a = arch if isinstance(arch, DINOv2Arch) else BACKBONES.get(arch)
    kw = dict(
        img_size=a.img_size,
        patch_size=a.patch_size,
        embed_dim=a.embed_dim,
        depth=a.depth,
        num_heads=a.num_heads,
        init_values=1e-5,
        num_classes=0,
        dynamic_img_size=True,
        attn_layer=DINOv2Attention,
        mlp_layer=DINOv2Mlp,
    )
    if a.reg_tokens:
        kw.update(reg_tokens=a.reg_tokens, no_embed_class=True)
    if a.swiglu:
        # timm vit_giant_patch14_dinov2: SwiGLU hidden 4096 packed as fc1 of 8192
        kw.update(mlp_ratio=2.66667 * 2, mlp_layer=SwiGLUPacked, act_layer=nn.SiLU)
    kw.update(overrides)
    vit = VisionTransformer(**kw)
    use_onednn_linears(vit.blocks)  # every block linear: qkv, proj, fc1, fc2 (fc1/fc2 of SwiGLU too)
    return vit


class DINOv2Encoder(nn.Module):
    """DINOv2 ViT/14 returning block-``tap_block`` (1-based) and last-layer patch features.

    Input: images ``[B,3,H,W]`` in ``[0,1]`` (ImageNet normalisation happens here), H, W multiples of 14.

    ``arch``: a ``BACKBONES`` name (``module:name`` for one registered outside fsseg). The position
    table keeps the checkpoints' 518 (37x37) grid whatever the input size (module docstring).
    ``tap_norm``: pass the block-``tap_block`` tokens through the final LayerNorm, as the official
    ``get_intermediate_layers(norm=True)`` default does (``vision_transformer.py:304,310``). FS-DINO
    does not say; False (default) keeps the raw block output, which is what every stage-1
    checkpoint so far was distilled from.
    ``attention_kernel`` / ``onednn_linears``: CPU inference speed only (``DINOv2Attention``,
    ``OneDNNLinear``); False gives torch's default ops, the same function to float rounding.
    """

    def __init__(
        self,
        arch: str = "dinov2_vitb14",
        tap_block: int = 3,
        checkpoint: Optional[str] = None,
        sha256: Optional[str] = None,
        frozen: bool = True,
        cache_dir: Optional[str] = None,
        tap_norm: bool = False,
        attention_kernel: bool = True,
        onednn_linears: bool = True,
        **overrides,
    ):
        super().__init__()
        self.arch = arch  # as given: a plugin's ``module:name`` is imported again when rebuilt
        self.arch_spec: DINOv2Arch = BACKBONES.get(arch)
        self.tap_norm = tap_norm
        self.vit = build_dinov2_vit(self.arch_spec, **overrides)
        for blk in self.vit.blocks:
            if isinstance(blk.attn, DINOv2Attention):
                blk.attn.cpu_kernel = attention_kernel
        for m in self.vit.blocks.modules():
            if isinstance(m, OneDNNLinear):
                m.enabled = onednn_linears
        depth = len(self.vit.blocks)
        if not 1 <= tap_block <= depth:
            raise ValueError(f"tap_block must be in [1, {depth}], got {tap_block}")
        self.tap_block = tap_block
        self.embed_dim = self.vit.embed_dim
        self.patch_size = self.arch_spec.patch_size
        self.frozen = frozen
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.checkpoint_path = None
        if checkpoint is not None:
            self.load_checkpoint(checkpoint, sha256=sha256, cache_dir=cache_dir)
        if frozen:
            self.requires_grad_(False)
            self.eval()

    def load_checkpoint(self, path_or_url: str, sha256: Optional[str] = None, cache_dir: Optional[str] = None):
        from timm.models.vision_transformer import checkpoint_filter_fn

        path = resolve_checkpoint(path_or_url, sha256=sha256, cache_dir=cache_dir)
        sd = load_state_dict_file(path)
        if not isinstance(sd, dict):
            raise CheckpointMismatchError(f"checkpoint {path} does not hold a state dict")
        sd = sd.get("model", sd)
        if not any(k in sd for k in ("patch_embed.proj.weight", "cls_token", "pos_embed")):
            strict_load(self.vit, sd, source=str(path))  # not a ViT checkpoint: report its keys
        try:
            sd = checkpoint_filter_fn(dict(sd), self.vit)
        except Exception as e:  # e.g. pos_embed of an incompatible width
            raise CheckpointMismatchError(
                f"checkpoint {path} does not match DINOv2 arch {self.arch!r}: {e}"
            ) from e
        strict_load(self.vit, sd, source=str(path))
        self.checkpoint_path = str(path)
        return self

    def train(self, mode: bool = True):
        # a frozen encoder stays in eval mode whatever the parent module does
        return super().train(False if self.frozen else mode)

    def _tokens(self, images: torch.Tensor):
        if images.shape[-1] % self.patch_size or images.shape[-2] % self.patch_size:
            raise ValueError(f"DINOv2 input H, W must be multiples of {self.patch_size}, got {tuple(images.shape[-2:])}")
        v = self.vit
        # normalise in fp32, then into the weights' dtype (bf16 when held in bf16: fsseg.precision).
        # Inside the blocks bf16 keeps its accuracy where it matters: LayerNorm statistics and the
        # attention softmax (scaled_dot_product_attention) accumulate in fp32 in torch's bf16 kernels.
        x = ((images.float() - self.mean.float()) / self.std.float()).to(v.patch_embed.proj.weight.dtype)
        x = v.patch_embed(x)  # [B, h, w, C] with dynamic_img_size
        h, w = x.shape[1], x.shape[2]
        x = self._pos_embed(x)
        x = v.patch_drop(x)
        x = v.norm_pre(x)
        return x, h, w

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        """``[B,h,w,C]`` patch tokens -> ``[B, prefix + h*w, C]`` with prefix tokens and positions."""
        v = self.vit
        h, w = x.shape[1], x.shape[2]
        if (h, w) == tuple(v.patch_embed.grid_size):
            return v._pos_embed(x)  # native grid: the table as is (official early return)
        a = self.arch_spec
        n_cls = 0 if v.no_embed_class else v.num_prefix_tokens  # timm keeps no cls slot for reg4
        table = v.pos_embed
        pos = interpolate_pos_encoding(table[:, n_cls:], (h, w), a.interpolate_offset, a.interpolate_antialias)
        x = x.reshape(x.shape[0], h * w, x.shape[-1])
        prefix = [t.expand(x.shape[0], -1, -1) for t in (v.cls_token, v.reg_token) if t is not None]
        if v.no_embed_class:  # reg4: tokens + positions, then [cls, registers, tokens]
            x = torch.cat(prefix + [x + pos], dim=1)
        else:  # plain: [cls, tokens] + [cls slot, positions] (vision_transformer.py:219-221)
            x = torch.cat(prefix + [x], dim=1) + torch.cat([table[:, :n_cls], pos], dim=1)
        return v.pos_drop(x)

    def _tap(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return self._to_map(self.vit.norm(x) if self.tap_norm else x, h, w)

    def _to_map(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x[:, self.vit.num_prefix_tokens :]
        return x.transpose(1, 2).reshape(x.shape[0], -1, h, w)

    def forward_early(self, images: torch.Tensor) -> torch.Tensor:
        x, h, w = self._tokens(images)
        for blk in self.vit.blocks[: self.tap_block]:
            x = blk(x)
        return self._tap(x, h, w)

    def forward(self, images: torch.Tensor) -> EncoderFeatures:
        x, h, w = self._tokens(images)
        early = None
        for i, blk in enumerate(self.vit.blocks):
            x = blk(x)
            if i + 1 == self.tap_block:
                early = self._tap(x, h, w)
        last = self._to_map(self.vit.norm(x), h, w)
        return EncoderFeatures(early=early, last=last)
