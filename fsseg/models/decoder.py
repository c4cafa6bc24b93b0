"""SAM two-way-transformer mask decoder for few-shot prompts (FS-DINO sec. 3.4.2).

Wraps segment-anything's ``MaskDecoder`` + ``TwoWayTransformer`` (same parameter names, so the
``mask_decoder.*`` keys of a SAM checkpoint load strictly). ``multimask_output=False`` always:
only mask token 0 and its hypernetwork MLP produce the mask. The IoU head and the hypernetwork
MLPs of mask tokens 1..3 never reach the output, so they are kept (loadable) but frozen
(``requires_grad=False``): trainable parameters without gradients would break DDP. The mask
tokens themselves still take part in the transformer and stay trainable.

``predict_masks`` is re-implemented (same maths as SAM's) without SAM's
``repeat_interleave`` of the image embedding over prompts: here each batch element has its own
image embedding and its own prompts (SAM assumes one image, many prompts).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..precision import fp32_region
from .weights import strict_load


class FewShotMaskDecoder(nn.Module):
    def __init__(
        self,
        transformer_dim: int = 256,
        depth: int = 2,
        mlp_dim: int = 2048,
        num_heads: int = 8,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
        freeze_unused: bool = True,
    ):
        super().__init__()
        from segment_anything.modeling import MaskDecoder, TwoWayTransformer

        self.transformer_dim = transformer_dim
        self.decoder = MaskDecoder(
            transformer_dim=transformer_dim,
            transformer=TwoWayTransformer(depth=depth, embedding_dim=transformer_dim, mlp_dim=mlp_dim, num_heads=num_heads),
            num_multimask_outputs=num_multimask_outputs,
            iou_head_depth=iou_head_depth,
            iou_head_hidden_dim=iou_head_hidden_dim,
        )
        self.freeze_unused = freeze_unused
        self._apply_freeze()

    def _apply_freeze(self) -> None:
        if not self.freeze_unused:
            return
        self.decoder.iou_prediction_head.requires_grad_(False)
        for mlp in self.decoder.output_hypernetworks_mlps[1:]:
            mlp.requires_grad_(False)

    def load_sam_state(self, state_dict: dict, source: str = "<SAM checkpoint>") -> None:
        """Load ``mask_decoder.*`` keys (prefix stripped) of a SAM state dict, strictly."""
        sub = {k[len("mask_decoder."):]: v for k, v in state_dict.items() if k.startswith("mask_decoder.")}
        strict_load(self.decoder, sub, source=source)

    def forward(
        self,
        image_embedding: torch.Tensor,
        image_pe: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        out_size: Optional[Tuple[int, int]] = None,
    ) -> torch.Tensor:
        """``image_embedding [B,D,h,w]``, ``image_pe [1|B,D,h,w]``, ``sparse [B,n,D]`` (n may be 0),
        ``dense [B,D,h,w]`` -> mask logits ``[B,H,W]`` (``out_size``; default the 4h x 4w low-res grid)."""
        # The whole decoder runs in fp32 under any precision (fsseg.precision): SAM's attention forms
        # q @ k^T and its softmax itself, and bf16-rounded scores shift the softmax; the final
        # upsampling makes the logits the masks are thresholded from. It is a few % of the encoder's FLOPs.
        with fp32_region(image_embedding.device.type):
            return self._forward(image_embedding.float(), image_pe.float(), sparse.float(), dense.float(), out_size)

    def _forward(self, image_embedding, image_pe, sparse, dense, out_size):
        d = self.decoder
        B = image_embedding.shape[0]
        output_tokens = torch.cat([d.iou_token.weight, d.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(B, -1, -1), sparse.to(output_tokens.dtype)], dim=1)
        src = image_embedding + dense
        pos_src = image_pe.expand(B, -1, -1, -1)
        b, c, h, w = src.shape
        hs, src = d.transformer(src, pos_src, tokens)
        mask_token_out = hs[:, 1, :]  # mask token 0 (single-mask output)
        src = src.transpose(1, 2).reshape(b, c, h, w)
        up = d.output_upscaling(src)
        hyper = d.output_hypernetworks_mlps[0](mask_token_out)  # [B, D/8]
        b, c, hh, ww = up.shape
        low = (hyper.unsqueeze(1) @ up.view(b, c, hh * ww)).view(b, 1, hh, ww)
        if out_size is not None and tuple(out_size) != (hh, ww):
            low = F.interpolate(low, size=tuple(out_size), mode="bilinear", align_corners=False)
        return low[:, 0]
