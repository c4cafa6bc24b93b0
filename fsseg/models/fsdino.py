"""FS-DINO / UINO-FSS few-shot segmenter (plain torch; see docs/CONTRACTS.md).

Data flow: images -> ``extract`` (frozen DINOv2: block-``tap`` features -> bottleneck adapter =
image embedding; last-layer features = semantic features) -> prompts (SVP sparse token(s); dense
prompt from PCS or from the 4D / Mamba correlation prior through SAM's mask downscaling) ->
SAM mask decoder -> logits at the input size.

A method (``fsseg.models.segmenters``) is this class or a subclass of it: ``FSDINO`` itself
produces the PCS dense prompt (``ba_pcs`` without an SVP module, ``compact`` with one),
``CorrelationFSDINO`` the prior of a correlation module (``full``: ``Correlation4D``; ``uino`` /
``uino_large``: the Mamba hyper-correlation). Another prompt generator overrides ``dense_prompt``.

Dense prompt of ``FSDINO``: S_pcs (cosine in [-1,1]) at the embedding grid, bilinearly upsampled
to 4x the grid (SAM's mask-input resolution) and fed to the mask downscaling. Their ``prior`` output
is the parameter-free ``pcs_prior_scale * (S_pcs - pcs_prior_shift)`` as logits (default 10 * S_pcs),
upsampled to the input size; it carries no trainable parameter (its loss term then has no gradient).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..precision import autocast, compute_dtype, fp32_region, hold_frozen_in, resolve_precision
from .adapter import BottleneckAdapter
from .correlation import SupportMemo
from .decoder import FewShotMaskDecoder
from .encoder import DINOv2Encoder
from .prompts import (
    MaskDownscaling,
    PrototypeSimilarity,
    RandomFourierPositionEncoding,
    SemanticVisualPrompt,
    masked_average_pool,
)


@dataclass
class ImageFeatures:
    """Frozen-part output for ``N`` images: ``embedding`` (adapter, SAM-like) ``[N,D,h,w]`` and
    ``semantic`` (DINOv2 last layer) ``[N,C,h,w]``. ``embedding`` may be ``None`` for supports."""

    embedding: Optional[torch.Tensor]
    semantic: torch.Tensor

    def to(self, *args, **kwargs) -> "ImageFeatures":
        return ImageFeatures(None if self.embedding is None else self.embedding.to(*args, **kwargs), self.semantic.to(*args, **kwargs))

    def __getitem__(self, idx) -> "ImageFeatures":
        return ImageFeatures(None if self.embedding is None else self.embedding[idx], self.semantic[idx])


@dataclass
class SupportEncoding:
    """Everything the decoder needs from a K-shot support set (batch ``B``), computed once.

    ``semantic [B,K,C,h,w]`` (for the 4D/MHCM volume), ``masks [B,K,H,W]``, ``shot_prototypes
    [B,K,C]`` (MAP per shot), ``prototype [B,C]`` (PCS prototype: mean over shots), ``sparse
    [B,n,D]`` (SVP tokens; n = 0 for ``ba_pcs``). A support batch of 1 is broadcast over any query
    batch in ``decode``. ``memo``: the correlation's support-side terms, computed on the first query
    decoded without gradients and reused by later ones (so an encoding is not changed once decoded
    with: encode the new supports instead).
    """

    semantic: torch.Tensor
    masks: torch.Tensor
    shot_prototypes: torch.Tensor
    prototype: torch.Tensor
    sparse: torch.Tensor
    memo: SupportMemo = field(default_factory=SupportMemo, compare=False, repr=False)

    @property
    def batch_size(self) -> int:
        return self.semantic.shape[0]

    def expand(self, batch: int) -> "SupportEncoding":
        if self.batch_size == batch:
            return self
        if self.batch_size != 1:
            raise ValueError(f"support batch {self.batch_size} does not match query batch {batch}")
        e = lambda t: t.expand(batch, *t.shape[1:])  # noqa: E731
        return SupportEncoding(e(self.semantic), e(self.masks), e(self.shot_prototypes), e(self.prototype), e(self.sparse),
                               memo=self.memo)  # the memo's keys hold the batch size


class FSDINO(nn.Module):
    """Few-shot segmenter with the PCS dense prompt; ``svp=None`` gives SAM's empty sparse prompt
    (BA+PCS). Subclasses change the dense prompt (``dense_prompt``)."""

    def __init__(
        self,
        encoder: DINOv2Encoder,
        adapter: BottleneckAdapter,
        decoder: FewShotMaskDecoder,
        svp: Optional[SemanticVisualPrompt] = None,
        pe_layer: Optional[RandomFourierPositionEncoding] = None,
        mask_downscaling: Optional[MaskDownscaling] = None,
        freeze_adapter: bool = True,
        pcs_prior_scale: float = 10.0,
        pcs_prior_shift: float = 0.0,
        allow_empty_support: bool = False,
    ):
        super().__init__()
        D = decoder.transformer_dim
        if adapter.out_dim != D:
            raise ValueError(f"adapter out_dim {adapter.out_dim} != decoder dim {D}")
        self.encoder = encoder
        self.adapter = adapter
        self.svp = svp
        self.pcs = PrototypeSimilarity()
        self.correlation: Optional[nn.Module] = None  # CorrelationFSDINO's module
        self.correlation_part = "corr4d"  # its name in ``parts``
        self.pe_layer = pe_layer or RandomFourierPositionEncoding(D // 2)
        self.mask_downscaling = mask_downscaling or MaskDownscaling(D)
        self.decoder = decoder
        self.pcs_prior_scale = pcs_prior_scale
        self.pcs_prior_shift = pcs_prior_shift
        self.allow_empty_support = allow_empty_support
        self.freeze_adapter = freeze_adapter
        self.set_adapter_frozen(freeze_adapter)
        self.precision = "32"  # resolved fsseg.precision setting; see set_precision

    # ------------------------------------------------------------------ precision
    def set_precision(self, precision: str = "32", device: Optional[Union[str, torch.device]] = None) -> "FSDINO":
        """``32`` / ``bf16-mixed`` / ``16-mixed`` / ``auto`` (``fsseg.precision``), resolved for
        ``device`` (default: the device the model is on; a trainer passes the one it will run on). Low precision: the frozen DINOv2 (and the adapter when frozen) are
        held in that dtype's weights, so they run without per-op autocast casts; the trainable parts
        run under autocast; the few computations bf16 would change stay fp32 (see ``decode``).
        ``32`` casts frozen parts back to fp32 (an earlier bf16 rounding of their weights stays)."""
        p = resolve_precision(precision, next(self.parameters()).device if device is None else device)
        frozen_dtype = compute_dtype(p)
        if self.encoder.frozen:
            hold_frozen_in(self.encoder, p)
        if self.freeze_adapter:
            hold_frozen_in(self.adapter, p)
        elif frozen_dtype != torch.float32:
            self.adapter.float()
        self.precision = p
        return self

    @property
    def encoder_dtype(self) -> torch.dtype:
        return self.encoder.vit.patch_embed.proj.weight.dtype

    # ------------------------------------------------------------------ parts / freezing
    def set_adapter_frozen(self, frozen: bool = True) -> None:
        self.freeze_adapter = frozen
        self.adapter.requires_grad_(not frozen)
        if frozen:
            self.adapter.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_adapter:
            self.adapter.eval()
        return self

    @property
    def embedding_dim(self) -> int:
        return self.decoder.transformer_dim

    def parts(self) -> Dict[str, Optional[nn.Module]]:
        """Named components (for parameter tables and optimiser groups)."""
        return {
            "encoder": self.encoder,
            "adapter": self.adapter,
            "svp": self.svp,
            "pcs": self.pcs,
            self.correlation_part: self.correlation,
            "pe": self.pe_layer,
            "mask_downscaling": self.mask_downscaling,
            "decoder": self.decoder,
        }

    # ------------------------------------------------------------------ features
    def _frozen_features(self) -> bool:
        return self.encoder.frozen and self.freeze_adapter

    def extract(self, images: torch.Tensor, with_embedding: bool = True) -> ImageFeatures:
        """``[N,3,H,W]`` in [0,1] -> ``ImageFeatures`` (frozen part: encoder + adapter; cacheable)."""
        dev = images.device.type
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self._frozen_features()):
            # An encoder held in bf16 weights runs natively in bf16 with autocast off: autocast would
            # only add casts around its ops (the 1.5x of plain autocast vs ~2x without the casts).
            with fp32_region(dev) if self.encoder_dtype != torch.float32 else autocast(self.precision, dev):
                f = self.encoder(images)
            with autocast(self.precision, dev):
                emb = self.adapter(f.early) if with_embedding else None
        return ImageFeatures(embedding=emb, semantic=f.last)

    # ------------------------------------------------------------------ support
    def encode_support(self, support: torch.Tensor, support_masks: torch.Tensor) -> SupportEncoding:
        """``support [B,K,3,H,W]``, ``support_masks [B,K,H,W]`` (0/1) -> ``SupportEncoding``."""
        if support.dim() != 5 or support_masks.dim() != 4:
            raise ValueError(f"encode_support expects support [B,K,3,H,W] and masks [B,K,H,W], got {tuple(support.shape)}, {tuple(support_masks.shape)}")
        feats = self.extract(support.flatten(0, 1), with_embedding=False)
        return self.encode_support_features(feats, support_masks)

    def encode_support_features(self, feats: Union[ImageFeatures, torch.Tensor], support_masks: torch.Tensor) -> SupportEncoding:
        """From cached support features (``ImageFeatures`` or the semantic tensor, shaped
        ``[B*K,C,h,w]`` or ``[B,K,C,h,w]``) and ``support_masks [B,K,H,W]``."""
        sem = feats.semantic if isinstance(feats, ImageFeatures) else feats
        # fp32 prototypes: a bf16 sum over thousands of masked positions loses digits (fsseg.precision)
        sem = sem.float()
        B, K = support_masks.shape[:2]
        if sem.dim() == 4:
            sem = sem.view(B, K, *sem.shape[1:])
        masks = (support_masks > 0.5).to(sem.dtype) if support_masks.dtype != sem.dtype else support_masks
        shot_protos = masked_average_pool(
            sem.flatten(0, 1), masks.flatten(0, 1), allow_empty=self.allow_empty_support
        ).view(B, K, -1)
        prototype = self.pcs.prototype(shot_protos)
        if self.svp is not None:
            sparse = self.svp(shot_protos)
        else:
            sparse = sem.new_zeros(B, 0, self.embedding_dim)  # SAM's empty sparse prompt
        return SupportEncoding(semantic=sem, masks=masks, shot_prototypes=shot_protos, prototype=prototype, sparse=sparse)

    # ------------------------------------------------------------------ decode
    def decode(self, query_feats: ImageFeatures, support: SupportEncoding, out_size: Tuple[int, int]) -> Dict[str, torch.Tensor]:
        """-> ``{"logits": [B,H,W], "prior": [B,H,W]}`` at ``out_size`` (fp32 whatever the precision)."""
        if query_feats.embedding is None:
            raise ValueError("decode needs query features with an embedding (extract(..., with_embedding=True))")
        with autocast(self.precision, query_feats.semantic.device):
            return self._decode(query_feats, support, out_size)

    def _decode(self, query_feats: ImageFeatures, support: SupportEncoding, out_size: Tuple[int, int]) -> Dict[str, torch.Tensor]:
        # fp32 semantic features: the PCS cosine and the correlation volume's cosines are fp32
        fq, emb = query_feats.semantic.float(), query_feats.embedding
        B, _, h, w = emb.shape
        support = support.expand(B)
        dense_in, prior_low = self.dense_prompt(fq, support, (h, w))
        dense = self.mask_downscaling(dense_in)
        pe = self.pe_layer((h, w)).unsqueeze(0).to(emb.dtype)
        logits = self.decoder(emb, pe, support.sparse, dense, out_size=tuple(out_size))
        # fp32 upsampling of the prior logits (losses and thresholds read them at full resolution)
        prior = F.interpolate(prior_low.float(), size=tuple(out_size), mode="bilinear", align_corners=False)[:, 0]
        return {"logits": logits, "prior": prior}

    def prototype_similarity(self, fq: torch.Tensor, support: SupportEncoding, size: Tuple[int, int]) -> torch.Tensor:
        """S_pcs ``[B,1,h,w]``: cosine of the query features to the support prototype, at the embedding grid."""
        with fp32_region(fq.device.type):
            sim = self.pcs(fq, support.prototype)  # [B,1,hq,wq], cosine in fp32
        if tuple(sim.shape[-2:]) != tuple(size):
            sim = F.interpolate(sim, size=tuple(size), mode="bilinear", align_corners=False)
        return sim

    def dense_prompt(self, fq: torch.Tensor, support: SupportEncoding, size: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(dense_in [B,1,4h,4w], prior_low [B,1,*])``: SAM's mask-input-resolution map fed to the mask
        downscaling, and the prior logits (upsampled to the output for L_prior). PCS: the cosine map
        upsampled, and ``pcs_prior_scale * (S_pcs - pcs_prior_shift)``."""
        h, w = size
        sim = self.prototype_similarity(fq, support, size)
        dense_in = F.interpolate(sim, size=(4 * h, 4 * w), mode="bilinear", align_corners=False)
        return dense_in, self.pcs_prior_scale * (sim - self.pcs_prior_shift)

    def forward(self, query: torch.Tensor, support: torch.Tensor, support_masks: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``query [B,3,H,W]``, ``support [B,K,3,H,W]``, ``support_masks [B,K,H,W]``."""
        qf = self.extract(query)
        enc = self.encode_support(support, support_masks)
        return self.decode(qf, enc, out_size=query.shape[-2:])

    def segment_multiclass(self, query: torch.Tensor, support: torch.Tensor, support_masks: torch.Tensor) -> Dict[str, torch.Tensor]:
        """N-way: ``support [B,N,K,3,H,W]``, ``support_masks [B,N,K,H,W]`` ->
        ``{"logits": [B,N,H,W], "pred": [B,H,W] in 0..N}``; class c wins a pixel if its logit is
        the largest and > 0 (background logit fixed at 0)."""
        if support.dim() != 6 or support_masks.dim() != 5:
            raise ValueError(f"segment_multiclass expects support [B,N,K,3,H,W] and masks [B,N,K,H,W], got {tuple(support.shape)}, {tuple(support_masks.shape)}")
        B, N, K = support.shape[:3]
        qf = self.extract(query)
        sf = self.extract(support.flatten(0, 2), with_embedding=False).semantic
        sf = sf.view(B, N, K, *sf.shape[1:])
        logits = []
        for n in range(N):
            enc = self.encode_support_features(sf[:, n], support_masks[:, n])
            logits.append(self.decode(qf, enc, out_size=query.shape[-2:])["logits"])
        logits = torch.stack(logits, dim=1)
        full = torch.cat([logits.new_zeros(B, 1, *logits.shape[-2:]), logits], dim=1)
        return {"logits": logits, "pred": full.argmax(dim=1)}

    def segment_multiclass_encoded(self, query: torch.Tensor, encodings: "list[SupportEncoding]",
                                   out_size: Optional[Tuple[int, int]] = None) -> Dict[str, torch.Tensor]:
        """N-way from pre-encoded supports (one ``SupportEncoding`` per class, support batch 1 or B):
        ``query [B,3,H,W]`` -> ``{"logits": [B,N,*out_size], "pred": [B,*out_size] in 0..N}``, the
        same rule as ``segment_multiclass`` (background logit 0); the query is encoded once."""
        if not encodings:
            raise ValueError("segment_multiclass_encoded needs at least one SupportEncoding")
        size = tuple(out_size) if out_size is not None else tuple(query.shape[-2:])
        qf = self.extract(query)
        logits = torch.stack([self.decode(qf, enc, out_size=size)["logits"] for enc in encodings], dim=1)
        full = torch.cat([logits.new_zeros(logits.shape[0], 1, *logits.shape[-2:]), logits], dim=1)
        return {"logits": logits, "pred": full.argmax(dim=1)}


class CorrelationFSDINO(FSDINO):
    """FS-DINO whose dense prompt is the prior of a correlation module (sec. 3.4.2's 4D correlation,
    or UINO-FSS's MHCM): ``correlation(fq, support semantic, support masks, S_pcs, memo=)`` ->
    prior logits, fed to the mask downscaling at SAM's mask-input resolution."""

    def __init__(self, *args, correlation: nn.Module, correlation_part: str = "corr4d", **kwargs):
        super().__init__(*args, **kwargs)
        self.correlation = correlation
        self.correlation_part = correlation_part

    def dense_prompt(self, fq: torch.Tensor, support: SupportEncoding, size: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
        h, w = size
        sim = self.prototype_similarity(fq, support, size)
        prior_low = self.correlation(fq, support.semantic, support.masks, sim, memo=support.memo)
        if tuple(prior_low.shape[-2:]) != (4 * h, 4 * w):
            prior_low = F.interpolate(prior_low, size=(4 * h, 4 * w), mode="bilinear", align_corners=False)
        return prior_low, prior_low
