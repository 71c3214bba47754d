"""The Hub-ready folder: one save_pretrained folder that rebuilds the model anywhere, with or without tmca_hf."""

import ast
import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch
from conftest import run_as_hub_user, tiny_config, tiny_processor
from transformers import AutoModel, AutoProcessor

import tmca_hf.modeling  # noqa: E402
from tmca_hf import TmcaForImageSegmentation, TmcaProcessor
from tmca_hf.hub import push_folder_to_hub


SHIPPED_FOLDER = Path(tmca_hf.modeling.__file__).parent
REMOTE_CODE_FILES = {path.name for path in SHIPPED_FOLDER.glob("*.py")} - {"__init__.py"}  # what travels: the folder


def save_tiny(folder, **overrides):
    torch.manual_seed(0)
    model = TmcaForImageSegmentation(tiny_config(**overrides)).eval()
    processor = tiny_processor()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, processor


def sample_inputs(processor):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (90, 70), dtype=np.uint8), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)]
    return processor(images=images, text=["lower left lung.", "bilateral pulmonary infection."])


def test_folder_holds_config_code_weights_processor_and_tokenizer(tmp_path):
    save_tiny(tmp_path)
    files = {path.name for path in tmp_path.iterdir()}
    assert {name for name in files if name.endswith(".py")} == REMOTE_CODE_FILES, "exactly the shipped folder's files"
    assert {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "tokenizer_config.json"} <= files
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_tmca.TmcaConfig",
        "AutoModel": "modeling_tmca.TmcaForImageSegmentation",
        "AutoModelForImageSegmentation": "modeling_tmca.TmcaForImageSegmentation",
    }
    processor_config = json.loads((tmp_path / "processor_config.json").read_text())
    assert processor_config["auto_map"]["AutoProcessor"] == "processing_tmca.TmcaProcessor"
    assert processor_config["max_text_length"] == 16


def test_remote_code_files_import_only_torch_and_transformers():
    """Every import, indented ones too: only the standard library, torch, transformers, PIL and numpy (which both
    need), each other, and pydicom lazily inside a function (DICOM support is optional)."""
    allowed = {"torch", "transformers", "PIL", "numpy"} | set(sys.stdlib_module_names)
    for name in REMOTE_CODE_FILES:
        tree = ast.parse((SHIPPED_FOLDER / name).read_text())
        top_level = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: only to a module of the folder itself, never up into the toolkit
                    assert node.level == 1 and f"{node.module}.py" in REMOTE_CODE_FILES, f"{name}:{node.lineno}"
                modules = [] if node.level else [node.module]
            else:
                continue
            for module in modules:
                lazy_optional = module.split(".")[0] == "pydicom" and id(node) not in top_level
                assert module.split(".")[0] in allowed or lazy_optional, f"{name}:{node.lineno} imports {module}"


def test_auto_classes_without_remote_code_when_package_installed(tmp_path):
    model, processor = save_tiny(tmp_path)
    inputs = sample_inputs(processor)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    loaded_processor = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is TmcaForImageSegmentation and type(loaded_processor) is TmcaProcessor
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, loaded(**sample_inputs(loaded_processor)).logits)


