"""PyTorch EfficientNet-Lite: the TMCA image encoder (docs/method.md section 1) as a transformers backbone.

EfficientNet-Lite is EfficientNet without squeeze-excitation, with ReLU6 activations and with the stem and head
widths kept fixed. Convolutions use TensorFlow "SAME" padding, as the converted ImageNet weights were trained
with it: a stride-2 convolution on an even input pads one row/column more at the bottom/right than at the top/left.
"""

import math
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BackboneOutput, ImageClassifierOutputWithNoAttention

from .configuration_efficientnet_lite import EfficientNetLiteConfig


try:  # transformers 5
    from transformers.backbone_utils import BackboneMixin
except ImportError:  # transformers 4: the saved model folder loads there as remote code too
    from transformers.utils.backbone_utils import BackboneMixin


@dataclass(frozen=True)
class EfficientNetLiteBlockArgs:
    """Shape of one MBConv block after width/depth scaling."""

    in_channels: int
    out_channels: int
    kernel_size: int
    stride: int
    expand_ratio: int
    drop_path_rate: float


def round_filters(config: EfficientNetLiteConfig, num_channels: int) -> int:
    """Scale a channel count by `config.width_coefficient` and round it to a multiple of `config.depth_divisor`
    (never more than 10% down), as the TensorFlow reference does."""
    divisor = config.depth_divisor
    num_channels = num_channels * config.width_coefficient
    new_channels = max(divisor, int(num_channels + divisor / 2) // divisor * divisor)
    if new_channels < 0.9 * num_channels:
        new_channels += divisor
    return int(new_channels)


def efficientnet_lite_stage_args(config: EfficientNetLiteConfig) -> list[list[EfficientNetLiteBlockArgs]]:
    """Expand the per-group description of `config` into blocks, cut into backbone stages.

    Lite models scale neither the repeats of the first and the last group nor the stem width (the first block
    takes `config.stem_channels`). A stage starts at every stride-2 group (stride-1 groups before the first one
    belong to stage 1), so stage `k` ends at stride `2 ** (k + 1)`.
    """
    last = len(config.strides) - 1
    group_repeats = [
        repeats if idx in (0, last) else int(math.ceil(config.depth_coefficient * repeats))
        for idx, repeats in enumerate(config.num_block_repeats)
    ]
    num_blocks = sum(group_repeats)
    stages, in_channels, block_idx = [], config.stem_channels, 0
    for idx, repeats in enumerate(group_repeats):
        if not stages or (config.strides[idx] == 2 and 2 in config.strides[:idx]):
            stages.append([])
        out_channels = round_filters(config, config.out_channels[idx])
        for repeat in range(repeats):
            stages[-1].append(
                EfficientNetLiteBlockArgs(
                    in_channels=in_channels,
                    out_channels=out_channels,
                    kernel_size=config.kernel_sizes[idx],
                    stride=config.strides[idx] if repeat == 0 else 1,
                    expand_ratio=config.expand_ratios[idx],
                    drop_path_rate=config.drop_connect_rate * block_idx / num_blocks,
                )
            )
            in_channels = out_channels
            block_idx += 1
    return stages


def check_pixel_values(pixel_values, num_channels: int) -> None:
    """Raise a clear error unless `pixel_values` is a float tensor (batch_size, num_channels, height, width)."""
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}")
    if pixel_values.ndim != 4:
        raise ValueError(
            f"pixel_values must have shape (batch_size, {num_channels}, height, width), got shape "
            f"{tuple(pixel_values.shape)}"
        )
    if pixel_values.shape[1] != num_channels:
        raise ValueError(
            f"pixel_values must have {num_channels} channels (config.num_channels) in dimension 1, got shape "
            f"{tuple(pixel_values.shape)}; repeat gray images to {num_channels} channels"
        )
    if not pixel_values.is_floating_point():
        raise TypeError(f"pixel_values must be a float tensor scaled to [-1, 1], got dtype {pixel_values.dtype}")


