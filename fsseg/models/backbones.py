"""The backbone table: every frozen encoder fsseg builds, by name, and the official weights for each.

The one place that knows the sizes (as segment-anything's ``build_sam.py``), with the weight files
kept apart from the architectures (as timm's ``default_cfgs``):

* ``BACKBONES``: DINOv2 ViT/14 students (``--model.init_args.backbone``). The official four of
  facebookresearch/dinov2 ``dinov2/hub/backbones.py`` (ViT-S/B/L/g, each plain and ``_reg4``; timm's
  ``vit_*_patch14[_reg4]_dinov2`` settings) and ``dinov2_tiny``, a random-weight stand-in for tests
  and demos.
* ``TEACHERS``: SAM image encoders, the distillation teacher (``--model.init_args.teacher``), with
  segment-anything ``build_sam.py``'s vit_h / vit_l / vit_b settings and ``tiny`` for tests.
* ``OFFICIAL_WEIGHTS``: the published checkpoint of an architecture, which ``official`` in a config
  resolves to (``fsseg.modules.checkpoints.resolve_official_weights``). Neither project publishes
  sha256 sums, so none is recorded: a file's sha256 is taken when it is first used and kept in the
  checkpoints trained from it.

A new backbone is one registration in any module, e.g.
``BACKBONES.register("my_vits14")(DINOv2Arch(embed_dim=384, depth=12, num_heads=6))``; a config then
names it ``my_package.my_module:my_vits14``, which imports the module in every process that reads
the config.
"""
from __future__ import annotations

import os
import urllib.parse
from dataclasses import asdict, dataclass
from typing import Optional

from fsseg.registry import Registry, RegistryError

BACKBONES = Registry("backbone", "--model.init_args.backbone")
TEACHERS = Registry("SAM image encoder", "--model.init_args.teacher")


@dataclass(frozen=True)
class DINOv2Arch:
    """A DINOv2 ViT with 14-pixel patches (built by ``fsseg.models.encoder.build_dinov2_vit``)."""

    embed_dim: int
    depth: int
    num_heads: int
    reg_tokens: int = 0
    swiglu: bool = False  # ViT-g's SwiGLU FFN (dinov2 ``layers/swiglu_ffn.py``)
    img_size: int = 518  # dinov2/hub/backbones.py:20: the checkpoints' position table is 37x37
    patch_size: int = 14

    @property
    def interpolate_offset(self) -> float:
        # dinov2/hub/backbones.py:28 (plain) vs :108 (reg4)
        return 0.0 if self.reg_tokens else 0.1

    @property
    def interpolate_antialias(self) -> bool:
        # dinov2/hub/backbones.py:27 (plain) vs :107 (reg4)
        return bool(self.reg_tokens)


@dataclass(frozen=True)
class SAMEncoderArch:
    """SAM's ``ImageEncoderViT`` arguments (segment_anything/build_sam.py ``_build_sam``)."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple
    img_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    out_chans: int = 256
    mlp_ratio: float = 4
    qkv_bias: bool = True
    use_rel_pos: bool = True

    def kwargs(self, **overrides) -> dict:
        """``ImageEncoderViT`` keyword arguments, with ``overrides`` (e.g. a smaller ``img_size``)."""
        kw = dict(asdict(self), **overrides)
        kw["global_attn_indexes"] = tuple(kw["global_attn_indexes"])
        return kw


def _register_dinov2(name: str, embed_dim: int, depth: int, num_heads: int, swiglu: bool = False) -> None:
    BACKBONES.register(name)(DINOv2Arch(embed_dim, depth, num_heads, 0, swiglu))
    BACKBONES.register(name + "_reg4")(DINOv2Arch(embed_dim, depth, num_heads, 4, swiglu))


_register_dinov2("dinov2_vits14", 384, 12, 6)
_register_dinov2("dinov2_vitb14", 768, 12, 12)
_register_dinov2("dinov2_vitl14", 1024, 24, 16)
_register_dinov2("dinov2_vitg14", 1536, 40, 24, swiglu=True)
BACKBONES.register("dinov2_tiny")(DINOv2Arch(48, 4, 3))  # random weights only

TEACHERS.register("vit_h")(SAMEncoderArch(1280, 32, 16, (7, 15, 23, 31)))
TEACHERS.register("vit_l")(SAMEncoderArch(1024, 24, 16, (5, 11, 17, 23)))
TEACHERS.register("vit_b")(SAMEncoderArch(768, 12, 12, (2, 5, 8, 11)))
TEACHERS.register("tiny")(SAMEncoderArch(32, 2, 2, (1,), img_size=256, window_size=4, out_chans=32))


@dataclass(frozen=True)
class WeightsRecord:
    """A published checkpoint: the architecture it fits and where to download it."""

    table: str  # "backbone" or "teacher": the registry ``arch`` is named in
    arch: str
    url: str
    sha256: Optional[str] = None

    @property
    def file_name(self) -> str:
        return os.path.basename(urllib.parse.urlparse(self.url).path)


_DINOV2 = "https://dl.fbaipublicfiles.com/dinov2/{base}/{name}_pretrain.pth"
_SAM = "https://dl.fbaipublicfiles.com/segment_anything/{file}"

OFFICIAL_WEIGHTS: dict[str, WeightsRecord] = {
    **{name: WeightsRecord("backbone", name, _DINOV2.format(base=base, name=name))
       for base in ("dinov2_vits14", "dinov2_vitb14", "dinov2_vitl14", "dinov2_vitg14")
       for name in (base, base + "_reg4")},
    "sam_vit_h": WeightsRecord("teacher", "vit_h", _SAM.format(file="sam_vit_h_4b8939.pth")),
    "sam_vit_l": WeightsRecord("teacher", "vit_l", _SAM.format(file="sam_vit_l_0b3195.pth")),
    "sam_vit_b": WeightsRecord("teacher", "vit_b", _SAM.format(file="sam_vit_b_01ec64.pth")),
}


def _weights_of(registry: Registry, table: str, name: str) -> Optional[WeightsRecord]:
    try:
        arch = registry.canonical(name)
    except RegistryError:
        return None
    return next((w for w in OFFICIAL_WEIGHTS.values() if w.table == table and w.arch == arch), None)


def backbone_weights(name: str) -> Optional[WeightsRecord]:
    """The official weights of backbone ``name`` (None for ``dinov2_tiny`` or an unknown name)."""
    return _weights_of(BACKBONES, "backbone", name)


def teacher_weights(name: str) -> Optional[WeightsRecord]:
    """The official weights of SAM image encoder ``name`` (None for ``tiny`` or an unknown name)."""
    return _weights_of(TEACHERS, "teacher", name)


def weights_by_file_name(file_name: str, table: Optional[str] = None) -> Optional[WeightsRecord]:
    """The official weights published as ``file_name`` (``dinov2_vitb14_pretrain.pth``), if any."""
    return next((w for w in OFFICIAL_WEIGHTS.values()
                 if w.file_name == file_name and (table is None or w.table == table)), None)


__all__ = ["BACKBONES", "TEACHERS", "DINOv2Arch", "SAMEncoderArch", "WeightsRecord", "OFFICIAL_WEIGHTS",
           "backbone_weights", "teacher_weights", "weights_by_file_name"]
