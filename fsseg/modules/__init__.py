"""Thin LightningModules: losses, optimisation, metrics around the plain-torch models."""

from fsseg.modules.distillation import DistillationModule
from fsseg.modules.fewshot import FewShotModule

__all__ = ["DistillationModule", "FewShotModule"]
from fsseg.modules.specialize import SpecializeModule  # noqa: E402  (issue #6)

__all__ += ["SpecializeModule"]