def drop_path(hidden_states: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero the residual branch of whole samples with probability `drop_prob` while training,
    scaling the kept samples by 1 / (1 - drop_prob)."""
    if drop_prob == 0.0 or not training:
        return hidden_states
    keep_prob = 1.0 - drop_prob
    mask_shape = (hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)
    mask = hidden_states.new_empty(mask_shape).bernoulli_(keep_prob)
    return hidden_states * mask / keep_prob


class EfficientNetLiteSameConv2d(nn.Conv2d):
    """Bias-free convolution with TensorFlow "SAME" padding: the output size is ceil(input size / stride) and an odd
    total padding puts the extra row/column at the bottom/right."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1):
        # with stride 1 and an odd kernel, "SAME" padding is symmetric: let the convolution do it
        padding = kernel_size // 2 if stride == 1 else 0
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.stride[0] > 1:
            pad_height = self._same_padding(hidden_states.shape[-2], self.kernel_size[0], self.stride[0])
            pad_width = self._same_padding(hidden_states.shape[-1], self.kernel_size[1], self.stride[1])
            padding = (pad_width // 2, pad_width - pad_width // 2, pad_height // 2, pad_height - pad_height // 2)
            hidden_states = nn.functional.pad(hidden_states, padding)
        return super().forward(hidden_states)

    @staticmethod
    def _same_padding(size: int, kernel_size: int, stride: int) -> int:
        return max((math.ceil(size / stride) - 1) * stride + kernel_size - size, 0)


class EfficientNetLiteConvLayer(nn.Module):
    """Convolution, batch normalisation and (optionally) the activation."""

    def __init__(
        self,
        config: EfficientNetLiteConfig,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        activation: bool = True,
    ):
        super().__init__()
        self.convolution = EfficientNetLiteSameConv2d(in_channels, out_channels, kernel_size, stride, groups)
        self.batchnorm = nn.BatchNorm2d(out_channels, eps=config.batch_norm_eps, momentum=config.batch_norm_momentum)
        self.activation = ACT2FN[config.hidden_act] if activation else nn.Identity()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.batchnorm(self.convolution(hidden_states)))


class EfficientNetLiteBlock(nn.Module):
    """Inverted-residual (MBConv) block without squeeze-excitation: 1x1 expansion (skipped for ratio 1), kxk depthwise
    convolution, linear 1x1 projection, and an identity shortcut when the shape is kept."""

    def __init__(self, config: EfficientNetLiteConfig, args: EfficientNetLiteBlockArgs):
        super().__init__()
        hidden_channels = args.in_channels * args.expand_ratio
        self.expansion = (
            EfficientNetLiteConvLayer(config, args.in_channels, hidden_channels)
            if args.expand_ratio != 1
            else nn.Identity()
        )
        self.depthwise = EfficientNetLiteConvLayer(
            config, hidden_channels, hidden_channels, args.kernel_size, args.stride, groups=hidden_channels
        )
        self.projection = EfficientNetLiteConvLayer(config, hidden_channels, args.out_channels, activation=False)
        self.has_shortcut = args.stride == 1 and args.in_channels == args.out_channels
        self.drop_path_rate = args.drop_path_rate

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # (batch_size, in_channels, height, width) -> (batch_size, out_channels, height / stride, width / stride)
        residual = self.projection(self.depthwise(self.expansion(hidden_states)))
        if not self.has_shortcut:
            return residual
        return hidden_states + drop_path(residual, self.drop_path_rate, self.training)


class EfficientNetLiteStage(nn.Module):
    """The blocks between two backbone outputs; the first block downsamples (except for leading stride-1 blocks)."""

    def __init__(self, config: EfficientNetLiteConfig, stage_args: list[EfficientNetLiteBlockArgs]):
        super().__init__()
        self.layers = nn.ModuleList(EfficientNetLiteBlock(config, args) for args in stage_args)
        self.out_channels = stage_args[-1].out_channels

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            hidden_states = layer(hidden_states)
        return hidden_states


class EfficientNetLiteEncoder(nn.Module):
    """Stem followed by the stages; returns the stem output and every stage output (strides 2, 4, 8, 16, 32)."""

    def __init__(self, config: EfficientNetLiteConfig):
        super().__init__()
        self.stem = EfficientNetLiteConvLayer(config, config.num_channels, config.stem_channels, 3, stride=2)
        self.stages = nn.ModuleList(
            EfficientNetLiteStage(config, stage_args) for stage_args in efficientnet_lite_stage_args(config)
        )

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # Channels-last throughout: on CPU the backward of a 5x5 depthwise convolution is about 200x slower in the
        # default layout (16 s against 0.08 s for a batch of 8 at 28x28 with torch 2.13); GPUs prefer it as well.
        hidden_states = (self.stem(pixel_values.contiguous(memory_format=torch.channels_last)),)
        for stage in self.stages:
            hidden_states += (stage(hidden_states[-1]),)
        return hidden_states


class EfficientNetLitePreTrainedModel(PreTrainedModel):
    config_class = EfficientNetLiteConfig
    base_model_prefix = "efficientnet_lite"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["EfficientNetLiteBlock"]

    @torch.no_grad()
    def _init_weights(self, module):
        if isinstance(module, nn.Conv2d):
            # variance scaling on fan-out, as the TensorFlow reference initialises convolutions
            torch.nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, std=self.config.initializer_range)
            torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            torch.nn.init.ones_(module.weight)
            torch.nn.init.zeros_(module.bias)
            torch.nn.init.zeros_(module.running_mean)
            torch.nn.init.ones_(module.running_var)
            torch.nn.init.zeros_(module.num_batches_tracked)


