"""Gradio Space for TMCA: an image plus the clinician's report in, the lesion mask out.

The app loads the model with `AutoModel` / `AutoProcessor` and `trust_remote_code=True`, from a Hub id or a local
`save_pretrained` folder: `--model`, else the `TMCA_MODEL` environment variable, else `outputs/tmca-qata-sample` in the
repository (where the README's training command writes its model). It does not need the `tmca_hf` package: image
decoding, report checks and prediction come from `tmca_inference.py`, a symlink to `tmca_hf/inference.py`.

    python space/app.py [--model PATH_OR_HUB_ID] [--host 127.0.0.1] [--port 7860] [--share]
"""

import argparse
import json
import logging
import os
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


# Offline and quiet before gradio / transformers are imported (they read these at import time).
for _name, _value in {
    "GRADIO_ANALYTICS_ENABLED": "False",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_name, _value)

APP_DIR = Path(__file__).resolve().parent
REPO_ROOT = APP_DIR.parent
DEFAULT_MODEL = REPO_ROOT / "outputs" / "tmca-qata-sample"
sys.path.insert(0, str(APP_DIR))

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from tmca_inference import (  # noqa: E402
    ImageReadError,
    ReportError,
    check_model_location,
    check_report,
    check_threshold,
    load_model,
    mask_to_image,
    predict,
    read_image,
    to_display_rgb,
)


logger = logging.getLogger("tmca.space")

MAX_FILE_SIZE = "100mb"  # upload limit; the pixel limit (tmca_inference.MAX_IMAGE_PIXELS) applies after upload
CONCURRENCY_LIMIT = 2  # requests decoded and rendered at once; the model itself runs one batch at a time
QUEUE_SIZE = 64
DISPLAY_SIDE = 1024  # overlay and heatmaps are drawn at most this large; the mask file keeps the original size
MASK_FILE_MAX_AGE_S = 3600
LESION_COLOR = "#ff2d55"
# Perceptually ordered colours (inferno-like) for the alignment heatmaps: dark = the report does not point here.
HEATMAP_ANCHORS = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float32)


# ------------------------------------------------------------------------------------------------------ model


@dataclass
class _LoadedModel:
    name: str
    model: object
    processor: object
    lock: threading.Lock  # the tokenizer and the CPU cores are shared: one batch at a time

    @property
    def supports_text_free_inference(self) -> bool:
        return bool(getattr(self.model.config, "supports_text_free_inference", False))


_loaded: Optional[_LoadedModel] = None
_load_problem: Optional[str] = None


def resolve_model(name: Optional[str] = None) -> str:
    """`--model`, else `TMCA_MODEL`, else the repository's `outputs/tmca-qata-sample`."""
    return str(name or os.environ.get("TMCA_MODEL") or DEFAULT_MODEL)


HOW_TO_GET_A_MODEL = (
    "Train one with the README's main job, `accelerate launch train.py` in the repository root (it writes "
    "`outputs/tmca-qata-sample`), or point the app to a model folder or Hub id: "
    "`TMCA_MODEL=PATH_OR_HUB_ID python space/app.py` or `python space/app.py --model PATH_OR_HUB_ID`."
)


def load(name: Optional[str] = None) -> Optional[str]:
    """Load the model once (again only when `name` changes). Returns None, or what is wrong, in words."""
    global _loaded, _load_problem
    name = resolve_model(name)
    if _loaded is not None and _loaded.name == name:
        return None
    _loaded, _load_problem = None, None
    try:
        check_model_location(name)
    except FileNotFoundError as error:
        _load_problem = f"{error} {HOW_TO_GET_A_MODEL}"
        return _load_problem
    try:
        model, processor = load_model(name)
        # One throw-away prediction: the first forward pass is several times slower than the next ones.
        predict(model, processor, [np.zeros((64, 64), np.uint8)], ["warm-up"], 0.5)
        _loaded = _LoadedModel(name, model, processor, threading.Lock())
    except Exception as error:  # a Hub id that does not exist, no network, a folder that is not TMCA, ...
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        where = "is a local folder but" if Path(name).expanduser().is_dir() else "is no local folder, and as a Hub id it"
        _load_problem = f"{name} {where} could not be loaded ({reason}). {HOW_TO_GET_A_MODEL}"
    return _load_problem


