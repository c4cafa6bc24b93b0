"""DistillFSS-style support-free specialised segmenter.

FS-DINO's support-dependent prompts are replaced by a *dedicated layer* holding per-class learned
parameters, so the specialised model segments its N classes with **no support input**:

    query ──► DINOv2 (frozen) ─┬─ block tap ─► adapter ─► image embedding ───────────────────┐
                               └─ last layer ─► ClassSpecificPrompts:                          │
                                     dense prior_c = scale_c * cos(f, prototype_c) + bias_c   │
                                     (a normalised 1x1 conv, one output channel per class)    │
                                     ─► SAM mask downscaling (dense prompt) ──────────────────┤
                                     sparse tokens_c (learned, [T, D] per class) ─────────────┤
                                                                SAM mask decoder (per class) ◄┘
    -> logits [B, N+1, H, W]: channel 0 = background (fixed 0), channel c = class c's mask logit,
       the same convention as ``FSDINO.segment_multiclass`` (class c wins if its logit is largest
       and > 0).

Initialisation (``from_fsdino(..., init_from_supports=...)``) puts the layer where the episodic
teacher is: tokens = the teacher's SVP tokens of each class, prototypes = its PCS prototypes (mean
of the shots' masked-average-pooled semantic features), scale/bias as the teacher's method declares
(``student_init`` of its registration, ``fsseg.models.segmenters``): ``exact_pcs_prior`` (1/0: the
PCS methods' dense input *is* the cosine map, so the student is then exactly the teacher) or
``fit_dense_prior`` (a per-class least-squares fit of the teacher's dense input on the cosine map,
for the 4D / MHCM methods). A method without one is refused. The parameter count and the compute of ``forward`` depend on N (classes) only, never on
K (shots) the layer was specialised from.
"""
from __future__ import annotations

import copy
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .fsdino import FSDINO, ImageFeatures


def per_class_supports(support, support_masks):
    """``([K_c,3,H,W] per class], [[K_c,H,W] per class])`` from the stacked ``[N,K,...]`` form (a leading
    batch of 1 accepted) or from per-class lists (classes with different shot counts)."""
    if isinstance(support, torch.Tensor):
        if support.dim() == 6:
            support, support_masks = support[0], support_masks[0]
        return list(support.unbind(0)), list(support_masks.unbind(0))
    if len(support) != len(support_masks):
        raise ValueError(f"{len(support)} classes of support images but {len(support_masks)} of masks")
    return list(support), list(support_masks)


@torch.no_grad()
def exact_pcs_prior(layer: "ClassSpecificPrompts", teacher: FSDINO, feats: ImageFeatures, encodings) -> None:
    """Scale 1, bias 0: the PCS methods' dense input is the cosine map itself (the student = the teacher)."""
    layer.prior_scale.fill_(1.0)
    layer.prior_bias.zero_()


@torch.no_grad()
def fit_dense_prior(layer: "ClassSpecificPrompts", teacher: FSDINO, feats: ImageFeatures, encodings) -> None:
    """Per class, the least-squares affine map of the cosine map onto the teacher's dense input
    (``teacher.dense_prompt``), every support image (all classes) acting as a query: positives and
    negatives for the fit. ``feats``: the supports' features; ``encodings``: one per class."""
    exact_pcs_prior(layer, teacher, feats, encodings)
    h, w = feats.embedding.shape[-2:]
    sims = layer.similarity(feats.semantic)  # [M,N,hs,ws]
    B = feats.semantic.shape[0]
    for c, enc in enumerate(encodings):
        target = teacher.dense_prompt(feats.semantic.float(), enc.expand(B), (h, w))[0]  # [M,1,4h,4w]
        s = F.interpolate(F.interpolate(sims[:, c:c + 1], size=(h, w), mode="bilinear", align_corners=False),
                          size=target.shape[-2:], mode="bilinear", align_corners=False)
        x, y = s.flatten().double(), target.flatten().double()
        var = x.var(unbiased=False)
        if torch.isfinite(var) and var > 1e-10:
            a = ((x - x.mean()) * (y - y.mean())).mean() / var
            layer.prior_scale[c] = a.float()
            layer.prior_bias[c] = (y.mean() - a * x.mean()).float()


