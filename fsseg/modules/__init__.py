"""Thin LightningModules: losses, optimisation, metrics around the plain-torch models."""

from fsseg.modules.distillation import DistillationModule
from fsseg.modules.fewshot import FewShotModule
from fsseg.modules.specialize import SpecializeModule

__all__ = ["DistillationModule", "FewShotModule", "SpecializeModule"]
