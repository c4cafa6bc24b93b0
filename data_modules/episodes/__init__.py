"""Episodes: what one is and fsseg's own draws (``draw.py``), the named protocols that draw them
for a benchmark (``protocols.py``, PATNet's list in ``patnet.py``), episode files (``files.py``),
DistillFSS's support-budget rules (``distillfss_budget.py``) and the torch Dataset serving them
(``dataset.py``)."""

from .dataset import (
    INPUT_PATHS,
    EpisodeDataset,
    StridedDistributedSampler,
    TrainEpisodeSampler,
    batch_to_model_dtypes,
    collate_dicts,
    collate_episodes,
    rank_slice,
)
from .draw import Episode, eligible_classes, fixed_episode_list, sample_episode

__all__ = ["INPUT_PATHS", "Episode", "EpisodeDataset", "StridedDistributedSampler", "TrainEpisodeSampler",
           "batch_to_model_dtypes", "collate_dicts", "collate_episodes", "eligible_classes", "fixed_episode_list",
           "rank_slice", "sample_episode"]
