"""SAM teacher preprocessing against segment-anything; adapter settings carried from stage 1 to
stage 2; the compact UINO-FSS budget; checkpoints written before these options load as before."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data_modules import UnlabelledImageFolder
from data_modules.transforms import sam_longest_side
from fsseg.models import BottleneckAdapter, build_segmenter
from fsseg.models.build import PAPER_LITERAL_ADAPTER
from fsseg.models.teacher import SAMImageEncoder


def _sam_model(img_size: int):
    """segment-anything's own ``Sam`` (for ``preprocess``) with a teacher-sized image encoder."""
    from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    from fsseg.models.teacher import build_sam_image_encoder

    enc = build_sam_image_encoder("tiny", img_size=img_size) if img_size != 256 else build_sam_image_encoder("tiny")
    g = img_size // 16
    return Sam(image_encoder=enc,
               prompt_encoder=PromptEncoder(embed_dim=32, image_embedding_size=(g, g),
                                            input_image_size=(img_size, img_size), mask_in_chans=4),
               mask_decoder=MaskDecoder(transformer_dim=32, transformer=TwoWayTransformer(
                   depth=1, embedding_dim=32, mlp_dim=32, num_heads=2))).eval()


def _sam_reference(image: np.ndarray, long_side: int) -> torch.Tensor:
    """``SamPredictor.set_image``: ``ResizeLongestSide.apply_image`` then ``Sam.preprocess``."""
    from segment_anything.utils.transforms import ResizeLongestSide

    resized = ResizeLongestSide(long_side).apply_image(image)
    x = torch.as_tensor(resized).permute(2, 0, 1).contiguous()[None].float()
    return _sam_model(long_side).preprocess(x)


@pytest.mark.parametrize("hw", [(1365, 2048), (2048, 1365), (300, 451), (97, 97), (1023, 3)])
def test_teacher_input_equals_sam_resize_longest_side_and_preprocess(hw, tmp_path):
    from segment_anything.utils.transforms import ResizeLongestSide

    long_side = 256  # the tiny teacher's input; the rounding rule is the same at 1024
    rng = np.random.default_rng(hw[0] * 7 + hw[1])
    image = rng.integers(0, 256, size=(*hw, 3), dtype=np.uint8)
    padded, valid = sam_longest_side(image, long_side)
    assert valid == ResizeLongestSide.get_preprocess_shape(*hw, long_side)
    teacher = SAMImageEncoder("tiny")
    ours = teacher.preprocess_padded(torch.from_numpy(padded).permute(2, 0, 1)[None].float() / 255,
                                     torch.tensor([valid]))
    ref = _sam_reference(image, long_side)
    assert ours.shape == ref.shape == (1, 3, long_side, long_side)
    torch.testing.assert_close(ours, ref, rtol=0, atol=2e-5)
    assert torch.equal(ours[..., valid[0]:, :], torch.zeros_like(ours[..., valid[0]:, :]))


def test_sam_rounding_at_1024_for_1365x2048():
    from segment_anything.utils.transforms import ResizeLongestSide

    teacher = SAMImageEncoder("tiny", img_size=1024, window_size=4)
    assert teacher.input_size(1365, 2048) == ResizeLongestSide.get_preprocess_shape(1365, 2048, 1024) == (683, 1024)
    assert teacher.valid_embedding_size(1365, 2048) == (43, 64)
    # the float path (any tensor size) follows the same rounding and padding
    x = teacher.preprocess(torch.rand(1, 3, 1365, 2048))
    assert x.shape == (1, 3, 1024, 1024) and bool((x[..., 683:, :] == 0).all()) and bool((x[..., 682, :] != 0).any())