class ClassSpecificPrompts(nn.Module):
    """The dedicated layer: per-class sparse tokens ``[N,T,D]`` and a per-class prototype head on
    the semantic features producing the dense prior ``[B,N,h,w]``."""

    def __init__(self, num_classes: int, semantic_dim: int, embed_dim: int, num_tokens: int = 1, eps: float = 1e-6):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"need at least one class, got {num_classes}")
        self.num_classes, self.num_tokens, self.eps = num_classes, num_tokens, eps
        self.tokens = nn.Parameter(torch.randn(num_classes, num_tokens, embed_dim) * 0.02)
        self.prototypes = nn.Parameter(torch.randn(num_classes, semantic_dim) * 0.02)
        self.prior_scale = nn.Parameter(torch.ones(num_classes))
        self.prior_bias = nn.Parameter(torch.zeros(num_classes))

    def similarity(self, semantic: torch.Tensor) -> torch.Tensor:
        """``[B,C,h,w]`` -> cosine map to every class prototype ``[B,N,h,w]``."""
        f = F.normalize(semantic, dim=1, eps=self.eps)
        p = F.normalize(self.prototypes, dim=1, eps=self.eps)
        return torch.einsum("bchw,nc->bnhw", f, p)

    def forward(self, semantic: torch.Tensor) -> torch.Tensor:
        sim = self.similarity(semantic)
        return sim * self.prior_scale.view(1, -1, 1, 1) + self.prior_bias.view(1, -1, 1, 1)


