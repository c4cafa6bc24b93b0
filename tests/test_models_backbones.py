"""The backbone table (fsseg.models.backbones): a backbone defined in this file by one registration is
built, written and loaded as the official ones are, and the official weights follow a backbone's name."""
from __future__ import annotations

import pytest
import torch

from fsseg.models import DINOv2Encoder, SAMImageEncoder
from fsseg.models.backbones import (
    BACKBONES,
    OFFICIAL_WEIGHTS,
    TEACHERS,
    DINOv2Arch,
    SAMEncoderArch,
    WeightsRecord,
    backbone_weights,
    teacher_weights,
)
from fsseg.models.stand_in_weights import write_dinov2_checkpoint, write_sam_checkpoint
from fsseg.modules.checkpoints import resolve_official_weights
from fsseg.registry import RegistryError

# A ViT-S/14 with registers, shrunk: what a new backbone takes, one registration each.
BACKBONES.register("toy_vits14_reg4")(DINOv2Arch(embed_dim=32, depth=3, num_heads=2, reg_tokens=4))
TEACHERS.register("toy_sam")(SAMEncoderArch(embed_dim=16, depth=2, num_heads=2, global_attn_indexes=(1,),
                                            img_size=128, window_size=4, out_chans=16))
TOY = f"{__name__}:toy_vits14_reg4"  # as a config names it: imports this file in any process


def test_a_backbone_registered_here_builds_an_encoder_with_its_sizes():
    enc = DINOv2Encoder(TOY, tap_block=1)
    assert enc.arch == TOY and enc.arch_spec == BACKBONES.get("toy_vits14_reg4")
    assert (enc.embed_dim, len(enc.vit.blocks), enc.vit.num_prefix_tokens) == (32, 3, 5)
    with torch.no_grad():
        feats = enc(torch.rand(2, 3, 56, 84))  # off the 518 grid: the table is resampled as reg4 models do
    assert feats.early.shape == feats.last.shape == (2, 32, 4, 6)


def test_a_registered_backbone_round_trips_through_the_official_layout(tmp_path):
    path = write_dinov2_checkpoint(tmp_path / "toy.pth", arch=TOY, seed=1)
    assert "register_tokens" in torch.load(path, weights_only=True)
    torch.manual_seed(1)
    src, loaded = DINOv2Encoder(TOY), DINOv2Encoder(TOY, checkpoint=str(path))
    for k, v in src.vit.state_dict().items():
        assert torch.equal(v, loaded.vit.state_dict()[k]), k


def test_a_registered_teacher_builds_and_loads_its_stand_in(tmp_path):
    path = write_sam_checkpoint(tmp_path / "sam.pth", variant="toy_sam", decoder_dim=16)
    teacher = SAMImageEncoder("toy_sam", checkpoint=str(path))
    assert (teacher.img_size, teacher.out_chans, teacher.embedding_size) == (128, 16, 8)
    with torch.no_grad():
        assert teacher(torch.rand(1, 3, 64, 96)).shape == (1, 16, 8, 8)


def test_official_weights_follow_the_name(monkeypatch):
    assert backbone_weights("dinov2_vitl14_reg4").file_name == "dinov2_vitl14_reg4_pretrain.pth"
    assert teacher_weights("vit_b").file_name == "sam_vit_b_01ec64.pth"
    assert backbone_weights("dinov2_tiny") is None and teacher_weights("tiny") is None
    assert backbone_weights(TOY) is None  # registered without published weights
    url = "https://example.org/toy_vits14_reg4_pretrain.pth"
    monkeypatch.setitem(OFFICIAL_WEIGHTS, "toy_vits14_reg4", WeightsRecord("backbone", "toy_vits14_reg4", url))
    args = {"backbone": TOY, "dinov2_checkpoint": "official"}
    assert resolve_official_weights(args) == {"dinov2_checkpoint": url}


def test_every_official_record_names_a_registered_architecture():
    for name, w in OFFICIAL_WEIGHTS.items():
        registry = BACKBONES if w.table == "backbone" else TEACHERS
        assert w.arch in registry and w.url.startswith("https://dl.fbaipublicfiles.com/"), name
    assert sorted(w.arch for w in OFFICIAL_WEIGHTS.values() if w.table == "teacher") == ["vit_b", "vit_h", "vit_l"]


def test_an_unknown_backbone_names_the_registered_ones():
    with pytest.raises(RegistryError, match="unknown backbone 'dinov2_vitx14'.*dinov2_vitb14"):
        DINOv2Encoder("dinov2_vitx14")
