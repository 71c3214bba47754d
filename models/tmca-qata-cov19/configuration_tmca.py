"""TMCA model configuration."""

import math
import numbers

from transformers import CONFIG_MAPPING, PretrainedConfig

from .configuration_efficientnet_lite import EfficientNetLiteConfig


ALIGNMENT_STRIDES = (4, 8, 16)

# Shapes of the lineage's encoders (docs/method.md section 1): ConvNeXt-Tiny and CXR-BERT.
DEFAULT_BACKBONE_CONFIG = {
    "model_type": "convnext",
    "depths": [3, 3, 9, 3],
    "hidden_sizes": [96, 192, 384, 768],
    "out_features": ["stage1", "stage2", "stage3", "stage4"],
}
DEFAULT_TEXT_CONFIG = {
    "model_type": "bert",
    "vocab_size": 30522,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
}


def _as_config(value, default: dict) -> PretrainedConfig:
    """Turn a sub-config given as `None`, a dict or a config object into a config object."""
    if isinstance(value, PretrainedConfig):
        return value
    value = dict(default if value is None else value)
    model_type = value.pop("model_type", None)
    if model_type == EfficientNetLiteConfig.model_type:
        return EfficientNetLiteConfig(**value)
    if model_type not in CONFIG_MAPPING:
        raise ValueError(f"Unknown sub-config model_type {model_type!r}: expected one of transformers' model types.")
    return CONFIG_MAPPING[model_type](**value)


def _as_ood_threshold(value):
    """`None`, or `ood_threshold` as a positive finite float."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"ood_threshold must be None or a positive number (the image-statistics score above which an image is "
            f"unlike the training images), got {value!r}."
        )
    return float(value)


def _as_report_matching_hidden_size(value):
    """`None`, or `report_matching_hidden_size` as a positive int."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(
            f"report_matching_hidden_size must be None (no report-matching head) or a positive width, got {value!r}."
        )
    return int(value)


def _as_calibration(value):
    """`None`, or `consistency_calibration` as a list of two finite floats [a, b]."""
    if value is None:
        return None
    pair = list(value) if isinstance(value, (list, tuple)) else None
    if (
        pair is None
        or len(pair) != 2
        or not all(isinstance(number, numbers.Real) and not isinstance(number, bool) for number in pair)
        or not all(math.isfinite(float(number)) for number in pair)
    ):
        raise ValueError(
            f"consistency_calibration must be None or two finite numbers [a, b] (score = sigmoid(a * s + b)), "
            f"got {value!r}."
        )
    return [float(number) for number in pair]


