"""DistillFSS-style support-free specialisation: fsseg.models.SpecializedSegmenter and
fsseg.modules.SpecializeModule."""

import lightning as L
import pytest
import torch

from data_modules import SpecializationDataModule
from fsseg.flops import count_flops
from fsseg.models import SpecializedSegmenter, build_segmenter
from fsseg.modules import SpecializeModule
from fsseg.modules.specialize import soft_distillation_loss
from tests.cli_utils import tiny_module_args

TINY = dict(image_size=112)


def _supports(n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"support": torch.rand(n, k, 3, 112, 112, generator=g),
            "support_masks": (torch.rand(n, k, 112, 112, generator=g) > 0.6).float()}


def test_specialised_model_needs_no_support_and_starts_at_the_teacher():
    torch.manual_seed(0)
    teacher = build_segmenter({"name": "tiny", "method": "compact"}, **TINY).eval()
    sup = _supports(2, 3)
    student = SpecializedSegmenter.from_fsdino(teacher, ["a", "b"], init_from_supports=sup).eval()
    query = torch.rand(2, 3, 112, 112)
    with torch.no_grad():
        out = student(query)  # no support argument at all
        ref = teacher.segment_multiclass(query, sup["support"][None].expand(2, -1, -1, -1, -1, -1),
                                         sup["support_masks"][None].expand(2, -1, -1, -1, -1))
    assert out["logits"].shape == (2, 3, 112, 112)
    assert out["pred"].shape == (2, 112, 112) and out["pred"].dtype == torch.int64
    assert int(out["pred"].min()) >= 0 and int(out["pred"].max()) <= 2
    assert torch.all(out["logits"][:, 0] == 0)
    # PCS variants: the dedicated layer initialised from the supports reproduces the episodic teacher
    torch.testing.assert_close(out["logits"][:, 1:], ref["logits"], atol=1e-4, rtol=1e-4)
    assert torch.equal(out["pred"], ref["pred"])


def test_full_variant_init_and_decoder_is_a_copy():
    torch.manual_seed(0)
    teacher = build_segmenter({"name": "tiny", "method": "full"}, **TINY).eval()
    student = SpecializedSegmenter.from_fsdino(teacher, ["a"], init_from_supports=_supports(1, 2))
    assert student.encoder is teacher.encoder and student.adapter is teacher.adapter  # shared, frozen
    assert student.decoder is not teacher.decoder  # fine-tuning never changes the teacher
    assert not any(p.requires_grad for p in student.encoder.parameters())
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("specialization.") for n in trainable)
    with torch.no_grad():
        assert student(torch.rand(1, 3, 112, 112))["logits"].shape == (1, 2, 112, 112)


def _flops(model, x):
    with torch.no_grad():
        return count_flops(lambda: model(x))


def test_inference_cost_does_not_depend_on_shots():
    torch.manual_seed(0)
    teacher = build_segmenter({"name": "tiny", "method": "full"}, **TINY).eval()
    q = torch.rand(1, 3, 112, 112)
    students = {k: SpecializedSegmenter.from_fsdino(teacher, ["a", "b"], init_from_supports=_supports(2, k)).eval()
                for k in (1, 5)}
    shapes = {k: {n: tuple(t.shape) for n, t in s.state_dict().items()} for k, s in students.items()}
    for m in (teacher, *students.values()):
        m.requires_grad_(False)  # the flop counter's module tracker wants no grad-requiring leaves
    assert shapes[1] == shapes[5]
    assert sum(p.numel() for p in students[1].parameters()) == sum(p.numel() for p in students[5].parameters())
    f1, f5 = _flops(students[1], q), _flops(students[5], q)
    assert f1 == f5 and f1 > 0
    # whereas the episodic model's cost grows with K
    s1, s5 = _supports(2, 1), _supports(2, 5)
    e1 = _flops(lambda x: teacher.segment_multiclass(x, s1["support"][None], s1["support_masks"][None]), q)
    e5 = _flops(lambda x: teacher.segment_multiclass(x, s5["support"][None], s5["support_masks"][None]), q)
    assert e5 > e1