class EfficientNetLiteBackbone(BackboneMixin, EfficientNetLitePreTrainedModel):
    """EfficientNet-Lite as a transformers backbone: the TMCA image encoder. With the default config it returns the
    four feature maps at strides 4, 8, 16 and 32 (24, 40, 112 and 320 channels for Lite0; see `self.channels`)."""

    has_attentions = False
    # a classifier checkpoint loads directly; its head is not part of the backbone
    _keys_to_ignore_on_load_unexpected = [r"^head\.", r"^classifier\."]

    def __init__(self, config: EfficientNetLiteConfig):
        super().__init__(config)
        if hasattr(self, "_init_backbone"):  # transformers 4 (5 does this in BackboneMixin.__init__)
            self._init_backbone(config)
        self.encoder = EfficientNetLiteEncoder(config)
        self.num_features = [config.stem_channels] + [stage.out_channels for stage in self.encoder.stages]
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BackboneOutput | tuple:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Images scaled to [-1, 1] (mean 0.5, std 0.5 on [0, 1] values).
        output_hidden_states (`bool`, *optional*):
            Also return the stem output and every stage output.
        return_dict (`bool`, *optional*):
            Return a `BackboneOutput` instead of a tuple.
        """
        check_pixel_values(pixel_values, self.config.num_channels)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )

        hidden_states = self.encoder(pixel_values)
        feature_maps = tuple(
            hidden_state
            for stage, hidden_state in zip(self.stage_names, hidden_states)
            if stage in self.out_features
        )

        if not return_dict:
            return (feature_maps, hidden_states) if output_hidden_states else (feature_maps,)
        return BackboneOutput(
            feature_maps=feature_maps, hidden_states=hidden_states if output_hidden_states else None, attentions=None
        )


class EfficientNetLiteForImageClassification(EfficientNetLitePreTrainedModel):
    """EfficientNet-Lite with its ImageNet head (1x1 convolution to `config.head_channels`, global average pooling,
    dropout, linear layer). Its weights share names with `EfficientNetLiteBackbone`, which loads them directly; the
    project uses it to check the converted weights."""

    def __init__(self, config: EfficientNetLiteConfig):
        super().__init__(config)
        self.encoder = EfficientNetLiteEncoder(config)
        self.head = EfficientNetLiteConvLayer(config, self.encoder.stages[-1].out_channels, config.head_channels)
        self.pooler = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(config.dropout_rate)
        self.classifier = nn.Linear(config.head_channels, config.num_labels)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutputWithNoAttention | tuple:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Images scaled to [-1, 1] (mean 0.5, std 0.5 on [0, 1] values).
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Class indices in `[0, config.num_labels - 1]`; gives a cross-entropy loss.
        output_hidden_states (`bool`, *optional*):
            Also return the stem output and every stage output.
        return_dict (`bool`, *optional*):
            Return an `ImageClassifierOutputWithNoAttention` instead of a tuple.
        """
        check_pixel_values(pixel_values, self.config.num_channels)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )

        hidden_states = self.encoder(pixel_values)
        pooled = self.pooler(self.head(hidden_states[-1])).flatten(1)  # (batch_size, head_channels)
        logits = self.classifier(self.dropout(pooled))  # (batch_size, num_labels)
        loss = self.loss_function(labels, logits, self.config) if labels is not None else None

        if not return_dict:
            output = (logits, hidden_states) if output_hidden_states else (logits,)
            return (loss,) + output if loss is not None else output
        return ImageClassifierOutputWithNoAttention(
            loss=loss, logits=logits, hidden_states=hidden_states if output_hidden_states else None
        )


__all__ = ["EfficientNetLiteBackbone", "EfficientNetLiteForImageClassification", "EfficientNetLitePreTrainedModel"]