class TmcaConfig(PretrainedConfig):
    r"""
    Configuration of [`TmcaForImageSegmentation`]: TMCA (Target-informed Multi-level Contrastive Alignment), a
    language-guided segmenter for 2-D medical images (Li et al., arXiv 2412.13533). Every part of the method can be
    switched off for ablations. The input size and the report length belong to the processor (`TmcaProcessor`), the
    one place that prepares inputs; the model takes any size that is a multiple of 32.

    Args:
        backbone_config (`dict` or `PretrainedConfig`, *optional*):
            Image encoder, any transformers backbone giving four feature maps at strides 4, 8, 16, 32. Defaults to a
            ConvNeXt-Tiny shaped config.
        text_config (`dict` or `PretrainedConfig`, *optional*):
            BERT-family text encoder. Defaults to a CXR-BERT (BERT-base) shaped config.
        decoder_hidden_sizes (`list[int]`, *optional*, defaults to `[256, 128, 64, 32]`):
            Width of the projected stride-32 feature and of the decoder stage outputs at strides 16, 8 and 4.
        decoder_num_attention_heads (`int`, *optional*, defaults to 4):
            Heads of the decoder's visual self-attention and text cross-attention.
        num_labels (`int`, *optional*, defaults to 1):
            Output channels of the logits; 1 for a binary lesion mask.
        use_text (`bool`, *optional*, defaults to `True`):
            With `False` the model has no text encoder, no cross-attention and no alignment: an image-only U-Net-like
            baseline.
        text_dropout (`float`, *optional*, defaults to 0.0):
            Probability, during training, of replacing a report by a learned null text, so that the model also
            segments without a report at inference.
        freeze_text_encoder (`bool`, *optional*, defaults to `True`):
            Keep the text encoder's weights fixed (and in eval mode) during training.
        alignment_levels (`list[int]`, *optional*, defaults to `[16, 8, 4]`):
            Strides at which image and report are aligned (MCA); empty switches all alignment off.
        alignment_source (`str`, *optional*, defaults to `"decoder"`):
            Align the decoder stage outputs (`"decoder"`) or the encoder's skip features (`"encoder"`).
        alignment_dim (`int`, *optional*, defaults to 256):
            Dimension of the joint pixel-text embedding space.
        alignment_position (`bool`, *optional*, defaults to `False`):
            Give each alignment level's pixel projection the pixel's (x, y) position in [-1, 1], so that the pooled
            target embedding carries where the lesion lies and can match the reports' "left/right, upper/lower".
        use_target_alignment (`bool`, *optional*, defaults to `True`):
            Target-sensitive semantic distance (TSSD): compare the report with the lesion region, with the image's
            own background as a hard negative. With `False` each level uses plain global alignment.
        use_target_enhancement (`bool`, *optional*, defaults to `True`):
            Language-guided target enhancement (LTE): re-weight each aligned feature map by its pixel-text
            similarity map.
        enhancement_init (`float`, *optional*, defaults to 0.1):
            Initial value of the learnable LTE scale gamma.
        contrastive_temperature (`float`, *optional*, defaults to 0.07):
            Initial temperature of the contrastive terms (learnable, clamped to >= 0.01).
        pixel_temperature (`float`, *optional*, defaults to 0.1):
            Initial temperature of the per-pixel similarity logits (learnable).
        dice_weight (`float`, *optional*, defaults to 1.0), bce_weight (`float`, *optional*, defaults to 1.0):
            Weights of the Dice and BCE terms on the output logits.
        alignment_weight (`float`, *optional*, defaults to 0.5):
            lambda_align, the weight of the summed alignment loss.
        alignment_level_weights (`list[float]`, *optional*):
            w_s per alignment level; equal weights when `None`.
        pixel_alignment_weight (`float`, *optional*, defaults to 1.0):
            lambda_pix, the weight of the dense pixel term inside each level.
        cross_attention_init (`float`, *optional*, defaults to 0.01):
            Initial value of the learnable scale on each decoder stage's attended report: how strongly the language
            path starts.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initialiser of linear layers.
        report_matching_hidden_size (`int`, *optional*):
            Width of the report-matching head (`TmcaReportMatching`), which scores whether a report fits the image.
            Set, with the head's weights, by `tmca_hf.report_matching.fit_report_matching` after the main training;
            `None` (the default): no head, and the consistency score is read off the alignment space.
        consistency_calibration (`list[float]`, *optional*):
            `[a, b]` of the logistic calibration of the report-image consistency score: `outputs.consistency =
            sigmoid(a * s + b)`, s the report-matching head's logit, or (a model without the head) the mean over
            alignment levels of the cosine between the report embedding and the predicted target embedding. Fitted
            on a validation split (`benchmarks/consistency_auroc.py --calibrate`); `a` is normally positive. `None`
            (default): the score is the uncalibrated `sigmoid(s)` (head) or `(s + 1) / 2` (cosine).
        ood_threshold (`float`, *optional*):
            The image-statistics score (`outputs.ood_score`, see `TmcaImageStatistics`) above which an image is
            unlike the training images. Set, with the statistics, by `tmca_hf.image_checks.fit_image_statistics` on a
            training split; `None` (the default) means the statistics were never measured and no score is returned.
    """

    model_type = "tmca"

    def __init__(
        self,
        backbone_config=None,
        text_config=None,
        decoder_hidden_sizes=(256, 128, 64, 32),
        decoder_num_attention_heads=4,
        num_labels=1,
        use_text=True,
        text_dropout=0.0,
        freeze_text_encoder=True,
        alignment_levels=(16, 8, 4),
        alignment_source="decoder",
        alignment_dim=256,
        alignment_position=False,
        use_target_alignment=True,
        use_target_enhancement=True,
        enhancement_init=0.1,
        contrastive_temperature=0.07,
        pixel_temperature=0.1,
        dice_weight=1.0,
        bce_weight=1.0,
        alignment_weight=0.5,
        alignment_level_weights=None,
        pixel_alignment_weight=1.0,
        cross_attention_init=0.01,
        initializer_range=0.02,
        report_matching_hidden_size=None,
        consistency_calibration=None,
        ood_threshold=None,
        **kwargs,
    ):
        self.backbone_config = _as_config(backbone_config, DEFAULT_BACKBONE_CONFIG)
        self.text_config = _as_config(text_config, DEFAULT_TEXT_CONFIG)
        self.decoder_hidden_sizes = list(decoder_hidden_sizes)
        self.decoder_num_attention_heads = decoder_num_attention_heads
        self.use_text = use_text
        self.text_dropout = text_dropout
        self.freeze_text_encoder = freeze_text_encoder
        self.alignment_levels = [int(level) for level in alignment_levels]
        self.alignment_source = alignment_source
        self.alignment_dim = alignment_dim
        self.alignment_position = alignment_position
        self.use_target_alignment = use_target_alignment
        self.use_target_enhancement = use_target_enhancement
        self.enhancement_init = enhancement_init
        self.contrastive_temperature = contrastive_temperature
        self.pixel_temperature = pixel_temperature
        self.dice_weight = dice_weight
        self.bce_weight = bce_weight
        self.alignment_weight = alignment_weight
        self.alignment_level_weights = (
            [1.0] * len(self.alignment_levels) if alignment_level_weights is None else list(alignment_level_weights)
        )
        self.pixel_alignment_weight = pixel_alignment_weight
        self.cross_attention_init = cross_attention_init
        self.initializer_range = initializer_range
        self.report_matching_hidden_size = _as_report_matching_hidden_size(report_matching_hidden_size)
        self.consistency_calibration = _as_calibration(consistency_calibration)
        self.ood_threshold = _as_ood_threshold(ood_threshold)
        super().__init__(num_labels=num_labels, **kwargs)
        self._validate_tmca()

    def _validate_tmca(self):
        if len(self.decoder_hidden_sizes) != 4:
            raise ValueError(
                f"decoder_hidden_sizes needs 4 widths (stride-32 projection, then strides 16, 8, 4), "
                f"got {self.decoder_hidden_sizes}."
            )
        unknown = sorted(set(self.alignment_levels) - set(ALIGNMENT_STRIDES))
        if unknown:
            raise ValueError(f"alignment_levels must be strides among {ALIGNMENT_STRIDES}, got {unknown}.")
        if len(set(self.alignment_levels)) != len(self.alignment_levels):
            raise ValueError(f"alignment_levels has a repeated stride: {self.alignment_levels}.")
        if len(self.alignment_level_weights) != len(self.alignment_levels):
            raise ValueError(
                f"alignment_level_weights has {len(self.alignment_level_weights)} weights for "
                f"{len(self.alignment_levels)} alignment levels."
            )
        if self.alignment_source not in ("decoder", "encoder"):
            raise ValueError(f"alignment_source must be 'decoder' or 'encoder', got {self.alignment_source!r}.")
        if not self.use_text and self.alignment_levels:
            raise ValueError(
                "use_text=False builds an image-only model, which has no report to align with: "
                "set alignment_levels=[] as well."
            )
        if not self.alignment_levels and self.use_target_enhancement:
            raise ValueError(
                "use_target_enhancement needs the similarity maps of alignment levels: "
                "set use_target_enhancement=False or give alignment_levels."
            )
        if self.report_matching_hidden_size is not None and not (self.use_text and self.text_dropout > 0):
            raise ValueError(
                "report_matching_hidden_size sets a head that compares a report with the model's text-free prediction: "
                "it needs use_text=True and text_dropout > 0."
            )
        if not 0.0 <= self.text_dropout < 1.0:
            raise ValueError(f"text_dropout must be in [0, 1), got {self.text_dropout}.")

    @property
    def supports_text_free_inference(self) -> bool:
        """Whether the model segments an image given without a report."""
        return not self.use_text or self.text_dropout > 0

    def to_dict(self) -> dict:
        """
        As `PretrainedConfig.to_dict`, with the encoders' sub-configs saved without classification labels: an
        ImageNet backbone brings 1,000 (`id2label` and `label2id`, 2,006 lines of config.json) that a segmenter never
        uses. The segmenter's own labels stay.
        """
        output = super().to_dict()
        for name in ("backbone_config", "text_config"):
            for key in ("id2label", "label2id"):
                output[name].pop(key, None)
        return output


__all__ = ["TmcaConfig"]