def test_soft_distillation_loss():
    t = torch.randn(2, 3, 4, 4)
    assert soft_distillation_loss(t.clone(), t).abs().item() < 1e-6
    s = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = soft_distillation_loss(s, t, temperature=2.0)
    assert loss.item() > 0
    loss.backward()
    assert s.grad.abs().sum() > 0


def _fixed_batch(dm):
    ds = dm.train_dataloader().dataset
    items = [ds[i] for i in range(len(ds.items))]  # the un-augmented copy of every support
    return {"image": torch.stack([it["image"] for it in items]), "label": torch.stack([it["label"] for it in items]),
            "shot_index": torch.stack([it["shot_index"] for it in items])}


def test_specialize_module_fit_improves_agreement_and_predicts_without_supports(tmp_path):
    L.seed_everything(0)
    dm = SpecializationDataModule(image_size=112, shots=2, synthetic_classes=2, synthetic_queries=1, repeats=2,
                                  batch_size=4)
    module = SpecializeModule(**tiny_module_args("compact"), init_from_supports=False, lr=5e-2, eval_teacher=True)
    # a random decoder is nearly indifferent to its prompts; sharpen it so the teacher's N-way
    # targets carry signal (the student copies this decoder)
    with torch.no_grad():
        for p in module.teacher.decoder.decoder.output_hypernetworks_mlps[0].layers[-1].parameters():
            p.mul_(30.0)
    trainer = L.Trainer(max_epochs=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, default_root_dir=str(tmp_path))
    # build the student (setup) and measure the starting point
    module.build_student(dm.class_names, dm.support_set())
    batch = _fixed_batch(dm)
    with torch.no_grad():
        loss0, parts0 = module.losses(batch)
    trainer.fit(module, datamodule=dm)
    module.eval()
    with torch.no_grad():
        loss1, parts1 = module.losses(batch)
    assert loss1 < loss0, (loss0, loss1)
    assert parts1["distill"] < parts0["distill"]
    assert parts1["label"] < parts0["label"]

    # test metrics, then a checkpoint round trip and prediction with no supports
    res = trainer.test(module, datamodule=dm, verbose=False)[0]
    expected = {"test/miou": 4.64, "test/teacher_miou": 4.28}  # the seeded run's figures
    assert {k: res[k] for k in expected} == pytest.approx(expected, abs=0.3), res
    path = tmp_path / "spec.ckpt"
    trainer.save_checkpoint(path)
    loaded = SpecializeModule.load_from_checkpoint(path).eval()
    assert loaded.student.class_names == dm.class_names
    # the class names travel in the hyper-parameters: `fsseg predict --ckpt_path` builds the student
    # in __init__ and needs no support folder
    assert list(loaded.hparams.class_names) == dm.class_names
    q = batch["image"][:2]
    pred = loaded.predict_step({"query": q, "query_path": ["a.png", "b.png"],
                                "query_original_size": torch.tensor([[112, 112], [112, 112]])}, 0)
    with torch.no_grad():
        ref = module.student(q)
    assert torch.equal(pred["pred"], ref["pred"])
    assert pred["logits"].shape == (2, 3, 112, 112) and pred["class_names"] == dm.class_names
    assert int(pred["pred"].max()) <= 2


def test_folder_data_module_multiclass(tmp_path):
    import numpy as np
    from PIL import Image

    for cls in ("cat", "dog"):
        for sub in ("images", "masks"):
            (tmp_path / "sup" / cls / sub).mkdir(parents=True)
        for i in range(3):
            Image.fromarray((np.random.rand(40, 50, 3) * 255).astype(np.uint8)).save(tmp_path / "sup" / cls / "images" / f"{i}.jpg")
            m = np.zeros((40, 50), np.uint8)
            m[10:30, 10:30] = 255
            Image.fromarray(m).save(tmp_path / "sup" / cls / "masks" / f"{i}.png")
    dm = SpecializationDataModule(support_dir=str(tmp_path / "sup"), val_dir=str(tmp_path / "sup"), image_size=56,
                                  batch_size=2)
    sup = dm.support_set()
    assert sup["support"].shape == (2, 3, 3, 56, 56) and sup["class_names"] == ["cat", "dog"]
    b = next(iter(dm.train_dataloader()))
    assert b["image"].shape[1:] == (3, 56, 56) and set(b["label"].unique().tolist()) <= {0, 1, 2, 255}
    vb = next(iter(dm.val_dataloader()))
    assert vb["class_id"].shape == (2, 2) and int(vb["query_mask"].max()) in (1, 2)


