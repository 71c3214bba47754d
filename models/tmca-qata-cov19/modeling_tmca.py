"""PyTorch TMCA: language-guided medical image segmentation with Target-informed Multi-level Contrastive Alignments.

Li, Meng, Ye, Fulham, Bi, Kim, arXiv 2412.13533. The parts follow this project's reconstruction of the method
(docs/method.md in the repository): a GuideDecoder-style language-guided decoder, target-sensitive semantic distance (TSSD),
multi-level contrastive alignment (MCA) and language-guided target enhancement (LTE).
"""

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoBackbone, AutoModel, PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_tmca import TmcaConfig
from .modeling_efficientnet_lite import EfficientNetLiteBackbone


BACKBONE_STRIDES = (4, 8, 16, 32)
DECODER_STRIDES = (16, 8, 4)
MAX_LOGIT_SCALE = 100.0


# ----------------------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class TmcaSegmentationOutput(ModelOutput):
    r"""
    Output of [`TmcaForImageSegmentation`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, returned when `labels` are given):
            `segmentation_loss + alignment_weight * alignment_loss`.
        logits (`torch.FloatTensor` of shape `(batch_size, num_labels, height, width)`):
            Per-pixel logits at the input size; `sigmoid` gives the lesion probability when `num_labels == 1`.
        alignment_maps (`tuple(torch.FloatTensor)`, one per alignment level, ordered as `config.alignment_levels`):
            Pixel-text similarity maps A_s of shape `(batch_size, 1, height / s, width / s)` in [0, 1]: where the
            report points at stride s. Empty when the model has no alignment levels.
        segmentation_loss (`torch.FloatTensor`, returned when `labels` are given): Dice + BCE on the logits.
        alignment_loss (`torch.FloatTensor`, returned when `labels` are given and levels exist):
            Sum over levels of `w_s * (contrastive_s + pixel_alignment_weight * pixel_s)`.
        contrastive_loss (`torch.FloatTensor`, returned when `labels` are given and levels exist):
            Weighted sum over levels of the image-report contrastive terms alone.
        pixel_alignment_loss (`torch.FloatTensor`, returned when `labels` are given and levels exist):
            Weighted sum over levels of the dense pixel-text terms alone.
        consistency (`torch.FloatTensor` of shape `(batch_size,)` in [0, 1], returned when a report is given and the
            model has a report-matching head or alignment levels): how well the report fits the image, a score s
            turned into `sigmoid(a * s + b)` with `(a, b) = config.consistency_calibration`, a probability that the
            report fits (fitted on a validation split by `benchmarks/consistency_auroc.py --calibrate`). With a
            report-matching head (`config.report_matching_hidden_size`, `TmcaReportMatching`, trained for the job
            on own, other, side-swapped and wrong-count reports), s is its logit and the uncalibrated score
            `sigmoid(s)`. Without one, s is read off the alignment space (`report_consistency`): at each level the
            cosine between the report embedding u and the embedding of the *predicted* target region, averaged over
            levels, and the uncalibrated score `(s + 1) / 2` ranks pairs but is not a probability. `None` without a
            report (text-free inference: there is nothing to compare), for a model with neither a head nor
            alignment levels and for `num_labels != 1`. In training mode, samples whose report text dropout
            replaced by the null text score NaN. Detached: it never changes the logits or the losses.
        ood_score (`torch.FloatTensor` of shape `(batch_size,)`, returned when `config.ood_threshold` is set): how
            unlike the training images an image is (see [`TmcaImageStatistics`]): about 1 for images like them,
            higher for others; above `config.ood_threshold` the image is not one the model can vouch for.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    alignment_maps: tuple[torch.FloatTensor, ...] | None = None
    segmentation_loss: torch.FloatTensor | None = None
    alignment_loss: torch.FloatTensor | None = None
    contrastive_loss: torch.FloatTensor | None = None
    pixel_alignment_loss: torch.FloatTensor | None = None
    consistency: torch.FloatTensor | None = None
    ood_score: torch.FloatTensor | None = None


@dataclass
class TmcaText:
    """The encoded reports of a batch, as the decoder and the alignment levels use them."""

    states: torch.Tensor  # (B, L, D) token states T
    padding_mask: torch.Tensor  # (B, L) True where a token is padding
    vector: torch.Tensor  # (B, D) sentence vector t, the masked mean of T
    has_report: torch.Tensor  # (B,) False where the learned null text stands in for the report
    same_report: torch.Tensor | None  # (B, B) True where two samples carry the same report


@dataclass
class TmcaLevelAlignment:
    """What one alignment level computed: the joint-space embeddings and the per-pixel similarity logits."""

    stride: int
    pixel_embeddings: torch.Tensor  # (B, d, h, w) V_s, L2-normalised
    text_embeddings: torch.Tensor  # (B, d) u, L2-normalised
    similarity_logits: torch.Tensor  # (B, 1, h, w) cos(V_s, u) / tau_p + b_s; A_s is their sigmoid


# ----------------------------------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------------------------------


class TmcaSinePositionEmbedding(nn.Module):
    """The 2-D sinusoidal position code of the decoder's visual tokens (docs/method.md section 2, step 1)."""

    def __init__(self, dim: int, temperature: float = 10000.0):
        super().__init__()
        if dim % 4:
            raise ValueError(f"The 2-D sine position code needs a width divisible by 4, got {dim}.")
        self.dim = dim
        self.temperature = temperature

    def forward(self, height: int, width: int, device, dtype) -> torch.Tensor:
        quarter = self.dim // 4
        frequencies = self.temperature ** (-torch.arange(quarter, device=device, dtype=torch.float32) / quarter)
        rows = torch.arange(height, device=device, dtype=torch.float32)[:, None] * frequencies  # (h, dim/4)
        cols = torch.arange(width, device=device, dtype=torch.float32)[:, None] * frequencies  # (w, dim/4)
        rows = torch.cat([rows.sin(), rows.cos()], dim=-1)[:, None, :].expand(height, width, 2 * quarter)
        cols = torch.cat([cols.sin(), cols.cos()], dim=-1)[None, :, :].expand(height, width, 2 * quarter)
        return torch.cat([rows, cols], dim=-1).reshape(height * width, self.dim).to(dtype)  # (h*w, dim)