class SpecializedSegmenter(nn.Module):
    """Support-free N-class segmenter (student). ``forward(query [B,3,H,W])`` ->
    ``{"logits": [B,N+1,H,W], "pred": [B,H,W] in 0..N, "prior": [B,N,H,W]}``."""

    def __init__(self, encoder: nn.Module, adapter: nn.Module, decoder: nn.Module, pe_layer: nn.Module,
                 mask_downscaling: nn.Module, num_classes: int, semantic_dim: int, num_tokens: int = 1,
                 class_names: Optional[Sequence[str]] = None, train_decoder: bool = False):
        super().__init__()
        self.encoder, self.adapter = encoder, adapter
        self.decoder, self.pe_layer, self.mask_downscaling = decoder, pe_layer, mask_downscaling
        self.embed_dim = decoder.transformer_dim
        self.specialization = ClassSpecificPrompts(num_classes, semantic_dim, self.embed_dim, num_tokens)
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        if len(self.class_names) != num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {num_classes} classes")
        self.encoder.requires_grad_(False)
        self.adapter.requires_grad_(False)
        self.set_decoder_trainable(train_decoder)

    @property
    def num_classes(self) -> int:
        return self.specialization.num_classes

    def set_decoder_trainable(self, trainable: bool) -> None:
        """The dedicated layer always trains; the decoder, mask downscaling and PE optionally
        (fine-tuning); encoder and adapter never."""
        self.train_decoder = trainable
        for m in (self.decoder, self.pe_layer, self.mask_downscaling):
            m.requires_grad_(trainable)

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()
        self.adapter.eval()
        return self

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_fsdino(cls, fsdino: FSDINO, class_names: Sequence[str], init_from_supports: Optional[Dict] = None,
                    share_frozen: bool = True, copy_decoder: bool = True, num_tokens: int = 1,
                    train_decoder: bool = False) -> "SpecializedSegmenter":
        """Student from a trained FS-DINO. Encoder and adapter are shared (frozen; ``share_frozen``),
        decoder / mask downscaling / PE copied (``copy_decoder``: fine-tuning must not change the
        teacher). ``init_from_supports = {"support": [N,K,3,H,W], "support_masks": [N,K,H,W]}``
        (a leading batch of 1 is accepted) initialises the dedicated layer from the teacher."""
        take = (lambda m: m) if share_frozen else copy.deepcopy
        dup = copy.deepcopy if copy_decoder else (lambda m: m)
        sem_dim = fsdino.encoder.embed_dim
        if fsdino.svp is None:
            num_tokens = 0  # BA+PCS has SAM's empty sparse prompt
        model = cls(take(fsdino.encoder), take(fsdino.adapter), dup(fsdino.decoder), dup(fsdino.pe_layer),
                    dup(fsdino.mask_downscaling), num_classes=len(class_names), semantic_dim=sem_dim,
                    num_tokens=num_tokens, class_names=class_names, train_decoder=train_decoder)
        if init_from_supports is not None:
            model.init_from_supports(fsdino, init_from_supports["support"], init_from_supports["support_masks"])
        return model

    @torch.no_grad()
    def init_from_supports(self, fsdino: FSDINO, support, support_masks) -> None:
        """Tokens <- teacher SVP tokens, prototypes <- teacher PCS prototypes, prior scale/bias <- the
        teacher method's ``student_init`` (``fsdino.student_init``, set by ``build_segmenter``).
        ``support [N,K,3,H,W]`` / ``support_masks [N,K,H,W]``, or per-class lists of ``[K_c,3,H,W]`` /
        ``[K_c,H,W]`` when the classes have different shot counts (a total support budget)."""
        init = getattr(fsdino, "student_init", None)
        if init is None:
            raise ValueError(f"segmenter {getattr(fsdino, 'method', type(fsdino).__name__)!r} declares no "
                             "support-free student initialisation (register it with student_init=...)")
        images, masks = per_class_supports(support, support_masks)
        N = len(images)
        if N != self.num_classes:
            raise ValueError(f"supports hold {N} classes, the layer {self.num_classes}")
        counts = [int(x.shape[0]) for x in images]
        was_training = fsdino.training
        fsdino.eval()
        feats = fsdino.extract(torch.cat(images))
        sems = feats.semantic.split(counts)
        layer = self.specialization
        encs = []
        for c in range(N):
            enc = fsdino.encode_support_features(sems[c][None], masks[c][None])
            encs.append(enc)
            layer.prototypes[c] = enc.prototype[0]
            if layer.num_tokens:
                tok = enc.sparse[0]
                if tok.shape[0] != layer.num_tokens:  # per-shot tokens -> fixed count (K-independent)
                    tok = tok.mean(0, keepdim=True).expand(layer.num_tokens, -1)
                layer.tokens[c] = tok
        init(layer, fsdino, feats, encs)
        fsdino.train(was_training)

    # ------------------------------------------------------------------ inference
    def extract(self, images: torch.Tensor) -> ImageFeatures:
        """Frozen part (encoder + adapter), never differentiated."""
        with torch.no_grad():
            f = self.encoder(images)
            emb = self.adapter(f.early)
        return ImageFeatures(embedding=emb, semantic=f.last)

    def decode(self, feats: ImageFeatures, out_size) -> Dict[str, torch.Tensor]:
        emb, fq = feats.embedding, feats.semantic
        B, D, h, w = emb.shape
        N = self.num_classes
        prior = self.specialization(fq)  # [B,N,hs,ws]
        if tuple(prior.shape[-2:]) != (h, w):
            prior = F.interpolate(prior, size=(h, w), mode="bilinear", align_corners=False)
        dense_in = F.interpolate(prior, size=(4 * h, 4 * w), mode="bilinear", align_corners=False)
        dense = self.mask_downscaling(dense_in.flatten(0, 1).unsqueeze(1))  # [B*N,D,h,w]
        sparse = self.specialization.tokens.unsqueeze(0).expand(B, -1, -1, -1).flatten(0, 1)  # [B*N,T,D]
        pe = self.pe_layer((h, w)).unsqueeze(0).to(emb.dtype)
        emb_rep = emb.unsqueeze(1).expand(B, N, D, h, w).flatten(0, 1)
        logits = self.decoder(emb_rep, pe, sparse, dense, out_size=tuple(out_size)).view(B, N, *out_size)
        full = torch.cat([logits.new_zeros(B, 1, *logits.shape[-2:]), logits], dim=1)
        prior_out = F.interpolate(prior, size=tuple(out_size), mode="bilinear", align_corners=False)
        return {"logits": full, "pred": full.argmax(dim=1), "prior": prior_out}

    def forward(self, query: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``query [B,3,H,W]`` in [0,1] -> ``{"logits" [B,N+1,H,W], "pred" [B,H,W], "prior" [B,N,H,W]}``."""
        return self.decode(self.extract(query), out_size=tuple(query.shape[-2:]))

    def trainable_parameters(self) -> List[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]