@pytest.mark.slow
def test_specialisation_runs_at_the_teacher_size_and_reports_its_checkpoint_and_quality(tmp_path):
    """The README's command with a teacher trained at a non-default size (140 px) specialises at 140 (not
    the config's 112), says so, prints where the checkpoint went and a leave-one-out quality figure."""
    import numpy as np
    from PIL import Image

    from fsseg.modules import FewShotModule
    from fsseg.modules.checkpoints import load_checkpoint_file, write_bundle
    from tests.cli_utils import run_fsseg
    from tests.paths import CONFIGS

    torch.manual_seed(0)
    teacher = FewShotModule(segmenter={"name": "tiny", "method": "full"}, image_size=140)
    write_bundle(teacher, tmp_path / "teacher.ckpt")
    support = tmp_path / "support"
    (support / "images").mkdir(parents=True)
    (support / "masks").mkdir()
    rng = np.random.default_rng(0)
    for k in range(3):
        Image.fromarray(rng.integers(0, 255, (80, 100, 3), dtype=np.uint8)).save(support / "images" / f"{k}.png")
        mask = np.zeros((80, 100), np.uint8)
        mask[10 + 5 * k:60, 20:70] = 255
        Image.fromarray(mask).save(support / "masks" / f"{k}.png")
    proc = run_fsseg(["fit", "--config", str(CONFIGS / "specialize_folder.yaml"), "--model.teacher_ckpt",
                      str(tmp_path / "teacher.ckpt"), "--data.support_dir", str(support), "--trainer.max_epochs", "1",
                      "--data.repeats", "1"], cwd=tmp_path)
    assert "specialising at image_size 140, backbone dinov2_tiny, method full (size from the teacher checkpoint" \
        in proc.stderr
    ckpt = (tmp_path / "runs" / "specialize" / "checkpoints" / "last.ckpt").resolve()
    assert f"specialised model: {ckpt.parent}" in proc.stderr
    assert "leave-one-out" in proc.stderr and "foreground IoU" in proc.stderr
    hp = load_checkpoint_file(ckpt)["hyper_parameters"]
    assert hp["image_size"] == 140 and hp["segmenter"] == {"name": "tiny", "method": "full"}  # the teacher's
    # the bundle of a teacher-based specialisation rebuilds with no teacher file at all
    from fsseg.modules.checkpoints import load_module_from_checkpoint

    module = load_module_from_checkpoint(ckpt).eval()
    write_bundle(module, tmp_path / "bundle.ckpt", str(ckpt), hparams=module.bundle_hparams())
    (tmp_path / "teacher.ckpt").unlink()
    rebuilt = load_module_from_checkpoint(tmp_path / "bundle.ckpt").eval()
    assert rebuilt.hparams.teacher_ckpt is None and rebuilt.hparams.image_size == 140
    q = torch.rand(2, 3, 140, 140, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(rebuilt.student(q)["logits"], module.student(q)["logits"])
    # support-free predict at the teacher's size; an unreadable photo is skipped with --skip_bad_queries
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(rng.integers(0, 255, (50, 90, 3), dtype=np.uint8)).save(photos / "a.png")
    (photos / "b.jpg").write_bytes(b"")
    (photos / "notes.txt").write_text("x")
    run_fsseg(["predict", "--config", str(CONFIGS / "specialize_folder.yaml"), "--data.support_dir", "null",
               "--data.query_dir", str(photos), "--ckpt_path", str(tmp_path / "bundle.ckpt"), "--output_dir",
               str(tmp_path / "pred"), "--skip_bad_queries", "true"], cwd=tmp_path)
    import json

    summary = json.loads((tmp_path / "pred" / "summary.json").read_text())
    assert summary["image_size"] == 140 and summary["images"] == 1 and summary["skipped_queries"]["count"] == 1
    assert [s["reason"] for s in summary["skipped_files"]] == ["not an image file"]
    assert Image.open(tmp_path / "pred" / "masks" / "a.png").size == (90, 50)
