"""Stand-in checkpoints in the *official* key layouts, for machines that cannot download weights.

The official DINOv2 (``dinov2_vit*14_pretrain.pth``) and SAM (``sam_vit_*.pth``) files cannot be
fetched here, so the demo and the tests write seeded random weights in exactly the layouts those
files use and load them through the same code paths (`DINOv2Encoder(checkpoint=...)`,
`SAMImageEncoder(checkpoint=...)`, `build_fsdino(sam_checkpoint=...)`). Every stage of a pipeline
then shares one frozen encoder, as it would with the real weights.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch

from fsseg.atomic import atomic_write


def official_dinov2_state_dict(encoder) -> dict:
    """A ``DINOv2Encoder``'s timm weights -> the layout of ``dinov2_*_pretrain.pth`` (the inverse of
    timm's ``checkpoint_filter_fn`` / ``_convert_dinov2``): ``mask_token`` present, register tokens
    named ``register_tokens`` with the cls slot kept in ``pos_embed``, and ViT-g's SwiGLU under the
    official ``mlp.w12`` / ``mlp.w3`` names (dinov2 ``layers/swiglu_ffn.py`` ``SwiGLUFFN``)."""
    sd = {}
    for k, v in encoder.vit.state_dict().items():
        if ".mlp." in k and encoder.arch_spec.swiglu:
            k = k.replace(".mlp.fc1.", ".mlp.w12.").replace(".mlp.fc2.", ".mlp.w3.")
        sd[k] = v.detach().clone()
    cls = sd["cls_token"]
    if "reg_token" in sd:
        sd["register_tokens"] = sd.pop("reg_token")
        sd["pos_embed"] = torch.cat([torch.zeros_like(cls), sd["pos_embed"]], dim=1)
    sd["mask_token"] = torch.zeros_like(cls[0])
    return sd


def _save(state: dict, path: str | os.PathLike) -> Path:
    buf = io.BytesIO()
    torch.save(state, buf)
    return atomic_write(path, buf.getvalue())


def write_dinov2_checkpoint(path: str | os.PathLike, arch: str = "dinov2_tiny", seed: int = 0) -> Path:
    """Seeded random DINOv2 weights saved in the official layout (pos_embed for 518, as the hub files)."""
    from fsseg.models.encoder import DINOv2Encoder

    torch.manual_seed(seed)
    return _save(official_dinov2_state_dict(DINOv2Encoder(arch=arch)), path)


def write_sam_checkpoint(path: str | os.PathLike, variant: str = "tiny", decoder_dim: int = 32,
                         decoder_depth: int = 2, decoder_mlp_dim: int = 64, decoder_heads: int = 2,
                         mask_in_chans: int = 16, seed: int = 0) -> Path:
    """Seeded random SAM weights saved as the official plain state dict (``image_encoder.*``,
    ``prompt_encoder.*``, ``mask_decoder.*``), built with segment-anything's own classes."""
    from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    from fsseg.models.backbones import TEACHERS
    from fsseg.models.teacher import build_sam_image_encoder

    torch.manual_seed(seed)
    arch = TEACHERS.get(variant)
    grid = arch.img_size // arch.patch_size
    sam = Sam(
        image_encoder=build_sam_image_encoder(variant),
        prompt_encoder=PromptEncoder(embed_dim=decoder_dim, image_embedding_size=(grid, grid),
                                     input_image_size=(arch.img_size, arch.img_size),
                                     mask_in_chans=mask_in_chans),
        mask_decoder=MaskDecoder(transformer_dim=decoder_dim,
                                 transformer=TwoWayTransformer(depth=decoder_depth, embedding_dim=decoder_dim,
                                                               mlp_dim=decoder_mlp_dim, num_heads=decoder_heads),
                                 num_multimask_outputs=3, iou_head_depth=3, iou_head_hidden_dim=256),
    )
    # SAM zero-initialises its relative position tables; give them values so they are exercised.
    for name, p in sam.image_encoder.named_parameters():
        if "rel_pos" in name:
            torch.nn.init.normal_(p, std=0.02)
    return _save(sam.state_dict(), path)
