"""The model code that travels: `save_pretrained` copies these modules (never this `__init__`) into every model
folder, so that `trust_remote_code=True` rebuilds the model where `tmca_hf` is not installed.

Every module here imports only the standard library, torch, transformers, PIL, numpy and the other modules of this
folder (relative imports), and nothing of the toolkit around it (`tmca_hf.*`): data, training input, evaluation,
prediction, publishing and the report describer import from here, never the reverse. `tests/test_hub.py` checks
both rules on the folder.
"""

from .configuration_efficientnet_lite import EfficientNetLiteConfig
from .configuration_tmca import TmcaConfig
from .image_processing_tmca import TmcaImageProcessor
from .modeling_efficientnet_lite import EfficientNetLiteBackbone, EfficientNetLiteForImageClassification
from .modeling_tmca import TmcaForImageSegmentation, TmcaPreTrainedModel, TmcaSegmentationOutput
from .processing_tmca import TmcaProcessor


__all__ = [
    "EfficientNetLiteBackbone",
    "EfficientNetLiteConfig",
    "EfficientNetLiteForImageClassification",
    "TmcaConfig",
    "TmcaForImageSegmentation",
    "TmcaImageProcessor",
    "TmcaPreTrainedModel",
    "TmcaProcessor",
    "TmcaSegmentationOutput",
]
