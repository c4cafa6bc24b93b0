"""DINOv2 taps against the official formulas, and stand-in checkpoints in the official key layout.

The official code (facebookresearch/dinov2) is not installable here; its two relevant rules are
written out below from the source, independently of fsseg's implementation:

* ``dinov2/models/vision_transformer.py:180-221`` ``interpolate_pos_encoding`` /
  ``prepare_tokens_with_masks``: ``x = cat(cls, patches) + cat(pos[:, :1], P)`` where ``P`` is the
  37x37 patch table resampled bicubically in float32, with ``scale_factor=((h+off)/37, (w+off)/37)``
  when ``interpolate_offset`` is set, else ``size=(h, w)``; registers are inserted after the cls
  token *after* positions are added.
* ``dinov2/hub/backbones.py``: plain models ``interpolate_antialias=False, interpolate_offset=0.1``
  (the ``_make_dinov2_model`` defaults, lines 27-28); ``*_reg`` models ``True, 0.0`` (lines 107-108).

(Checked once against the official repo run from a scratch folder: fsseg's taps equal its
``get_intermediate_layers`` bit for bit at 126, 252, 518 and 252x378 for vits14 and vits14_reg4.)
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fsseg.models.backbones import BACKBONES
from fsseg.models.encoder import DINOv2Encoder
from fsseg.models.stand_in_weights import official_dinov2_state_dict, write_dinov2_checkpoint

OFFICIAL_ARCHS = [a for a in BACKBONES if a != "dinov2_tiny"]


def _official_tokens(sd: dict, images: torch.Tensor, antialias: bool, offset: float) -> torch.Tensor:
    """The official ``prepare_tokens_with_masks`` on an official-layout state dict."""
    x = F.conv2d(images, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=14)
    b, c, h, w = x.shape
    x = torch.cat([sd["cls_token"].expand(b, -1, -1), x.flatten(2).transpose(1, 2)], dim=1)
    pos = sd["pos_embed"]
    m = int(math.sqrt(pos.shape[1] - 1))
    if (h, w) == (m, m):
        x = x + pos
    else:
        grid = pos[:, 1:].float().reshape(1, m, m, c).permute(0, 3, 1, 2)
        if offset:
            grid = F.interpolate(grid, scale_factor=((h + offset) / m, (w + offset) / m), mode="bicubic",
                                 antialias=antialias)
        else:
            grid = F.interpolate(grid, size=(h, w), mode="bicubic", antialias=antialias)
        x = x + torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, h * w, c)], dim=1)
    if "register_tokens" in sd:
        x = torch.cat([x[:, :1], sd["register_tokens"].expand(b, -1, -1), x[:, 1:]], dim=1)
    return x


def _reference_taps(enc: DINOv2Encoder, images: torch.Tensor, antialias: bool, offset: float):
    sd = official_dinov2_state_dict(enc)
    x = _official_tokens(sd, (images - enc.mean) / enc.std, antialias, offset)
    h, w = images.shape[-2] // 14, images.shape[-1] // 14
    n_prefix = 1 + (sd["register_tokens"].shape[1] if "register_tokens" in sd else 0)
    outs = []
    for blk in enc.vit.blocks:
        x = blk(x)
        outs.append(x)
    as_map = lambda t: t[:, n_prefix:].transpose(1, 2).reshape(t.shape[0], -1, h, w)  # noqa: E731
    return as_map(outs[enc.tap_block - 1]), as_map(enc.vit.norm(outs[-1]))


def _randomised(arch: str, **kw) -> DINOv2Encoder:
    torch.manual_seed(0)
    enc = DINOv2Encoder(arch=arch, **kw)
    with torch.no_grad():  # positions and tokens large enough that their resampling shows
        for name, p in enc.vit.named_parameters():
            if "pos_embed" in name or "token" in name:
                p.normal_()
    return enc


@pytest.mark.slow
@pytest.mark.parametrize("arch", OFFICIAL_ARCHS)
def test_taps_equal_the_official_formula_at_every_size(arch):
    reg = "reg4" in arch
    antialias, offset = (True, 0.0) if reg else (False, 0.1)  # dinov2/hub/backbones.py
    # each arch's 37x37 table, token layout (registers) and FFN kind (ViT-g SwiGLU), narrower and shallower
    small = dict(depth=3, embed_dim=96, num_heads=2)
    enc = _randomised(arch, **small)
    torch.manual_seed(1)
    for size in [(126, 126), (252, 252), (518, 518), (252, 378)]:
        x = torch.rand(1, 3, *size)
        with torch.no_grad():
            ours = enc(x)
            early, last = _reference_taps(enc, x, antialias, offset)
        torch.testing.assert_close(ours.early, early, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours.last, last, rtol=1e-5, atol=1e-5)
        if size == (518, 518):  # the native grid: the table as is, bit-identical to the reference
            assert torch.equal(ours.early, early) and torch.equal(ours.last, last)


def test_tap_norm_applies_the_final_norm_to_the_block_tap():
    enc = _randomised("dinov2_tiny")
    normed = _randomised("dinov2_tiny", tap_norm=True)
    x = torch.rand(2, 3, 56, 84)
    with torch.no_grad():
        raw, tok = enc(x), normed(x)
    ref = enc.vit.norm(raw.early.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(raw.early.shape)
    torch.testing.assert_close(tok.early, ref)
    assert torch.equal(tok.last, raw.last)
    assert torch.equal(normed.forward_early(x), tok.early)


def _expected_official_keys(arch: str) -> dict[str, tuple]:
    """``dinov2_*_pretrain.pth`` key names and shapes from the published architecture
    (dinov2 ``models/vision_transformer.py`` ``DinoVisionTransformer`` with the hub settings:
    ``block_chunks=0``, ``init_values=1.0`` (layer scale), ViT-g ``ffn_layer='swiglufused'``)."""
    a = BACKBONES.get(arch)
    d = a.embed_dim
    keys = {"cls_token": (1, 1, d), "pos_embed": (1, 37 * 37 + 1, d), "mask_token": (1, d),
            "patch_embed.proj.weight": (d, 3, 14, 14), "patch_embed.proj.bias": (d,),
            "norm.weight": (d,), "norm.bias": (d,)}
    if a.reg_tokens:
        keys["register_tokens"] = (1, a.reg_tokens, d)
    if a.swiglu:  # SwiGLUFFNFused: hidden = (int(4d * 2/3) + 7) // 8 * 8, w12 packs two of them
        hidden = (int(4 * d * 2 / 3) + 7) // 8 * 8
        mlp = {"mlp.w12.weight": (2 * hidden, d), "mlp.w12.bias": (2 * hidden,),
               "mlp.w3.weight": (d, hidden), "mlp.w3.bias": (d,)}
    else:
        mlp = {"mlp.fc1.weight": (4 * d, d), "mlp.fc1.bias": (4 * d,),
               "mlp.fc2.weight": (d, 4 * d), "mlp.fc2.bias": (d,)}
    block = {"norm1.weight": (d,), "norm1.bias": (d,), "attn.qkv.weight": (3 * d, d), "attn.qkv.bias": (3 * d,),
             "attn.proj.weight": (d, d), "attn.proj.bias": (d,), "ls1.gamma": (d,), "norm2.weight": (d,),
             "norm2.bias": (d,), "ls2.gamma": (d,), **mlp}
    for i in range(a.depth):
        keys.update({f"blocks.{i}.{k}": s for k, s in block.items()})
    return keys


@pytest.mark.parametrize("arch", OFFICIAL_ARCHS)
def test_stand_in_has_the_official_key_layout(arch):
    with torch.device("meta"):  # shapes only: ViT-g is 1.1B parameters
        sd = official_dinov2_state_dict(DINOv2Encoder(arch=arch))
    got = {k: tuple(v.shape) for k, v in sd.items()}
    want = _expected_official_keys(arch)
    assert sorted(set(got) ^ set(want)) == []
    assert {k: s for k, s in got.items() if want[k] != s} == {}


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["dinov2_tiny", "dinov2_vits14_reg4"])
def test_stand_in_file_loads_back_identically(arch, tmp_path):
    path = write_dinov2_checkpoint(tmp_path / "w.pth", arch=arch, seed=3)
    sd = torch.load(path, weights_only=True)
    assert "mask_token" in sd and ("register_tokens" in sd) == ("reg4" in arch)
    torch.manual_seed(3)
    src = DINOv2Encoder(arch=arch)
    loaded = DINOv2Encoder(arch=arch, checkpoint=str(path))
    for k, v in src.vit.state_dict().items():
        assert torch.equal(v, loaded.vit.state_dict()[k]), k


def test_vitg_swiglu_names_map_back_through_the_loader():
    """The official ViT-g names (``mlp.w12/w3``) load into the encoder (timm's ``_convert_dinov2``)."""
    with torch.device("meta"):
        enc = DINOv2Encoder(arch="dinov2_vitg14_reg4")
    sd = official_dinov2_state_dict(enc)
    assert "blocks.0.mlp.w12.weight" in sd and not any(".mlp.fc1." in k for k in sd)
    from timm.models.vision_transformer import checkpoint_filter_fn

    converted = checkpoint_filter_fn(dict(sd), enc.vit)
    assert {k: tuple(v.shape) for k, v in converted.items()} == \
        {k: tuple(v.shape) for k, v in enc.vit.state_dict().items()}
