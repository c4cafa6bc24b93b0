"""GKD query-based soft distillation (seed 001) as a stage-1 objective."""

import copy
import math

import lightning as L
import pytest
import torch

from data_modules import UnlabelledDataModule
from fsseg.models.gkd import QueryBasedSoftDistillation
from fsseg.modules import DistillationModule


def test_gkd_loss_zero_iff_equal_and_differentiable():
    torch.manual_seed(0)
    gkd = QueryBasedSoftDistillation(dim=16)
    teacher = torch.randn(2, 16, 5, 5)
    assert gkd(teacher.clone(), teacher).item() == 0.0
    student = torch.randn(2, 16, 5, 5, requires_grad=True)
    loss = gkd(student, teacher)
    assert loss.item() > 0
    loss.backward()
    assert student.grad is not None and torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    # pure soft term (no direct MSE share) is also zero at equality and positive otherwise
    soft = QueryBasedSoftDistillation(dim=16, direct_weight=0.0)
    assert soft(teacher, teacher).item() == 0.0
    assert soft(student.detach(), teacher).item() > 0


def test_gkd_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        QueryBasedSoftDistillation(dim=4)(torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 3, 3))


@pytest.mark.slow
def test_gkd_distillation_fit_lowers_loss_and_trains_only_the_adapter():
    L.seed_everything(0)
    module = DistillationModule(objective="gkd", backbone="dinov2_tiny", teacher="tiny", resolution=56, lr=3e-3)
    assert module.gkd is not None
    dm = UnlabelledDataModule(root=None, image_size=64, synthetic_images=16, batch_size=8, val_fraction=0.0,
                              shuffle=False)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    with torch.no_grad():
        before = module._step(batch).item()
    enc0 = copy.deepcopy(module.encoder.state_dict())
    teacher0 = copy.deepcopy(module.teacher.state_dict())
    adapter0 = copy.deepcopy(module.adapter.state_dict())
    trainer = L.Trainer(max_epochs=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    module.eval()
    with torch.no_grad():
        after = module._step(batch).item()
    assert after < before, (before, after)
    assert any(not torch.equal(adapter0[k], v) for k, v in module.adapter.state_dict().items())
    assert all(torch.equal(enc0[k], v) for k, v in module.encoder.state_dict().items())
    assert all(torch.equal(teacher0[k], v) for k, v in module.teacher.state_dict().items())


def _entropy(attn: torch.Tensor) -> float:
    return float(-(attn * attn.clamp_min(1e-12).log()).sum(-1).mean())


def _train_attention(objective: str, steps: int) -> tuple[float, float, float]:
    """A fixed (untrained) student and a fixed teacher; only W_q/W_k learn."""
    torch.manual_seed(0)
    gkd = QueryBasedSoftDistillation(dim=32, attention_objective=objective)
    teacher = torch.randn(4, 32, 9, 9)
    student = teacher + 0.8 * torch.randn_like(teacher)  # related to the teacher, but imperfect
    s, t = (x.flatten(2).transpose(1, 2) for x in (student, teacher))
    with torch.no_grad():
        start = _entropy(gkd.attention(s, t))
    opt = torch.optim.Adam(gkd.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        gkd(student, teacher).backward()
        opt.step()
    with torch.no_grad():
        end = _entropy(gkd.attention(s, t))
    return start, end, math.log(t.shape[1])


@pytest.mark.slow
def test_gkd_attention_stays_selective_with_a_fixed_student():
    start, end, uniform = _train_attention("retrieval", 300)
    assert end < 0.5 * uniform, (start, end, uniform)
    assert end <= start + 1e-3, (start, end)
    # the old coupling (W_q/W_k trained on the loss they weight) drifts towards uniform attention
    old_start, old_end, _ = _train_attention("shared", 300)
    assert old_end > end + 0.5 and old_end > old_start, (old_start, old_end, end)


def test_gkd_attention_receives_no_gradient_from_the_distillation_terms():
    torch.manual_seed(0)
    gkd = QueryBasedSoftDistillation(dim=8, direct_weight=0.0)
    teacher = torch.randn(1, 8, 4, 4)
    student = torch.randn(1, 8, 4, 4, requires_grad=True)
    s, t = (x.flatten(2).transpose(1, 2) for x in (student, teacher))
    attn = gkd.attention(s, t)
    retrieval = torch.nn.functional.mse_loss(attn @ t, t)
    total = gkd(student, teacher)
    wq = torch.autograd.grad(total, gkd.query.weight, retain_graph=True)[0]
    wq_retrieval = torch.autograd.grad(retrieval, gkd.query.weight)[0]
    torch.testing.assert_close(wq, wq_retrieval)


@pytest.mark.slow
def test_gkd_short_distillation_lowers_the_feature_mse_to_the_teacher():
    L.seed_everything(0)
    module = DistillationModule(objective="gkd", backbone="dinov2_tiny", teacher="tiny", resolution=56, lr=3e-3)
    dm = UnlabelledDataModule(root=None, image_size=64, synthetic_images=16, batch_size=8, val_fraction=0.0,
                              shuffle=False)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))

    def mse() -> float:
        with torch.no_grad():
            student = module.student_embeddings(batch["image"])
            teacher = torch.nn.functional.adaptive_avg_pool2d(module.teacher_embeddings(batch), student.shape[-2:])
            return torch.nn.functional.mse_loss(student, teacher).item()

    before = mse()
    trainer = L.Trainer(max_epochs=6, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    module.eval()
    assert mse() < 0.8 * before, (before, mse())
