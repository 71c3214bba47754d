"""EfficientNet-Lite backbone (TMCA image encoder, method section 1): the converted network is the source network."""

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tmca_hf.convert_efficientnet_lite import (
    convert_state_dict,
    imagenet_labels,
    load_efficientnet_lite0,
    load_source_state_dict,
)
from tmca_hf.modeling.configuration_efficientnet_lite import EfficientNetLiteConfig
from tmca_hf.modeling.modeling_efficientnet_lite import EfficientNetLiteBackbone, EfficientNetLiteForImageClassification


# stride of each of the 16 blocks of EfficientNet-Lite0 (block groups r1 s1, r2 s2, r2 s2, r3 s2, r3 s1, r4 s2, r1 s1)
LITE0_BLOCK_STRIDES = [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1]


def tf_same_pad(x, kernel_size, stride):
    """TensorFlow "SAME" padding, written out independently of the model code."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad order: width first
        out = -(-size // stride)
        total = max((out - 1) * stride + kernel_size - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


def reference_forward(sd, x):
    """EfficientNet-Lite0 logits computed with torch.nn.functional directly on the source (lukemelas) state dict."""

    def conv_bn(x, prefix_conv, prefix_bn, stride=1, groups=1, act=True):
        weight = sd[prefix_conv + ".weight"]
        x = F.conv2d(tf_same_pad(x, weight.shape[-1], stride), weight, stride=stride, groups=groups)
        x = F.batch_norm(
            x, sd[prefix_bn + ".running_mean"], sd[prefix_bn + ".running_var"], sd[prefix_bn + ".weight"],
            sd[prefix_bn + ".bias"], training=False, eps=1e-3,
        )
        return F.relu6(x) if act else x

    x = conv_bn(x, "_conv_stem", "_bn0", stride=2)
    for idx, stride in enumerate(LITE0_BLOCK_STRIDES):
        p = f"_blocks.{idx}."
        inputs = x
        if p + "_expand_conv.weight" in sd:
            x = conv_bn(x, p + "_expand_conv", p + "_bn0")
        x = conv_bn(x, p + "_depthwise_conv", p + "_bn1", stride=stride, groups=x.shape[1])
        x = conv_bn(x, p + "_project_conv", p + "_bn2", act=False)
        if stride == 1 and inputs.shape == x.shape:
            x = x + inputs
    x = conv_bn(x, "_conv_head", "_bn1")
    return F.linear(x.mean(dim=(2, 3)), sd["_fc.weight"], sd["_fc.bias"])


def preprocess(image: Image.Image, size: int = 224) -> torch.Tensor:
    """Central crop (224/256 of the short side), bicubic resize, RGB scaled to [-1, 1]: (1, 3, size, size)."""
    width, height = image.size
    crop = round(min(width, height) * size / (size + 32))
    left, top = (width - crop) // 2, (height - crop) // 2
    image = image.crop((left, top, left + crop, top + crop)).resize((size, size), Image.BICUBIC)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)
    return (pixels / 255.0 - 0.5).div(0.5).unsqueeze(0)


@pytest.fixture(scope="module")
def source_state_dict():
    return load_source_state_dict()


@pytest.fixture(scope="module")
def classifier():
    return load_efficientnet_lite0(with_classifier=True)


@pytest.fixture(scope="module")
def tiny_config():
    return EfficientNetLiteConfig(
        out_channels=[8, 16, 16, 24],
        kernel_sizes=[3, 3, 5, 3],
        strides=[1, 2, 2, 2],
        num_block_repeats=[1, 2, 1, 1],
        expand_ratios=[1, 2, 2, 2],
        stem_channels=8,
        head_channels=32,
        num_labels=3,
    )


def test_logits_match_functional_reference(source_state_dict, classifier):
    torch.manual_seed(0)
    # 128x160: even sizes at every downsampling (asymmetric "SAME" padding); 97x130: odd and even sizes mixed
    for shape in [(2, 3, 128, 160), (1, 3, 97, 130)]:
        pixel_values = torch.rand(shape) * 2 - 1
        with torch.no_grad():
            expected = reference_forward(source_state_dict, pixel_values)
            logits = classifier(pixel_values).logits
        max_diff = (logits - expected).abs().max().item()
        print(f"max |logit - reference| at {shape[2:]}: {max_diff:.3g}")
        assert logits.shape == (shape[0], 1000)
        assert max_diff < 1e-4


def test_conversion_uses_every_key(source_state_dict, classifier):
    converted = convert_state_dict(source_state_dict)
    assert len(converted) == len(source_state_dict)
    assert converted.keys() == classifier.state_dict().keys()
    with pytest.raises(ValueError, match="_blocks.99"):
        convert_state_dict({**source_state_dict, "_blocks.99._bn2.weight": torch.ones(1)})


# ImageNet-1k indices: 698 palace, 442 bell cote, 663 monastery, 483 castle, 832 stupa, 668 mosque, 497 church;
# 985 daisy
BUILDINGS = {698, 442, 663, 483, 832, 668, 497}


@pytest.mark.parametrize(
    "image_name, expected_top1, top5_subset, min_overlap",
    [("china.jpg", 698, BUILDINGS, 3), ("flower.jpg", 985, {985}, 1)],
)
def test_classifies_sample_photos(classifier, image_name, expected_top1, top5_subset, min_overlap):
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    image = Image.fromarray(sklearn_datasets.load_sample_image(image_name))
    with torch.no_grad():
        top5 = classifier(preprocess(image)).logits.softmax(-1)[0].topk(5)
    names = imagenet_labels() or {}
    print(image_name, [(idx, names.get(idx, "?"), round(p, 3)) for p, idx in zip(*map(torch.Tensor.tolist, top5))])
    assert top5.indices[0].item() == expected_top1
    assert len(set(top5.indices.tolist()) & top5_subset) >= min_overlap


def test_backbone_feature_maps(classifier):
    backbone = load_efficientnet_lite0()
    assert backbone.stage_names == ["stem", "stage1", "stage2", "stage3", "stage4"]
    assert backbone.out_features == ["stage1", "stage2", "stage3", "stage4"]
    assert backbone.channels == [24, 40, 112, 320]
    pixel_values = torch.rand(1, 3, 96, 128) * 2 - 1
    with torch.no_grad():
        outputs = backbone(pixel_values, output_hidden_states=True)
        reference_hidden = classifier(pixel_values, output_hidden_states=True).hidden_states
    shapes = [tuple(feature_map.shape) for feature_map in outputs.feature_maps]
    assert shapes == [(1, c, 96 // s, 128 // s) for c, s in zip([24, 40, 112, 320], [4, 8, 16, 32])]
    assert [h.shape[1] for h in outputs.hidden_states] == [32, 24, 40, 112, 320]
    for hidden, expected in zip(outputs.hidden_states, reference_hidden):
        torch.testing.assert_close(hidden, expected)
    assert backbone(pixel_values, return_dict=False)[0][0].shape == shapes[0]


def test_tiny_random_config(tiny_config):
    assert tiny_config.stage_names == ["stem", "stage1", "stage2", "stage3"]
    backbone = EfficientNetLiteBackbone(tiny_config)
    assert backbone.channels == [16, 16, 24]
    outputs = backbone(torch.randn(2, 3, 33, 47))
    assert [tuple(f.shape) for f in outputs.feature_maps] == [(2, 16, 9, 12), (2, 16, 5, 6), (2, 24, 3, 3)]
    classifier = EfficientNetLiteForImageClassification(tiny_config)
    outputs = classifier(torch.randn(2, 3, 32, 32), labels=torch.tensor([0, 2]))
    assert outputs.logits.shape == (2, 3)
    outputs.loss.backward()
    assert classifier.encoder.stem.convolution.weight.grad is not None


@pytest.mark.parametrize(
    "width, depth, num_params",
    # EfficientNet-Lite1..4 sizes of the TensorFlow reference (5.417M, 6.092M, 8.197M, 13.007M parameters)
    [(1.0, 1.1, 5_416_680), (1.1, 1.2, 6_092_072), (1.2, 1.4, 8_197_096), (1.4, 1.8, 13_006_568)],
)
def test_width_and_depth_scaling_give_lite1_to_lite4(width, depth, num_params):
    config = EfficientNetLiteConfig(width_coefficient=width, depth_coefficient=depth)
    model = EfficientNetLiteForImageClassification(config)
    assert sum(parameter.numel() for parameter in model.parameters()) == num_params


def test_out_features_selection(tiny_config):
    config = EfficientNetLiteConfig(**{**tiny_config.to_dict(), "out_features": None, "out_indices": [0, 2]})
    backbone = EfficientNetLiteBackbone(config)
    assert backbone.out_features == ["stem", "stage2"]
    assert backbone.channels == [8, 16]
    assert len(backbone(torch.randn(1, 3, 32, 32)).feature_maps) == 2
    with pytest.raises(ValueError, match="out_features"):
        EfficientNetLiteConfig(out_features=["stage5"])


def test_save_pretrained_round_trip(tiny_config, tmp_path):
    torch.manual_seed(0)
    backbone = EfficientNetLiteBackbone(tiny_config).eval()
    backbone.save_pretrained(tmp_path)
    reloaded = EfficientNetLiteBackbone.from_pretrained(tmp_path).eval()
    assert reloaded.config.out_features == backbone.config.out_features
    pixel_values = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        for before, after in zip(backbone(pixel_values).feature_maps, reloaded(pixel_values).feature_maps):
            torch.testing.assert_close(before, after, rtol=0, atol=0)


def test_converter_cli_output_loads_as_backbone(tmp_path, source_state_dict):
    from tmca_hf.convert_efficientnet_lite import main

    main(["--output_dir", str(tmp_path)])
    assert (tmp_path / "modeling_efficientnet_lite.py").is_file()
    assert EfficientNetLiteConfig.from_pretrained(tmp_path).auto_map == {
        "AutoBackbone": "modeling_efficientnet_lite.EfficientNetLiteBackbone",
        "AutoConfig": "configuration_efficientnet_lite.EfficientNetLiteConfig",
        "AutoModelForImageClassification": "modeling_efficientnet_lite.EfficientNetLiteForImageClassification",
    }
    classifier = EfficientNetLiteForImageClassification.from_pretrained(tmp_path).eval()
    backbone = EfficientNetLiteBackbone.from_pretrained(tmp_path).eval()
    pixel_values = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(
            classifier(pixel_values).logits, reference_forward(source_state_dict, pixel_values), rtol=0, atol=1e-4
        )
        assert backbone(pixel_values).feature_maps[-1].shape == (1, 320, 2, 2)


@pytest.mark.parametrize(
    "pixel_values, error, message",
    [
        (torch.zeros(3, 32, 32), ValueError, r"shape \(batch_size, 3, height, width\)"),
        (torch.zeros(1, 1, 32, 32), ValueError, "3 channels"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), TypeError, "float"),
        ([[0.0]], TypeError, "torch.Tensor"),
    ],
)
def test_bad_pixel_values(tiny_config, pixel_values, error, message):
    backbone = EfficientNetLiteBackbone(tiny_config)
    with pytest.raises(error, match=message):
        backbone(pixel_values)


def test_config_rejects_inconsistent_groups():
    with pytest.raises(ValueError, match="one entry per block group"):
        EfficientNetLiteConfig(kernel_sizes=[3, 3])
    with pytest.raises(ValueError, match="strides"):
        EfficientNetLiteConfig(strides=[1, 3, 2, 2, 1, 2, 1])


@pytest.mark.parametrize("module", ["configuration_efficientnet_lite", "modeling_efficientnet_lite"])
def test_remote_code_imports_only_torch_and_transformers(module):
    tree = ast.parse((Path(__file__).resolve().parents[1] / "tmca_hf" / "modeling" / f"{module}.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert imported <= {"torch", "transformers", "math", "dataclasses"}