class TmcaConvBlock(nn.Sequential):
    """Two 3x3 conv + batch norm + ReLU layers: the fusion block of each decoder stage."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class TmcaDecoderStage(nn.Module):
    """
    One stage of the language-guided decoder (docs/method.md section 2, GuideDecoder shape): visual self-attention with a 2-D
    sine position code, cross-attention to the report tokens added with a learnable scale, then upsampling x2 and
    fusion with the encoder's skip feature. Without text (`use_text=False`) the cross-attention is absent.
    """

    def __init__(self, config: TmcaConfig, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        heads = config.decoder_num_attention_heads
        self.position_embedding = TmcaSinePositionEmbedding(in_channels)
        self.self_attention_norm = nn.LayerNorm(in_channels)
        self.self_attention = nn.MultiheadAttention(in_channels, heads, batch_first=True)
        if config.use_text:
            self.text_projection = nn.Linear(config.text_config.hidden_size, in_channels)
            self.cross_attention_norm = nn.LayerNorm(in_channels)
            self.cross_attention = nn.MultiheadAttention(in_channels, heads, batch_first=True)
            self.cross_attention_scale = nn.Parameter(torch.tensor(float(config.cross_attention_init)))
        self.fusion = TmcaConvBlock(in_channels + skip_channels, out_channels)

    def forward(self, hidden_states: torch.Tensor, skip: torch.Tensor, text: TmcaText | None) -> torch.Tensor:
        batch_size, channels, height, width = hidden_states.shape
        tokens = hidden_states.flatten(2).transpose(1, 2)  # (B, h*w, C)
        position = self.position_embedding(height, width, tokens.device, tokens.dtype)
        normed = self.self_attention_norm(tokens)
        tokens = tokens + self.self_attention(normed + position, normed + position, normed, need_weights=False)[0]
        if text is not None:
            report = self.text_projection(text.states)  # (B, L, C)
            query = self.cross_attention_norm(tokens) + position
            attended = self.cross_attention(
                query, report, report, key_padding_mask=text.padding_mask, need_weights=False
            )[0]
            tokens = tokens + self.cross_attention_scale * attended
        hidden_states = tokens.transpose(1, 2).reshape(batch_size, channels, height, width)
        hidden_states = F.interpolate(hidden_states, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.fusion(torch.cat([hidden_states, skip], dim=1))  # (B, out_channels, 2h, 2w)


class TmcaAlignmentLevel(nn.Module):
    """
    One level of the multi-level contrastive alignment (MCA, docs/method.md section 4): projects a feature map Z_s and the
    report vector t into a joint L2-normalised space (pixel map V_s, text vector u) and gives the per-pixel similarity
    logits cos(V_s(p), u) / tau_p + b_s whose sigmoid is the map A_s that the pixel term trains and LTE uses. With
    `config.alignment_position` the pixel projection also sees each pixel's (x, y) position.
    """

    def __init__(self, config: TmcaConfig, channels: int):
        super().__init__()
        self.with_position = config.alignment_position
        self.pixel_projection = nn.Conv2d(channels + 2 * self.with_position, config.alignment_dim, 1)
        self.text_projection = nn.Linear(config.text_config.hidden_size, config.alignment_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / config.contrastive_temperature)))
        self.pixel_logit_scale = nn.Parameter(torch.tensor(math.log(1 / config.pixel_temperature)))
        self.pixel_logit_bias = nn.Parameter(torch.tensor(0.0))

    def forward(self, features: torch.Tensor, text_vector: torch.Tensor):
        if self.with_position:
            features = torch.cat([features, _position_channels(features)], dim=1)
        pixel_embeddings = F.normalize(self.pixel_projection(features), dim=1)  # (B, d, h, w)
        text_embeddings = F.normalize(self.text_projection(text_vector), dim=-1)  # (B, d)
        cosine = torch.einsum("bdhw,bd->bhw", pixel_embeddings, text_embeddings)[:, None]  # (B, 1, h, w)
        pixel_scale = self.pixel_logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
        return pixel_embeddings, text_embeddings, cosine * pixel_scale + self.pixel_logit_bias

    def contrastive_scale(self) -> torch.Tensor:
        """1 / tau, learnable and clamped so that tau >= 0.01."""
        return self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)


def _position_channels(features: torch.Tensor) -> torch.Tensor:
    """(B, 2, h, w): each pixel's x and y centre in [-1, 1] (left/top = -1), in the features' dtype and device."""
    batch_size, _, height, width = features.shape
    ys = torch.linspace(-1 + 1 / height, 1 - 1 / height, height, device=features.device, dtype=features.dtype)
    xs = torch.linspace(-1 + 1 / width, 1 - 1 / width, width, device=features.device, dtype=features.dtype)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"))  # (2, h, w): x then y
    return grid[None].expand(batch_size, -1, -1, -1)


class TmcaImageStatistics(nn.Module):
    """
    Is the image one the model knows? The training images' statistics in the image encoder's own feature space, for
    the globally pooled stride-32 features: their mean and standard deviation, and the shrunk inverse correlation of
    the standardised features (every buffer of moderate size, so 16-bit weight files hold it). They are saved with
    the weights, and zero until `tmca_hf.image_checks.fit_image_statistics` measures them on a training split. An
    image's score is its Mahalanobis distance from the training images divided by the square root of the feature
    count: about 1 for images like the training ones, higher for images of another kind (a photo, an endoscopy frame
    for a chest X-ray model, noise).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("scale", torch.ones(channels))
        self.register_buffer("precision", torch.zeros(channels, channels))

    @staticmethod
    def pooled(features: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) stride-32 features -> (B, C) in float32."""
        return features.float().mean((2, 3))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        standardised = (self.pooled(features) - self.mean.float()) / self.scale.float()
        squared = ((standardised @ self.precision.float()) * standardised).sum(-1).clamp(min=0)
        return (squared / self.mean.numel()).sqrt()


class TmcaReportMatching(nn.Module):
    """
    Does the report fit the image? A report-matching head (an image-text matching head, as BLIP's ITM head), trained
    for the job after the main training, on the frozen model, by `tmca_hf.report_matching.fit_report_matching`:
    positives are images with their own report, negatives the same images with another image's different report,
    their side-swapped report and a wrong count of infected areas. It compares where the model finds lesions
    *without* a report (its text-free prediction, so a wrong report cannot move what it is compared with) with what
    the report says: the lesion probability pooled into a grid of 6 rows by 4 columns (the image's left half is the
    first two), as the share of each cell that is lesion and the share of the lesion in each cell, standardised with
    the training images' statistics (buffers, set by the fit); the report's sentence vector; and their elementwise
    product in a shared width, into one logit per pair. It takes no part in the main training's loss and stays frozen
    there.
    """

    lesion_grid_size = (6, 4)
    dropout = 0.1

    def __init__(self, config: TmcaConfig):
        super().__init__()
        hidden = config.report_matching_hidden_size
        features = 2 * self.lesion_grid_size[0] * self.lesion_grid_size[1]
        self.register_buffer("feature_mean", torch.zeros(features))
        self.register_buffer("feature_scale", torch.ones(features))
        self.lesion_projection = nn.Sequential(nn.Linear(features, hidden), nn.GELU())
        text_size = config.text_config.hidden_size
        self.text_projection = nn.Sequential(nn.LayerNorm(text_size), nn.Linear(text_size, hidden), nn.GELU())
        self.classifier = nn.Sequential(
            nn.Dropout(self.dropout), nn.Linear(3 * hidden, hidden), nn.GELU(), nn.Linear(hidden, 1)
        )

    @classmethod
    def lesion_features(cls, logits: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) text-free logits -> (B, 48) in float32: per cell of the grid (row-major), the mean lesion
        probability, then the share of the whole lesion that lies in the cell."""
        cells = F.adaptive_avg_pool2d(logits.float().sigmoid(), cls.lesion_grid_size).flatten(1)  # (B, 24)
        return torch.cat([cells, cells / cells.sum(1, keepdim=True).clamp(min=1e-3)], dim=1)

    def forward(self, lesion_features: torch.Tensor, text_vector: torch.Tensor) -> torch.Tensor:
        """(B, 48) `lesion_features` and (B, hidden_size) report vectors -> (B,) matching logits."""
        standardised = (lesion_features.float() - self.feature_mean.float()) / self.feature_scale.float()
        image = self.lesion_projection(standardised)
        text = self.text_projection(text_vector.float())
        return self.classifier(torch.cat([image, text, image * text], dim=-1)).squeeze(-1)


class TmcaTargetEnhancement(nn.Module):
    """Language-guided target enhancement (LTE, docs/method.md section 5): Z_s <- Z_s * (1 + gamma_s * A_s)."""

    def __init__(self, config: TmcaConfig):
        super().__init__()
        self.gamma = nn.Parameter(torch.tensor(float(config.enhancement_init)))

    def forward(self, features: torch.Tensor, alignment_map: torch.Tensor) -> torch.Tensor:
        return features * (1 + self.gamma * alignment_map)


# ----------------------------------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------------------------------


def soft_dice_loss(logits: torch.Tensor, targets: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per sample, averaged over the batch. logits, targets: (B, C, H, W)."""
    probabilities = logits.sigmoid().flatten(1)
    targets = targets.flatten(1)
    intersection = (probabilities * targets).sum(-1)
    dice = (2 * intersection + smooth) / (probabilities.sum(-1) + targets.sum(-1) + smooth)
    return (1 - dice).mean()


def dice_bce_loss(logits: torch.Tensor, targets: torch.Tensor, dice_weight=1.0, bce_weight=1.0) -> torch.Tensor:
    """Dice + binary cross-entropy: the segmentation term on the output, and the pixel term of each level."""
    bce = F.binary_cross_entropy_with_logits(logits, targets)
    return dice_weight * soft_dice_loss(logits, targets) + bce_weight * bce


MASKED_LOGIT = -1e4  # leaves a logit out exactly (its exp underflows to 0) without the NaN gradients of -inf


def multi_positive_info_nce(logits: torch.Tensor, positives: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """
    InfoNCE where a row may have several positives: -log of the softmax mass on the row's positives, averaged over the
    rows (or over `rows`, a (N,) bool mask, when given). logits, positives: (N, M). Same-report pairs are positives
    for each other, never negatives.
    """
    log_probabilities = logits.log_softmax(dim=-1)
    positive_mass = log_probabilities.masked_fill(~positives, MASKED_LOGIT).logsumexp(dim=-1)
    if rows is None:
        return -positive_mass.mean()
    return -positive_mass.where(rows, 0.0).sum() / rows.sum().clamp(min=1)


def _masked_mean_embedding(embeddings: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """L2-normalised weighted mean over pixels. embeddings (B, d, h, w), weights (B, 1, h, w) -> (B, d)."""
    pooled = (embeddings * weights).sum((2, 3)) / (weights.sum((2, 3)) + 1e-6)
    return F.normalize(pooled, dim=-1)


@torch.no_grad()
def report_consistency(logits: torch.Tensor, alignments: list, calibration=None) -> torch.Tensor:
    """
    Report-image consistency, (B,) in [0, 1]: at each alignment level the cosine between the report embedding u and
    the predicted target embedding (V_s pooled with sigmoid(logits) area-downsampled to the level, as TSSD pools v+
    with the true mask), averaged over levels into s; then sigmoid(a * s + b) for `calibration = (a, b)`, or
    (s + 1) / 2 without one. Detached, in float32, with no host sync. logits (B, 1, H, W).
    """
    probabilities = logits.detach().float().sigmoid()
    cosines = []
    for alignment in alignments:
        weights = F.interpolate(probabilities, size=alignment.pixel_embeddings.shape[-2:], mode="area")
        target = _masked_mean_embedding(alignment.pixel_embeddings.detach().float(), weights)  # (B, d)
        cosines.append((target * alignment.text_embeddings.detach().float()).sum(-1))
    mean_cosine = torch.stack(cosines).mean(0)  # s, (B,)
    if calibration is None:
        return (mean_cosine + 1) / 2
    return calibrated_consistency(mean_cosine, calibration)


def calibrated_consistency(score: torch.Tensor, calibration) -> torch.Tensor:
    """sigmoid(a * s + b) of a consistency score s (B,), with `calibration = (a, b)`; sigmoid(s) without one."""
    slope, intercept = (1.0, 0.0) if calibration is None else calibration
    return torch.sigmoid(slope * score + intercept)


def target_sensitive_contrastive_loss(
    pixel_embeddings: torch.Tensor,
    text_embeddings: torch.Tensor,
    masks: torch.Tensor,
    same_report: torch.Tensor,
    included: torch.Tensor,
    logit_scale: torch.Tensor,
) -> torch.Tensor:
    """
    TSSD contrast (docs/method.md section 3). The report is compared with the lesion embedding v+ (mask-pooled pixels), not
    the whole image: symmetric multi-positive InfoNCE between {v+_i} and {u_j}, and in the report-to-image direction
    each report's own background v-_j is one more (hard) negative. Samples with an empty mask have no v+ and leave
    these terms. Left-out samples are masked, not indexed away, so the loss never waits for the device.

    pixel_embeddings (B, d, h, w), text_embeddings (B, d), masks (B, 1, h, w) soft in [0, 1], same_report (B, B) bool,
    included (B,) bool: samples that take part (a report is present).
    """
    included = included & (masks.sum((1, 2, 3)) > 0)
    target = _masked_mean_embedding(pixel_embeddings, masks)  # v+ (B, d)
    background = _masked_mean_embedding(pixel_embeddings, 1 - masks)  # v- (B, d)
    has_background = (1 - masks).sum((1, 2, 3)) > 0
    pairs = included[:, None] & included[None, :]
    positives = same_report & pairs  # (B, B)
    similarity = (logit_scale * target @ text_embeddings.T).masked_fill(~pairs, MASKED_LOGIT)  # image i vs report j
    image_to_text = multi_positive_info_nce(similarity, positives, rows=included)
    background_logit = logit_scale * (text_embeddings * background).sum(-1, keepdim=True)  # (B, 1): report j vs its v-
    background_logit = background_logit.masked_fill(~has_background[:, None], MASKED_LOGIT)
    text_to_image = multi_positive_info_nce(
        torch.cat([similarity.T, background_logit], dim=1),
        torch.cat([positives.T, torch.zeros_like(has_background)[:, None]], dim=1),
        rows=included,
    )
    return (image_to_text + text_to_image) / 2


def global_contrastive_loss(
    pixel_embeddings: torch.Tensor,
    text_embeddings: torch.Tensor,
    same_report: torch.Tensor,
    included: torch.Tensor,
    logit_scale: torch.Tensor,
) -> torch.Tensor:
    """Plain global alignment (TSSD switched off): mean-pooled image vs report, symmetric multi-positive InfoNCE."""
    image = F.normalize(pixel_embeddings.mean((2, 3)), dim=-1)  # (B, d)
    pairs = included[:, None] & included[None, :]
    positives = same_report & pairs
    similarity = (logit_scale * image @ text_embeddings.T).masked_fill(~pairs, MASKED_LOGIT)  # (B, B)
    return (
        multi_positive_info_nce(similarity, positives, rows=included)
        + multi_positive_info_nce(similarity.T, positives.T, rows=included)
    ) / 2


# ----------------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------------


def _build_backbone(backbone_config):
    """The image encoder: the project's EfficientNet-Lite, or any backbone the Auto classes know."""
    if backbone_config.model_type == "efficientnet_lite":
        return EfficientNetLiteBackbone(backbone_config)
    return AutoBackbone.from_config(backbone_config)


class TmcaPreTrainedModel(PreTrainedModel):
    config_class = TmcaConfig
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm2d, nn.LayerNorm)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
            if isinstance(module, nn.BatchNorm2d):
                nn.init.zeros_(module.running_mean)
                nn.init.ones_(module.running_var)
                nn.init.zeros_(module.num_batches_tracked)
        elif isinstance(module, nn.MultiheadAttention):
            nn.init.xavier_uniform_(module.in_proj_weight)
            nn.init.zeros_(module.in_proj_bias)
            nn.init.zeros_(module.out_proj.bias)
        if isinstance(module, TmcaDecoderStage) and hasattr(module, "cross_attention_scale"):
            nn.init.constant_(module.cross_attention_scale, self.config.cross_attention_init)
        elif isinstance(module, TmcaAlignmentLevel):
            nn.init.constant_(module.logit_scale, math.log(1 / self.config.contrastive_temperature))
            nn.init.constant_(module.pixel_logit_scale, math.log(1 / self.config.pixel_temperature))
            nn.init.zeros_(module.pixel_logit_bias)
        elif isinstance(module, TmcaTargetEnhancement):
            nn.init.constant_(module.gamma, self.config.enhancement_init)
        elif isinstance(module, TmcaReportMatching):
            nn.init.zeros_(module.feature_mean)
            nn.init.ones_(module.feature_scale)
        elif isinstance(module, TmcaImageStatistics):
            nn.init.zeros_(module.mean)
            nn.init.ones_(module.scale)
            nn.init.zeros_(module.precision)
        elif isinstance(module, TmcaForImageSegmentation) and module.null_text is not None:
            nn.init.normal_(module.null_text, std=std)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """
        As `PreTrainedModel.save_pretrained`. A folder saved with remote code (the classes registered for the Auto
        classes, as importing `tmca_hf` does) also serves `pipeline("image-segmentation", model=folder,
        trust_remote_code=True)`: `auto_map` names the model for `AutoModelForImageSegmentation` too,
        `config.custom_pipelines` names the pipeline, and its file (`pipeline_tmca.py`, beside this module) is copied
        in. (It is not imported here: a model loads without it, on transformers 4 too.)
        """
        pipeline_file = Path(__file__).with_name("pipeline_tmca.py")
        if self._auto_class is not None and pipeline_file.is_file():
            model_class = f"{type(self).__module__.split('.')[-1]}.{type(self).__name__}"
            self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), "AutoModelForImageSegmentation": model_class}
            self.config.custom_pipelines = {
                "image-segmentation": {
                    "impl": "pipeline_tmca.TmcaImageSegmentationPipeline",
                    "pt": ["AutoModelForImageSegmentation"],
                    "type": "multimodal",
                }
            }
            Path(save_directory).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(pipeline_file, Path(save_directory) / pipeline_file.name)
        return super().save_pretrained(save_directory, *args, **kwargs)