def test_clean_subprocess_rebuilds_the_same_model_from_remote_code(tmp_path):
    folder = tmp_path / "tmca-tiny"
    model, processor = save_tiny(folder, text_dropout=0.1)
    inputs = sample_inputs(processor)
    with torch.no_grad():
        expected = model(**inputs).logits
    torch.save(expected, tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np, torch
        from transformers import AutoModel, AutoProcessor
        model = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained({str(folder)!r}, trust_remote_code=True)
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 255, (90, 70), dtype=np.uint8), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)]
        inputs = processor(images=images, text=["lower left lung.", "bilateral pulmonary infection."])
        with torch.no_grad():
            logits = model(**inputs).logits
            text_free = model(pixel_values=inputs["pixel_values"]).logits
        assert not any(name.startswith("tmca_hf") for name in sys.modules), "tmca_hf was imported"
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        masks = processor.post_process_semantic_segmentation(logits, target_sizes=[(90, 70), (64, 64)])
        assert [tuple(m.shape) for m in masks] == [(90, 70), (64, 64)]
        torch.testing.assert_close(logits, torch.load({str(tmp_path / "expected.pt")!r}), rtol=0, atol=1e-5)
        print("REMOTE-OK", type(model).__module__, text_free.shape)
        """
    )
    result = run_as_hub_user(script, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REMOTE-OK transformers_modules" in result.stdout
    assert (tmp_path / "hf_home" / "modules" / "transformers_modules").is_dir()


def test_push_uploads_exactly_the_saved_folder(tmp_path, monkeypatch):
    save_tiny(tmp_path)
    calls = {}

    class RecordingApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private=False, exist_ok=False, repo_type=None):
            calls["create_repo"] = (repo_id, private, exist_ok)
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, folder_path, repo_id, commit_message, repo_type=None, ignore_patterns=None):
            calls["upload_folder"] = (str(folder_path), repo_id, repo_type, ignore_patterns)
            return "commit"

    monkeypatch.setattr("tmca_hf.hub.HfApi", RecordingApi)
    push_folder_to_hub(tmp_path, "org/tmca", private=True)
    assert calls["create_repo"] == ("org/tmca", True, True)
    assert calls["upload_folder"] == (str(tmp_path), "org/tmca", "model", ["checkpoints/**"])


def test_config_json_carries_no_classification_labels_of_the_encoders(tmp_path):
    """An ImageNet backbone brings 1,000 labels a segmenter never uses: they are not saved, and reloading is exact."""
    labels = {index: f"class {index}" for index in range(1000)}
    torch.manual_seed(0)
    model = TmcaForImageSegmentation(
        tiny_config(backbone_config={**tiny_config().backbone_config.to_dict(), "id2label": labels})
    ).eval()
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    for name in ("backbone_config", "text_config"):
        assert "id2label" not in saved[name] and "label2id" not in saved[name], name
    assert saved["id2label"] == {"0": "LABEL_0"}, "the segmenter's own label stays"
    reloaded = AutoModel.from_pretrained(tmp_path)
    for key, value in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key


def test_save_release_stores_16_bit_weights_asks_for_float32_and_replaces_stale_code(tmp_path):
    from safetensors import safe_open

    from tmca_hf.hub import save_release

    model, processor = save_tiny(tmp_path)
    (tmp_path / "reports_tmca.py").write_text("# a module an older package shipped")
    (tmp_path / "eval_results.json").write_text("{}")
    save_release(model, processor, tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as weights:
        dtypes = {str(weights.get_slice(key).get_dtype()) for key in weights.keys()}
    assert dtypes <= {"F16", "I64"} and "F16" in dtypes
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "float32"
    assert not (tmp_path / "reports_tmca.py").exists() and (tmp_path / "eval_results.json").exists()
    assert {path.name for path in tmp_path.glob("*.py")} == REMOTE_CODE_FILES
    reloaded = AutoModel.from_pretrained(tmp_path)
    assert reloaded.dtype == torch.float32 and model.dtype == torch.float32
    for key, value in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value.half().to(value.dtype) if value.is_floating_point() else value)


PIPELINE_AS_HUB_USER = """
import json, sys
import numpy as np, torch
from PIL import Image
from transformers import AutoModel, AutoProcessor, pipeline

folder, image_path, report = sys.argv[1], sys.argv[2], sys.argv[3]
segmenter = pipeline("image-segmentation", model=folder, trust_remote_code=True)
image = Image.open(image_path).resize((150, 110))
with_report, without_report = segmenter(image, text=report), segmenter(image)
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
with torch.inference_mode():
    logits = model(**processor(images=image, text=report)).logits
expected = processor.post_process_semantic_segmentation(logits, target_sizes=[(110, 150)])[0].numpy() * 255
print(json.dumps({
    "pipeline": type(segmenter).__name__,
    "keys": sorted(with_report[0]), "label": with_report[0]["label"], "count": len(with_report),
    "mask": [with_report[0]["mask"].mode, *with_report[0]["mask"].size], "without": len(without_report),
    "same_as_model": bool(np.array_equal(np.asarray(with_report[0]["mask"]), expected.astype(np.uint8))),
    "imported_tmca_hf": any(name.startswith("tmca_hf") for name in sys.modules),
}))
"""


def test_pipeline_image_segmentation_runs_from_the_folder_alone(tmp_path):
    """Issue 15 item 7: the model card's pipeline_tag works as transformers supports remote code."""
    save_tiny(tmp_path / "model", text_dropout=0.2)
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["auto_map"]["AutoModelForImageSegmentation"] == "modeling_tmca.TmcaForImageSegmentation"
    assert config["custom_pipelines"]["image-segmentation"]["impl"] == "pipeline_tmca.TmcaImageSegmentationPipeline"
    image = Path(__file__).resolve().parents[1] / "samples" / "qata_cov19" / "images" / "covid_0060.png"
    completed = run_as_hub_user(PIPELINE_AS_HUB_USER, tmp_path / "model", image, "lower left lung.", tmp_path=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result == {
        "pipeline": "TmcaImageSegmentationPipeline", "keys": ["label", "mask", "score"], "label": "lesion",
        "count": 1, "mask": ["L", 150, 110], "without": 1, "same_as_model": True, "imported_tmca_hf": False,
    }
