"""tmca-hf: TMCA, language-guided medical image segmentation, as a Hugging Face transformers model."""

from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageSegmentation,
    AutoProcessor,
)

from .encoders import from_pretrained_encoders
from .modeling import (
    EfficientNetLiteBackbone,
    EfficientNetLiteConfig,
    TmcaConfig,
    TmcaForImageSegmentation,
    TmcaImageProcessor,
    TmcaPreTrainedModel,
    TmcaProcessor,
    TmcaSegmentationOutput,
)


# With the package imported, the Auto classes resolve "tmca" and "efficientnet_lite" without remote code.
AutoConfig.register("tmca", TmcaConfig, exist_ok=True)
AutoConfig.register("efficientnet_lite", EfficientNetLiteConfig, exist_ok=True)
AutoBackbone.register(EfficientNetLiteConfig, EfficientNetLiteBackbone, exist_ok=True)
AutoModel.register(TmcaConfig, TmcaForImageSegmentation, exist_ok=True)
AutoModelForImageSegmentation.register(TmcaConfig, TmcaForImageSegmentation, exist_ok=True)
AutoImageProcessor.register(TmcaConfig, slow_image_processor_class=TmcaImageProcessor, exist_ok=True)
AutoProcessor.register(TmcaConfig, TmcaProcessor, exist_ok=True)

# save_pretrained copies the module files and writes `auto_map`, so that Hub users load with trust_remote_code=True.
TmcaConfig.register_for_auto_class()
TmcaForImageSegmentation.register_for_auto_class("AutoModel")
TmcaImageProcessor.register_for_auto_class("AutoImageProcessor")
TmcaProcessor.register_for_auto_class("AutoProcessor")

__version__ = "0.1.0"

__all__ = [
    "EfficientNetLiteBackbone",
    "EfficientNetLiteConfig",
    "TmcaConfig",
    "TmcaForImageSegmentation",
    "TmcaImageProcessor",
    "TmcaPreTrainedModel",
    "TmcaProcessor",
    "TmcaSegmentationOutput",
    "from_pretrained_encoders",
]