class TmcaForImageSegmentation(TmcaPreTrainedModel):
    r"""
    TMCA: an image encoder (any transformers backbone, strides 4-32), a text encoder (BERT family), the language-guided
    decoder, and at each alignment level TSSD/global contrast, the dense pixel term and LTE. Give it an image batch and
    its reports; with `labels` it also returns the training loss.
    """

    def __init__(self, config: TmcaConfig):
        super().__init__(config)
        self.backbone = _build_backbone(config.backbone_config)
        channels = list(self.backbone.channels)
        if len(channels) != 4:
            raise ValueError(
                f"The backbone gives {len(channels)} feature maps ({self.backbone.out_features}); TMCA needs 4, at "
                f"strides 4, 8, 16, 32 (set the backbone config's out_features)."
            )
        hidden = config.decoder_hidden_sizes
        self.text_encoder = AutoModel.from_config(config.text_config) if config.use_text else None
        self.null_text = (
            nn.Parameter(torch.zeros(1, config.text_config.hidden_size))
            if config.use_text and config.text_dropout > 0
            else None
        )
        self.neck = nn.Conv2d(channels[3], hidden[0], 1)
        self.decoder_stages = nn.ModuleList(
            TmcaDecoderStage(config, hidden[index], channels[2 - index], hidden[index + 1]) for index in range(3)
        )
        level_channels = (
            dict(zip(DECODER_STRIDES, hidden[1:])) if config.alignment_source == "decoder" else dict(zip(BACKBONE_STRIDES, channels))
        )
        self.alignment_levels = nn.ModuleDict(
            {str(stride): TmcaAlignmentLevel(config, level_channels[stride]) for stride in config.alignment_levels}
        )
        self.target_enhancements = nn.ModuleDict(
            {str(stride): TmcaTargetEnhancement(config) for stride in config.alignment_levels}
            if config.use_target_enhancement
            else {}
        )
        self.segmentation_head = nn.Conv2d(hidden[3], config.num_labels, 1)
        self.image_statistics = TmcaImageStatistics(channels[3])
        self.report_matching = (
            TmcaReportMatching(config) if config.report_matching_hidden_size is not None else None
        )
        self.post_init()
        if self.report_matching is not None:
            self.report_matching.requires_grad_(False)  # trained after the main training (fit_report_matching)
        if self.text_encoder is not None and config.freeze_text_encoder:
            self.text_encoder.requires_grad_(False)
            self.text_encoder.eval()  # from construction on: a module built in Python starts in train mode

    def train(self, mode: bool = True):
        """A frozen text encoder stays in eval mode (no dropout) while the rest trains."""
        super().train(mode)
        if self.text_encoder is not None and self.config.freeze_text_encoder:
            self.text_encoder.eval()
        return self

    # -- inputs ------------------------------------------------------------------------------------------------------

    def _check_inputs(self, pixel_values, input_ids, attention_mask, text_hidden_states, labels):
        channels = self.config.backbone_config.num_channels
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4 or pixel_values.shape[1] != channels:
            shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
            raise ValueError(
                f"pixel_values has shape {shape}; expected (batch, {channels}, height, width). Use TmcaProcessor to "
                f"turn images (gray, RGB or RGBA) into pixel_values."
            )
        batch_size, _, height, width = pixel_values.shape
        if height % 32 or width % 32:
            raise ValueError(f"pixel_values is {height}x{width}; height and width must be multiples of 32.")
        if self.config.use_text and input_ids is None and not self.config.supports_text_free_inference:
            raise ValueError(
                "This model needs a report for every image (input_ids): it was trained without text_dropout, so it "
                "cannot segment without text. Pass text= to the processor."
            )
        for name, tensor in (("input_ids", input_ids), ("attention_mask", attention_mask)):
            if tensor is not None and (tensor.ndim != 2 or tensor.shape[0] != batch_size):
                raise ValueError(f"{name} has shape {tuple(tensor.shape)}; expected ({batch_size}, sequence_length).")
        if text_hidden_states is not None:
            expected = (*input_ids.shape, self.config.text_config.hidden_size) if input_ids is not None else None
            if expected is None or tuple(text_hidden_states.shape) != expected:
                raise ValueError(
                    f"text_hidden_states has shape {tuple(text_hidden_states.shape)}; expected the text encoder's "
                    f"last hidden state for input_ids, {expected or '(batch, sequence_length, hidden_size) with input_ids given'}."
                )
            if not self.config.freeze_text_encoder:
                raise ValueError("text_hidden_states stand in for a frozen text encoder; this model trains its own.")
        if labels is not None:
            if self.config.num_labels != 1:
                raise ValueError(
                    f"The TMCA loss is for binary lesion masks (num_labels=1); this model has "
                    f"num_labels={self.config.num_labels}. Train with one label, or compute your own loss on the logits."
                )
            if labels.ndim == 4 and labels.shape[1] == 1:
                labels = labels[:, 0]
            if labels.shape != (batch_size, height, width):
                raise ValueError(
                    f"labels has shape {tuple(labels.shape)}; expected ({batch_size}, {height}, {width}), one mask "
                    f"the size of each image."
                )
            if not bool(((labels == 0) | (labels == 1)).all()):
                raise ValueError("labels must be binary masks with values 0 and 1.")
            return labels[:, None].to(pixel_values.dtype)  # (B, 1, H, W)
        return None

    def report_token_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """
        The text encoder's last hidden state for tokenised reports: the one text path. The forward uses it, and so does
        anything that caches a frozen encoder's states beforehand (`DecodedSplit.cache_report_states`), so a cache holds
        exactly what the forward would compute. A frozen encoder runs in eval mode (no dropout) and without gradients
        whatever mode it was left in.
        """
        if not self.config.freeze_text_encoder:
            return self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.text_encoder.training:  # put in train mode by hand (`model.text_encoder.train()`): frozen means eval
            self.text_encoder.eval()
        with torch.no_grad():
            return self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def encode_text(self, input_ids, attention_mask, batch_size: int, device, hidden_states=None) -> TmcaText | None:
        """
        Token states, padding mask and sentence vector of the reports; the null text where there is none.
        `hidden_states`, the frozen text encoder's output for `input_ids` computed beforehand, skips the encoder.
        """
        if not self.config.use_text:
            return None
        if input_ids is None:
            states = self.null_text[:, None].expand(batch_size, 1, -1)
            return TmcaText(
                states=states,
                padding_mask=torch.zeros(batch_size, 1, dtype=torch.bool, device=device),
                vector=states[:, 0],
                has_report=torch.zeros(batch_size, dtype=torch.bool, device=device),
                same_report=None,
            )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        states = hidden_states if hidden_states is not None else self.report_token_states(input_ids, attention_mask)
        weights = attention_mask[..., None].to(states.dtype)
        vector = (states * weights).sum(1) / weights.sum(1).clamp(min=1)
        text = TmcaText(
            states=states,
            padding_mask=attention_mask == 0,
            vector=vector,
            has_report=torch.ones(batch_size, dtype=torch.bool, device=device),
            same_report=(input_ids[:, None, :] == input_ids[None, :, :]).all(-1),
        )
        if self.training and self.config.text_dropout > 0:
            text = self._drop_reports(text)
        return text

    def _drop_reports(self, text: TmcaText) -> TmcaText:
        """Text dropout: the learned null text replaces a report with probability `config.text_dropout`."""
        dropped = torch.rand(text.vector.shape[0], device=text.vector.device) < self.config.text_dropout
        null_states = torch.zeros_like(text.states)
        null_states[:, 0] = self.null_text
        null_padding = torch.ones_like(text.padding_mask)
        null_padding[:, 0] = False
        return TmcaText(
            states=torch.where(dropped[:, None, None], null_states, text.states),
            padding_mask=torch.where(dropped[:, None], null_padding, text.padding_mask),
            vector=torch.where(dropped[:, None], self.null_text, text.vector),
            has_report=~dropped,
            same_report=text.same_report,
        )

    # -- alignment ---------------------------------------------------------------------------------------------------

    def _align(self, stride: int, features: torch.Tensor, text: TmcaText):
        """One alignment level on `features`: what it computed, and the features after LTE (when switched on)."""
        level = self.alignment_levels[str(stride)]
        alignment = TmcaLevelAlignment(stride, *level(features, text.vector))
        if str(stride) in self.target_enhancements:
            features = self.target_enhancements[str(stride)](features, alignment.similarity_logits.sigmoid())
        return features, alignment

    def _contrastive_loss(self, alignment: TmcaLevelAlignment, level_masks: torch.Tensor, text: TmcaText):
        """TSSD contrast at one level, or plain global contrast with `use_target_alignment=False`."""
        scale = self.alignment_levels[str(alignment.stride)].contrastive_scale()
        if text.same_report is None:  # no report in the whole batch (text-free training): nothing to contrast
            return alignment.pixel_embeddings.sum() * 0.0
        if self.config.use_target_alignment:
            return target_sensitive_contrastive_loss(
                alignment.pixel_embeddings, alignment.text_embeddings, level_masks, text.same_report, text.has_report, scale
            )
        return global_contrastive_loss(
            alignment.pixel_embeddings, alignment.text_embeddings, text.same_report, text.has_report, scale
        )

    def _loss(self, logits, masks, text: TmcaText | None, alignments: list) -> dict:
        """L = Dice + BCE on the logits + alignment_weight * sum_s w_s (contrastive_s + pixel_alignment_weight * pixel_s)."""
        segmentation = dice_bce_loss(logits, masks, self.config.dice_weight, self.config.bce_weight)
        if not alignments:
            return {"loss": segmentation, "segmentation_loss": segmentation}
        weights = dict(zip(self.config.alignment_levels, self.config.alignment_level_weights))
        contrastive = pixel = 0.0
        for alignment in alignments:
            level_masks = F.interpolate(masks, size=alignment.similarity_logits.shape[-2:], mode="area")  # M_s, soft
            contrastive = contrastive + weights[alignment.stride] * self._contrastive_loss(alignment, level_masks, text)
            pixel = pixel + weights[alignment.stride] * dice_bce_loss(alignment.similarity_logits, level_masks)
        total_alignment = contrastive + self.config.pixel_alignment_weight * pixel
        return {
            "loss": segmentation + self.config.alignment_weight * total_alignment,
            "segmentation_loss": segmentation,
            "alignment_loss": total_alignment,
            "contrastive_loss": contrastive,
            "pixel_alignment_loss": pixel,
        }

    # -- decoding ----------------------------------------------------------------------------------------------------

    def _segment(self, features, text: TmcaText | None, size) -> tuple:
        """The language-guided decoder and the alignment levels on the backbone's four feature maps: logits at `size`
        (B, num_labels, H, W) and what each alignment level computed."""
        features = list(features)
        alignments = []
        encoder_alignment = self.config.alignment_source == "encoder"
        if encoder_alignment:
            for index, stride in enumerate(BACKBONE_STRIDES[:3]):
                if stride in self.config.alignment_levels:
                    features[index], alignment = self._align(stride, features[index], text)
                    alignments.append(alignment)

        hidden_states = self.neck(features[3])  # (B, hidden[0], H/32, W/32)
        for stage, skip, stride in zip(self.decoder_stages, reversed(features[:3]), DECODER_STRIDES):
            hidden_states = stage(hidden_states, skip, text)  # Z_s at stride 16, 8, 4
            if not encoder_alignment and stride in self.config.alignment_levels:
                hidden_states, alignment = self._align(stride, hidden_states, text)
                alignments.append(alignment)
        logits = F.interpolate(self.segmentation_head(hidden_states), size=size, mode="bilinear", align_corners=False)
        return logits, alignments

    @torch.no_grad()
    def text_free_lesion_features(self, features) -> torch.Tensor:
        """
        What the report-matching head sees of an image, whatever report comes with it: the lesion the model finds
        without a report (the learned null text), as `TmcaReportMatching.lesion_features`, (B, 48). `features`: the
        backbone's four feature maps. Used by the forward and by `tmca_hf.report_matching` alike.
        """
        if self.null_text is None:
            raise ValueError("The report-matching head needs a text-free prediction: train with text_dropout > 0.")
        null_text = self.encode_text(None, None, features[3].shape[0], features[3].device)
        logits, _ = self._segment(features, null_text, tuple(4 * size for size in features[0].shape[-2:]))
        return TmcaReportMatching.lesion_features(logits)

    # -- forward -----------------------------------------------------------------------------------------------------

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        text_hidden_states: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
    ) -> TmcaSegmentationOutput | tuple:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`): images from the processor.
            input_ids (`torch.LongTensor` of shape `(batch_size, max_text_length)`, *optional*): the tokenised
                reports. Optional only for models that support text-free inference.
            attention_mask (`torch.LongTensor` of shape `(batch_size, max_text_length)`, *optional*).
            text_hidden_states (`torch.FloatTensor` of shape `(batch_size, max_text_length, hidden_size)`, *optional*):
                the frozen text encoder's last hidden state for `input_ids`, computed once per distinct report (as
                `train.py` does); the text encoder is then skipped. `input_ids` are still needed: equal reports are
                positives for each other in the contrastive terms.
            labels (`torch.FloatTensor` of shape `(batch_size, height, width)`, *optional*): binary lesion masks; only
                needed for the loss.

        Example:

        ```python
        >>> from transformers import AutoModel, AutoProcessor
        >>> model = AutoModel.from_pretrained("org/tmca", trust_remote_code=True)
        >>> processor = AutoProcessor.from_pretrained("org/tmca", trust_remote_code=True)
        >>> inputs = processor(images=image, text="bilateral pulmonary infection, two infected areas.")
        >>> outputs = model(**inputs)
        >>> mask = processor.post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1]])[0]
        ```
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        masks = self._check_inputs(pixel_values, input_ids, attention_mask, text_hidden_states, labels)
        batch_size = pixel_values.shape[0]
        features = self.backbone(pixel_values).feature_maps  # strides 4, 8, 16, 32
        text = self.encode_text(input_ids, attention_mask, batch_size, pixel_values.device, text_hidden_states)
        logits, alignments = self._segment(features, text, pixel_values.shape[-2:])

        losses = {}
        if labels is not None:
            losses = self._loss(logits, masks, text, alignments)
        maps = {alignment.stride: alignment.similarity_logits.sigmoid() for alignment in alignments}
        consistency = None
        if input_ids is not None and self.config.num_labels == 1:
            calibration = self.config.consistency_calibration
            if self.report_matching is not None:
                with torch.no_grad():
                    score = self.report_matching(self.text_free_lesion_features(features), text.vector)
                consistency = calibrated_consistency(score, calibration)
            elif alignments:
                consistency = report_consistency(logits, alignments, calibration)
            if consistency is not None:
                consistency = consistency.where(text.has_report, float("nan"))  # NaN only where text dropout hit
        ood_score = None if self.config.ood_threshold is None else self.image_statistics(features[3]).detach()
        output = TmcaSegmentationOutput(
            logits=logits,
            alignment_maps=tuple(maps[stride] for stride in self.config.alignment_levels),
            **losses,
            consistency=consistency,
            ood_score=ood_score,
        )
        return output if return_dict else output.to_tuple()


__all__ = [
    "TmcaForImageSegmentation",
    "TmcaImageStatistics",
    "TmcaPreTrainedModel",
    "TmcaReportMatching",
    "TmcaSegmentationOutput",
    "calibrated_consistency",
    "report_consistency",
]
