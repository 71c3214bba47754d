"""EfficientNet-Lite configuration (TMCA image encoder, docs/method.md section 1)."""

from transformers import PretrainedConfig


try:  # transformers 5
    from transformers.backbone_utils import BackboneConfigMixin
except ImportError:  # transformers 4: the saved model folder loads there as remote code too
    from transformers.utils.backbone_utils import BackboneConfigMixin, get_aligned_output_features_output_indices


class EfficientNetLiteConfig(BackboneConfigMixin, PretrainedConfig):
    r"""
    Configuration of an EfficientNet-Lite network (Tan & Le, 2019; the "lite" variant of the TensorFlow TPU
    repository: ReLU6 activations, no squeeze-excitation, stem and head widths not scaled). The defaults give
    EfficientNet-Lite0, whose ImageNet weights `convert_efficientnet_lite.py` converts.

    The network is a stem (3x3 stride-2 convolution) followed by block groups of inverted-residual (MBConv)
    blocks. Group `i` repeats `num_block_repeats[i]` blocks with kernel `kernel_sizes[i]`, expansion
    `expand_ratios[i]` and `out_channels[i]` channels; its first block has stride `strides[i]`. As a backbone
    the groups are cut into stages that end at strides 4, 8, 16 and 32: a stage starts at a stride-2 group
    (stride-1 groups before the first stride-2 group join stage 1), so Lite0 gives `stage_names`
    `["stem", "stage1", "stage2", "stage3", "stage4"]` with 32, 24, 40, 112 and 320 channels at strides 2, 4, 8, 16
    and 32.

    Args:
        num_channels (`int`, *optional*, defaults to 3):
            Channels of the input images.
        width_coefficient (`float`, *optional*, defaults to 1.0):
            Width multiplier of the block channels (Lite0-4: 1.0, 1.0, 1.1, 1.2, 1.4).
        depth_coefficient (`float`, *optional*, defaults to 1.0):
            Depth multiplier of the block repeats, except for the first and the last group (Lite0-4: 1.0, 1.1,
            1.2, 1.4, 1.8).
        depth_divisor (`int`, *optional*, defaults to 8):
            Scaled channel counts are rounded to a multiple of this number.
        stem_channels (`int`, *optional*, defaults to 32):
            Output channels of the stem convolution (not scaled in Lite models).
        head_channels (`int`, *optional*, defaults to 1280):
            Output channels of the 1x1 head convolution of the classifier (not scaled in Lite models).
        kernel_sizes (`list[int]`, *optional*, defaults to `[3, 3, 5, 3, 5, 5, 3]`):
            Depthwise kernel size of each block group.
        out_channels (`list[int]`, *optional*, defaults to `[16, 24, 40, 80, 112, 192, 320]`):
            Output channels of each block group before width scaling.
        strides (`list[int]`, *optional*, defaults to `[1, 2, 2, 2, 1, 2, 1]`):
            Stride (1 or 2) of the first block of each group.
        num_block_repeats (`list[int]`, *optional*, defaults to `[1, 2, 2, 3, 3, 4, 1]`):
            Number of blocks in each group before depth scaling.
        expand_ratios (`list[int]`, *optional*, defaults to `[1, 6, 6, 6, 6, 6, 6]`):
            Channel expansion ratio of the blocks of each group.
        hidden_act (`str`, *optional*, defaults to `"relu6"`):
            Activation after the stem, the expansion, the depthwise and the head convolutions.
        dropout_rate (`float`, *optional*, defaults to 0.2):
            Dropout before the classification layer.
        drop_connect_rate (`float`, *optional*, defaults to 0.2):
            Stochastic-depth rate of the last block; block `n` of `N` drops its residual branch with probability
            `drop_connect_rate * n / N` during training.
        batch_norm_eps (`float`, *optional*, defaults to 1e-3):
            Epsilon of the batch normalisation layers.
        batch_norm_momentum (`float`, *optional*, defaults to 0.01):
            Momentum of the batch normalisation layers in PyTorch's convention (TensorFlow decay 0.99).
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initialiser of the classification layer.
        out_features (`list[str]`, *optional*):
            Stages whose outputs the backbone returns, among `stage_names`. Defaults to every stage after the
            stem (strides 4, 8, 16 and 32).
        out_indices (`list[int]`, *optional*):
            Same as `out_features`, given as indices into `stage_names`.
        num_labels (`int`, *optional*, defaults to 1000):
            Number of classes of the classification layer (ImageNet-1k for the converted weights).

    Example:

    ```python
    >>> from tmca_hf.configuration_efficientnet_lite import EfficientNetLiteConfig
    >>> from tmca_hf.modeling_efficientnet_lite import EfficientNetLiteBackbone

    >>> backbone = EfficientNetLiteBackbone(EfficientNetLiteConfig())
    >>> backbone.channels
    [24, 40, 112, 320]
    ```"""

    model_type = "efficientnet_lite"

    def __init__(
        self,
        num_channels=3,
        width_coefficient=1.0,
        depth_coefficient=1.0,
        depth_divisor=8,
        stem_channels=32,
        head_channels=1280,
        kernel_sizes=(3, 3, 5, 3, 5, 5, 3),
        out_channels=(16, 24, 40, 80, 112, 192, 320),
        strides=(1, 2, 2, 2, 1, 2, 1),
        num_block_repeats=(1, 2, 2, 3, 3, 4, 1),
        expand_ratios=(1, 6, 6, 6, 6, 6, 6),
        hidden_act="relu6",
        dropout_rate=0.2,
        drop_connect_rate=0.2,
        batch_norm_eps=1e-3,
        batch_norm_momentum=0.01,
        initializer_range=0.02,
        out_features=None,
        out_indices=None,
        **kwargs,
    ):
        if "id2label" not in kwargs:
            kwargs.setdefault("num_labels", 1000)
        super().__init__(**kwargs)

        group_lists = {
            "kernel_sizes": kernel_sizes,
            "out_channels": out_channels,
            "strides": strides,
            "num_block_repeats": num_block_repeats,
            "expand_ratios": expand_ratios,
        }
        num_groups = {name: len(values) for name, values in group_lists.items()}
        if len(set(num_groups.values())) != 1:
            raise ValueError(
                f"kernel_sizes, out_channels, strides, num_block_repeats and expand_ratios must have one entry per "
                f"block group each, got lengths {num_groups}"
            )
        if any(stride not in (1, 2) for stride in strides) or 2 not in strides:
            raise ValueError(f"`strides` must hold 1 or 2 per group and at least one 2, got {list(strides)}")
        if any(repeats < 1 for repeats in num_block_repeats):
            raise ValueError(f"`num_block_repeats` must be at least 1 per group, got {list(num_block_repeats)}")

        self.num_channels = num_channels
        self.width_coefficient = width_coefficient
        self.depth_coefficient = depth_coefficient
        self.depth_divisor = depth_divisor
        self.stem_channels = stem_channels
        self.head_channels = head_channels
        self.kernel_sizes = list(kernel_sizes)
        self.out_channels = list(out_channels)
        self.strides = list(strides)
        self.num_block_repeats = list(num_block_repeats)
        self.expand_ratios = list(expand_ratios)
        self.hidden_act = hidden_act
        self.dropout_rate = dropout_rate
        self.drop_connect_rate = drop_connect_rate
        self.batch_norm_eps = batch_norm_eps
        self.batch_norm_momentum = batch_norm_momentum
        self.initializer_range = initializer_range

        # one stage per stride-2 group: stage k ends at stride 2 ** (k + 1)
        self.stage_names = ["stem"] + [f"stage{idx}" for idx in range(1, self.strides.count(2) + 1)]
        if out_features is None and out_indices is None:
            out_features = self.stage_names[1:]
        if hasattr(self, "set_output_features_output_indices"):  # transformers 5
            self.set_output_features_output_indices(out_features=out_features, out_indices=out_indices)
        else:  # transformers 4
            self._out_features, self._out_indices = get_aligned_output_features_output_indices(
                out_features=out_features, out_indices=out_indices, stage_names=self.stage_names
            )


__all__ = ["EfficientNetLiteConfig"]