def _require_model() -> _LoadedModel:
    if _loaded is None:
        raise gr.Error(_load_problem or f"No model loaded. {HOW_TO_GET_A_MODEL}", print_exception=False)
    return _loaded


# ---------------------------------------------------------------------------------------------------- drawing


def _display_size(height: int, width: int) -> tuple:
    scale = min(1.0, DISPLAY_SIDE / max(height, width))
    return max(1, round(width * scale)), max(1, round(height * scale))  # PIL order: (width, height)


def _heatmap(alignment_map: np.ndarray, background: np.ndarray) -> np.ndarray:
    """An alignment map in [0, 1] coloured and laid over the (display-size) image."""
    height, width = background.shape[:2]
    values = np.asarray(Image.fromarray(alignment_map.astype(np.float32)).resize((width, height), Image.BILINEAR))
    positions = np.clip(values, 0.0, 1.0) * (len(HEATMAP_ANCHORS) - 1)
    grid = np.arange(len(HEATMAP_ANCHORS))
    colours = np.stack([np.interp(positions, grid, HEATMAP_ANCHORS[:, c]) for c in range(3)], axis=-1)
    return (0.45 * background + 0.55 * colours).round().astype(np.uint8)


def _prune_old_masks(folder: Path) -> None:
    cutoff = time.time() - MASK_FILE_MAX_AGE_S
    for path in folder.glob("*/*.png"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                path.parent.rmdir()
        except OSError:
            pass


def _save_mask(mask: np.ndarray, stem: str) -> str:
    folder = Path(os.environ.get("GRADIO_TEMP_DIR") or tempfile.gettempdir()) / "tmca-masks"
    _prune_old_masks(folder)
    path = folder / uuid.uuid4().hex / f"{stem}_mask.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    mask_to_image(mask).save(path)
    return str(path)


# ---------------------------------------------------------------------------------------------------- segment


def segment(image_path, report, threshold=0.5):
    """
    Segment one image guided by its report.

    Args:
        image_path: path to the uploaded file (PNG, JPEG, 16-bit PNG, TIFF, DICOM, ...), as `gr.File` passes it.
        report: the clinician's report; empty for text-free inference when the model supports it.
        threshold: probability above which a pixel is lesion.

    Returns:
        `(overlay, mask_file, alignment_gallery, lesion_pixels, lesion_percent, latency_ms, notes)`: the
        `gr.AnnotatedImage` value (image, [(mask, "lesion")]), the path of the binary mask PNG (original size, 0/255),
        a list of (heatmap, caption), the lesion area in pixels and in % of the image, the prediction latency measured
        around preprocessing + model + post-processing, and Markdown notes.

    Raises:
        gr.Error: with a message for the user, for every input the app refuses (and when no model is loaded).
    """
    loaded = _require_model()
    if not image_path:
        raise gr.Error("Upload an image first (PNG, JPEG, 16-bit PNG, TIFF or DICOM).", print_exception=False)
    name = Path(image_path).name
    try:
        return _segment(loaded, image_path, name, report, threshold)
    except (ImageReadError, ReportError, ValueError, TypeError) as error:
        raise gr.Error(str(error), print_exception=False) from None
    except (MemoryError, torch.OutOfMemoryError):
        raise gr.Error(f"{name} is too large for this machine's memory; downscale it.", print_exception=False) from None
    except Exception as error:  # a bug: the user gets one line, the server log the traceback
        logger.exception("segment failed on %s", name)
        raise gr.Error(f"Segmentation failed on {name} ({type(error).__name__}: {error}).", print_exception=False) from None


def _segment(loaded: _LoadedModel, image_path, name: str, report, threshold):
    threshold = check_threshold(threshold)
    image = read_image(image_path, name=name)
    with loaded.lock:
        checked = check_report(report, loaded.processor, loaded.supports_text_free_inference)
        started = time.perf_counter()
        prediction = predict(loaded.model, loaded.processor, [image.pixels], [checked.text], threshold)[0]
        latency_ms = (time.perf_counter() - started) * 1000.0
    notes = image.notes + checked.notes
    for note in notes:
        gr.Warning(note)

    height, width = image.size
    display = np.asarray(Image.fromarray(to_display_rgb(image.pixels)).resize(_display_size(height, width), Image.BILINEAR))
    display_mask = Image.fromarray(prediction.mask).resize(display.shape[1::-1], Image.NEAREST)
    overlay = (display, [(np.asarray(display_mask, dtype=np.float32), "lesion")])
    gallery = [
        (_heatmap(level_map, display), f"stride {stride} ({level_map.shape[1]}x{level_map.shape[0]} map)")
        for stride, level_map in prediction.alignment_maps.items()
    ]
    percent = 100.0 * prediction.area_fraction
    summary = (
        f"**{name}**: {width}x{height} pixels, threshold {threshold:g}. Lesion: {prediction.lesion_pixels:,} pixels "
        f"({percent:.2f} % of the image). Prediction took {latency_ms:.0f} ms on {loaded.model.device.type.upper()}."
    )
    markdown = "\n".join([summary] + [f"- {note}" for note in notes])
    mask_file = _save_mask(prediction.mask, Path(name).stem)
    return overlay, mask_file, gallery, prediction.lesion_pixels, round(percent, 3), round(latency_ms, 1), markdown


# --------------------------------------------------------------------------------------------------- examples


def _first_report(prompts) -> Optional[str]:
    """medvlsm prompts: p6 (the richest single sentence), else the longest string prompt."""
    if isinstance(prompts.get("p6"), str) and prompts["p6"].strip():
        return prompts["p6"]
    texts = [value for value in prompts.values() if isinstance(value, str) and value.strip()]
    return max(texts, key=len) if texts else None


def _flat_examples(folder: Path, count: int) -> list:
    """Flat layout: images/<id>.*, reports/<id>.txt, split.json ({split: [ids]}); validation ids first."""
    splits = json.loads((folder / "split.json").read_text())
    order = sorted(splits, key=lambda split: split.lower() not in ("val", "validation", "test"))
    examples = []
    for split in order:
        for example_id in splits[split]:
            images = sorted((folder / "images").glob(f"{example_id}.*"))
            report = folder / "reports" / f"{example_id}.txt"
            if images and report.is_file():
                examples.append((images[0], report.read_text().strip()))
            if len(examples) == count:
                return examples
    return examples


def _medvlsm_examples(folder: Path, count: int) -> list:
    """medvlsm layout: images/, anns/<split>.json (records with img_name and prompts p0..p9)."""
    files = sorted((folder / "anns").glob("*.json"), key=lambda path: path.stem.lower() not in ("val", "validation", "test"))
    examples = []
    for file in files:
        for record in json.loads(file.read_text()):
            image = folder / "images" / record["img_name"]
            report = _first_report(record.get("prompts", {}))
            if image.is_file() and report:
                examples.append((image, report))
            if len(examples) == count:
                return examples
    return examples


def find_examples(samples_dir=None, per_dataset: int = 2) -> list:
    """
    `[image_path, report, 0.5]` rows for `gr.Examples`, `per_dataset` from each dataset folder in `samples_dir`
    (default: the repository's `samples/`, or `samples/` beside app.py on a Space) that has the flat (QaTa-COV19) or
    medvlsm (Kvasir-SEG) layout. No samples folder: no examples.
    """
    candidates = [Path(samples_dir)] if samples_dir else [REPO_ROOT / "samples", APP_DIR / "samples"]
    folder = next((candidate for candidate in candidates if candidate.is_dir()), None)
    if folder is None:
        return []
    rows = []
    for dataset in sorted(path for path in folder.iterdir() if path.is_dir()):
        try:
            if (dataset / "split.json").is_file() and (dataset / "reports").is_dir():
                found = _flat_examples(dataset, per_dataset)
            elif (dataset / "anns").is_dir():
                found = _medvlsm_examples(dataset, per_dataset)
            else:
                continue
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            logger.warning("no examples from %s: %s", dataset, error)
            continue
        rows.extend([str(image), report, 0.5] for image, report in found)
    return rows


# ------------------------------------------------------------------------------------------------------- app


DESCRIPTION = """\
# TMCA: report-guided lesion segmentation
Upload a medical image (chest X-ray, endoscopy frame, CT/MR slice; PNG, JPEG, 16-bit PNG, TIFF or DICOM) and paste
the clinician's report. TMCA ([Li et al., 2024](https://arxiv.org/abs/2412.13533)) segments the lesion the report
describes. The heatmaps show, per decoder level, where the report points (pixel-report similarity).
**Research demo, not a medical device.**
"""


def build_demo(model_path: Optional[str] = None, samples_dir=None) -> gr.Blocks:
    """The Gradio app; loads the model (once) and shows what to do when it is missing."""
    problem = load(model_path)
    text_free = _loaded is not None and _loaded.supports_text_free_inference
    with gr.Blocks(title="TMCA lesion segmentation", delete_cache=(900, MASK_FILE_MAX_AGE_S)) as demo:
        gr.Markdown(DESCRIPTION)
        if problem:
            gr.Markdown(f"> **No model loaded.** {problem}", elem_id="model-problem")
        with gr.Row():
            with gr.Column():
                image = gr.File(label="Image (PNG, JPEG, 16-bit PNG, TIFF or DICOM .dcm)", type="filepath", elem_id="image")
                report = gr.Textbox(
                    label="Report",
                    lines=3,
                    placeholder="e.g. bilateral pulmonary infection, two infected areas, middle lower left lung"
                    + (" (leave empty for a text-free prediction)" if text_free else ""),
                    elem_id="report",
                )
                threshold = gr.Slider(0.05, 0.95, value=0.5, step=0.05, label="Threshold (lesion probability)")
                button = gr.Button("Segment", variant="primary", elem_id="segment")
            with gr.Column():
                overlay = gr.AnnotatedImage(
                    label="Predicted lesion", color_map={"lesion": LESION_COLOR}, format="png", elem_id="overlay"
                )
                with gr.Row():
                    lesion_pixels = gr.Number(label="Lesion area (pixels)", precision=0)
                    lesion_percent = gr.Number(label="Lesion area (% of image)")
                    latency = gr.Number(label="Prediction latency (ms)")
                mask_file = gr.File(label="Binary mask (PNG at the original size, 0 / 255)", elem_id="mask-file")
                notes = gr.Markdown(elem_id="notes")
        maps = gr.Gallery(
            label="Where the report points: pixel-report similarity per decoder level", columns=3,
            object_fit="contain", format="png", elem_id="alignment-maps",
        )
        examples = find_examples(samples_dir)
        if examples:
            gr.Examples(examples, inputs=[image, report, threshold], label="Examples (QaTa-COV19, Kvasir-SEG)")
        outputs = [overlay, mask_file, maps, lesion_pixels, lesion_percent, latency, notes]
        gr.on([button.click, report.submit], segment, inputs=[image, report, threshold], outputs=outputs, api_name="segment")
    demo.queue(default_concurrency_limit=CONCURRENCY_LIMIT, max_size=QUEUE_SIZE)
    return demo


def launch_kwargs() -> dict:
    """Arguments of `demo.launch` shared by `main` and the tests."""
    return dict(max_file_size=MAX_FILE_SIZE, ssr_mode=False, mcp_server=False)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="TMCA Gradio app: report-guided lesion segmentation.")
    parser.add_argument("--model", help=f"model folder or Hub id (default: $TMCA_MODEL, else {DEFAULT_MODEL})")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--share", action="store_true", help="make a public gradio.live link (off by default)")
    parser.add_argument("--samples", help="folder with example datasets (default: the repository's samples/)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    demo = build_demo(args.model, args.samples)
    if _load_problem:
        logger.warning("%s\nThe app starts anyway and shows this message.", _load_problem)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, **launch_kwargs())
    return 0


if __name__ == "__main__":
    sys.exit(main())
