"""fsseg.models: plain-torch FS-DINO / UINO-FSS modules (no Lightning here). See docs/CONTRACTS.md.

Methods are found by name in ``SEGMENTERS`` (``fsseg.models.segmenters``; the built-in ones are
registered by ``fsseg.models.methods``, imported here)."""
from . import methods  # noqa: F401 - registers the built-in methods and presets
from .adapter import BottleneckAdapter
from .backbones import BACKBONES, OFFICIAL_WEIGHTS, TEACHERS
from .build import build_encoder, build_fsdino, load_adapter_state, load_sam_prompt_decoder
from .correlation import Correlation4D
from .decoder import FewShotMaskDecoder
from .encoder import DINOv2Encoder, EncoderFeatures
from .fsdino import FSDINO, CorrelationFSDINO, ImageFeatures, SupportEncoding
from .hypercorrelation import ContrastiveEnhancement, HierarchicalGlobalModelingBlock, MambaHyperCorrelation
from .mamba import MambaLayer, mamba_ssm_available
from .prompts import (
    MaskDownscaling,
    PrototypeSimilarity,
    RandomFourierPositionEncoding,
    SemanticVisualPrompt,
    masked_average_pool,
)
from .segmenters import SEGMENTERS, build_segmenter, paper_methods, register_segmenter
from .specialized import ClassSpecificPrompts, SpecializedSegmenter
from .teacher import SAMImageEncoder
from .weights import (
    CheckpointMismatchError,
    CheckpointNotFoundError,
    WeightsError,
    load_state_dict_file,
    resolve_checkpoint,
)

__all__ = [
    "BottleneckAdapter", "Correlation4D", "FewShotMaskDecoder", "DINOv2Encoder", "EncoderFeatures", "BACKBONES", "TEACHERS",
    "FSDINO", "CorrelationFSDINO", "ImageFeatures", "SupportEncoding", "MambaHyperCorrelation",
    "HierarchicalGlobalModelingBlock", "ContrastiveEnhancement", "MambaLayer", "mamba_ssm_available",
    "MaskDownscaling", "PrototypeSimilarity", "RandomFourierPositionEncoding", "SemanticVisualPrompt",
    "masked_average_pool", "SAMImageEncoder", "OFFICIAL_WEIGHTS", "WeightsError",
    "CheckpointMismatchError", "CheckpointNotFoundError", "resolve_checkpoint", "load_state_dict_file",
    "build_fsdino", "build_encoder", "load_adapter_state", "load_sam_prompt_decoder",
    "SEGMENTERS", "build_segmenter", "paper_methods", "register_segmenter",
    "ClassSpecificPrompts", "SpecializedSegmenter",
]
