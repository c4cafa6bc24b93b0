"""Thin LightningModules: losses, optimisation, metrics around the plain-torch models."""

from fsseg.modules.distillation import DistillationModule
from fsseg.modules.fewshot import FewShotModule

__all__ = ["DistillationModule", "FewShotModule"]