def test_folder_serves_the_sam_teacher_view(tmp_path):
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    img = np.random.default_rng(0).integers(0, 256, size=(60, 90, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "imgs" / "a.png")
    item = UnlabelledImageFolder(str(tmp_path / "imgs"), image_size=64, teacher_view="longest_side")[0]
    assert item["image"].shape == (3, 64, 64) and item["teacher_image"].shape == (3, 64, 64)
    assert item["teacher_valid"].tolist() == [43, 64]  # int(60 * 64/90 + 0.5) = 43
    ref = _sam_reference(img, 64)
    ours = SAMImageEncoder("tiny", img_size=64, window_size=2).preprocess_padded(
        item["teacher_image"][None], item["teacher_valid"][None])
    torch.testing.assert_close(ours, ref, rtol=0, atol=2e-5)


def test_distillation_target_is_the_valid_part_and_cache_namespace_follows_preprocessing():
    from fsseg.modules import DistillationModule

    torch.manual_seed(0)
    m = DistillationModule(backbone="dinov2_tiny", teacher="tiny", resolution=56)
    assert m.teacher_namespace((256, 256)).startswith(
        f"sam-teacher|{m.teacher.fingerprint}|input=256x256|preprocess=sam-longest-side-pad")
    image = torch.rand(1, 3, 256, 256)
    teacher_image = torch.zeros(1, 3, 256, 256)
    teacher_image[..., :100, :] = torch.rand(1, 3, 100, 256)
    batch = {"image": image, "teacher_image": teacher_image, "teacher_valid": torch.tensor([[100, 256]]),
             "path": ["x"]}
    assert m.teacher_valid_cells(batch) == [(7, 16)]  # ceil(100 / 16) rows of the 16x16 embedding
    with torch.no_grad():
        student = m.student_embeddings(image)
        emb = m.teacher_embeddings(batch)
        want = F.mse_loss(student, F.adaptive_avg_pool2d(emb[..., :7, :], student.shape[-2:]))
        assert torch.allclose(m._step(batch), want)


def test_paper_literal_adapter_layers_and_parameters():
    literal = BottleneckAdapter(in_dim=768, out_dim=256, **PAPER_LITERAL_ADAPTER)
    # Identity placeholders keep the state-dict keys of fsseg's adapter (reduce.0/2/4)
    assert all(isinstance(m, (torch.nn.Conv2d, torch.nn.Identity)) for m in literal.reduce)
    convs = [(type(m).__name__, m.in_channels, m.out_channels, m.kernel_size) for m in literal.reduce
             if isinstance(m, torch.nn.Conv2d)]
    assert convs == [("Conv2d", 768, 256, (1, 1)), ("Conv2d", 256, 256, (3, 3)), ("Conv2d", 256, 128, (1, 1))]
    assert len(literal.blocks) == 2 and literal.blocks[0].attn.embed_dim == 128
    assert literal.blocks[0].mlp[0].out_features == 512
    assert (literal.expand.in_channels, literal.expand.out_channels) == (128, 256)
    assert literal.pos_encoding == "none"
    # no activation anywhere between the convs: the conv stem is one linear map
    x = torch.randn(1, 768, 5, 5)
    with torch.no_grad():
        a, b = literal.reduce(x), literal.reduce(2 * x)
        bias = literal.reduce(torch.zeros_like(x))
    torch.testing.assert_close(b - bias, 2 * (a - bias), rtol=1e-4, atol=1e-4)
    # the same weights as fsseg's adapter (whose count test_models_fsdino checks), another computation
    assert {k: v.shape for k, v in literal.state_dict().items()} == \
        {k: v.shape for k, v in BottleneckAdapter().state_dict().items()}


def _stage1_checkpoint(tmp_path, **kw) -> str:
    """A real stage-1 checkpoint written by Lightning (one tiny step)."""
    import lightning as L

    from data_modules import UnlabelledDataModule
    from fsseg.modules import DistillationModule

    L.seed_everything(0)
    module = DistillationModule(backbone="dinov2_tiny", teacher="tiny", resolution=56, **kw)
    dm = UnlabelledDataModule(root=None, image_size=64, synthetic_images=4, batch_size=4, val_fraction=0.0)
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, default_root_dir=str(tmp_path))
    trainer.fit(module, datamodule=dm)
    path = tmp_path / "stage1.ckpt"
    trainer.save_checkpoint(str(path))
    return str(path)


