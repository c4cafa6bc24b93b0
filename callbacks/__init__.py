"""Lightning callbacks: curriculum, caches, checkpoints, visualisation. They use the modules' public hooks only."""

from callbacks.caches import FrozenFeatureCache, TeacherEmbeddingCache
from callbacks.checkpoint import LastAndBestCheckpoint
from callbacks.curriculum import ResolutionCurriculum
from callbacks.prediction_writer import PredictionWriter
from callbacks.visualization import PredictionPanels

__all__ = ["FrozenFeatureCache", "LastAndBestCheckpoint", "PredictionPanels", "PredictionWriter", "ResolutionCurriculum", "TeacherEmbeddingCache"]
