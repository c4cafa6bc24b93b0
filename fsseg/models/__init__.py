"""fsseg.models: plain-torch FS-DINO / UINO-FSS modules (no Lightning here). See docs/CONTRACTS.md."""
from .adapter import BottleneckAdapter
from .backbones import BACKBONES, OFFICIAL_WEIGHTS, TEACHERS
from .build import (
    MODEL_REGISTRY,
    VARIANT_ALIASES,
    build_encoder,
    build_fsdino,
    build_teacher,
    canonical_variant,
    load_adapter_state,
    load_sam_prompt_decoder,
)
from .correlation import Correlation4D
from .decoder import FewShotMaskDecoder
from .encoder import DINOv2Encoder, EncoderFeatures
from .fsdino import FSDINO, VARIANTS, ImageFeatures, SupportEncoding
from .hypercorrelation import ContrastiveEnhancement, HierarchicalGlobalModelingBlock, MambaHyperCorrelation
from .mamba import MambaLayer, mamba_ssm_available
from .prompts import (
    MaskDownscaling,
    PrototypeSimilarity,
    RandomFourierPositionEncoding,
    SemanticVisualPrompt,
    masked_average_pool,
)
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
    "FSDINO", "VARIANTS", "ImageFeatures", "SupportEncoding", "MambaHyperCorrelation",
    "HierarchicalGlobalModelingBlock", "ContrastiveEnhancement", "MambaLayer", "mamba_ssm_available",
    "MaskDownscaling", "PrototypeSimilarity", "RandomFourierPositionEncoding", "SemanticVisualPrompt",
    "masked_average_pool", "SAMImageEncoder", "OFFICIAL_WEIGHTS", "WeightsError",
    "CheckpointMismatchError", "CheckpointNotFoundError", "resolve_checkpoint", "load_state_dict_file",
    "build_fsdino", "build_encoder", "build_teacher", "load_adapter_state", "load_sam_prompt_decoder",
    "canonical_variant", "VARIANT_ALIASES", "MODEL_REGISTRY", "ClassSpecificPrompts", "SpecializedSegmenter",
]
