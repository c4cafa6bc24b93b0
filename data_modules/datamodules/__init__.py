"""The Lightning DataModules, one a file: episodes of a benchmark (``episodic.py``), unlabelled images
for distillation (``unlabelled.py``), supports + query photos for predict (``support_query_folder.py``),
a support set for specialisation (``support_set.py``, ``specialization.py``, DistillFSS's budget in
``budget_specialization.py``)."""

from .budget_specialization import BudgetSpecializationDataModule
from .episodic import EpisodicDataModule
from .specialization import SpecializationDataModule
from .support_query_folder import SupportQueryFolderDataModule
from .support_set import SupportSetDataModule
from .unlabelled import UnlabelledDataModule

__all__ = ["BudgetSpecializationDataModule", "EpisodicDataModule", "SpecializationDataModule",
           "SupportQueryFolderDataModule", "SupportSetDataModule", "UnlabelledDataModule"]