def test_stage2_builds_the_literal_adapter_from_the_stage1_checkpoint(tmp_path):
    from fsseg.modules import FewShotModule

    ckpt = _stage1_checkpoint(tmp_path, adapter_kwargs=dict(PAPER_LITERAL_ADAPTER), tap_norm=True)
    hp = torch.load(ckpt, weights_only=True)["hyper_parameters"]
    assert hp["adapter_kwargs"]["pos_encoding"] == "none" and hp["tap_norm"] is True
    stage2 = FewShotModule(segmenter={"name": "tiny", "method": "compact"}, image_size=56, adapter_checkpoint=ckpt)
    adapter = stage2.model.adapter
    assert adapter.pos_encoding == "none" and not any(isinstance(m, torch.nn.GELU) for m in adapter.modules())
    assert stage2.model.encoder.tap_norm is True
    # the frozen-feature cache namespace follows settings that are not weights
    assert "tap_norm=True|adapter_pe=none|adapter_act=Identity" in stage2.feature_namespace()
    with pytest.raises(ValueError, match=r"pos_encoding='sine'.*pos_encoding='none'"):
        FewShotModule(segmenter={"name": "tiny", "method": "compact", "adapter_kwargs": {"pos_encoding": "sine"}},
                      image_size=56, adapter_checkpoint=ckpt)
    with pytest.raises(ValueError, match=r"tap_norm=False.*tap_norm=True"):
        FewShotModule(segmenter={"name": "tiny", "method": "compact", "tap_norm": False}, image_size=56,
                      adapter_checkpoint=ckpt)
    # a chained stage-1 run started from it keeps the literal adapter as well
    from fsseg.modules import DistillationModule

    chained = DistillationModule(backbone="dinov2_tiny", teacher="tiny", resolution=56, adapter_init=ckpt)
    assert chained.adapter.pos_encoding == "none" and chained.hparams.tap_norm is True


def test_fsseg_params_lists_both_uino_sizes_the_compact_one_within_budget(tmp_path):
    from tests.cli_utils import run_fsseg

    out = run_fsseg(["params"], cwd=tmp_path).stdout
    rows = {line.split()[0]: [int(x.replace(",", "")) for x in line.split()[1:]]
            for line in out.splitlines() if line.split() and line.split()[0] in ("uino", "uino_large", "compact")}
    segmenter = rows["uino"][-1]
    assert 5.4e6 < segmenter < 5.8e6, segmenter  # seed 002 Fig. 1: "only contains 5.6M parameters"
    assert segmenter - rows["compact"][-1] < 1e5  # the MHCM + CE on top of BA+SVP+PCS
    assert rows["uino_large"][-1] > 10e6
    mhcm = [line for line in out.splitlines() if line.startswith("MHCM + CE (uino)")]
    assert mhcm and int(mhcm[0].split()[-1].replace(",", "")) < 1e5


def test_compact_uino_runs_on_cpu_with_the_torch_scan():
    torch.manual_seed(0)
    model = build_segmenter({"name": "tiny", "method": "uino", "mamba_backend": "auto"}, image_size=56).eval()
    blk = model.correlation.blocks[0]
    assert blk.scan_q.backend == "auto" and not blk.scan_q._use_cuda(torch.zeros(1))
    q, s = torch.rand(2, 3, 56, 56), torch.rand(2, 2, 3, 56, 56)
    m = (torch.rand(2, 2, 56, 56) > 0.5).float()
    with torch.no_grad():
        out = model(q, s, m)
    assert out["logits"].shape == (2, 56, 56) and torch.isfinite(out["logits"]).all()


def test_sam_view_distillation_fit_on_non_square_folder_with_cache(tmp_path):
    import lightning as L
    from PIL import Image

    from callbacks import TeacherEmbeddingCache
    from data_modules import UnlabelledDataModule
    from fsseg.modules import DistillationModule

    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    for i, hw in enumerate([(60, 90), (90, 60), (40, 100), (70, 70)]):
        Image.fromarray(rng.integers(0, 256, size=(*hw, 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
    L.seed_everything(0)
    module = DistillationModule(backbone="dinov2_tiny", teacher="tiny", resolution=56)
    dm = UnlabelledDataModule(root=str(tmp_path / "imgs"), image_size=256, batch_size=4, val_fraction=0.0)
    cache = TeacherEmbeddingCache(cache_dir=str(tmp_path / "cache"))
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=[cache])
    trainer.fit(module, datamodule=dm)
    assert module.teacher_calls == 4  # second epoch served from the cache
    assert "preprocess=sam-longest-side-pad" in module.teacher_cache.namespace
    batch = next(iter(dm.train_dataloader()))
    cells = sorted(module.teacher_valid_cells(batch))
    assert cells == sorted([(11, 16), (16, 11), (7, 16), (16, 16)])  # ceil(171/16), ceil(102/16), ...
