"""GKD query-based soft distillation (seed 001) as a stage-1 objective."""

import copy

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
