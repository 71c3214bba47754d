"""Gradio Space for TMCA: a medical image plus the clinician's report in, the lesion mask out.

    python space/app.py [--model PATH_OR_HUB_ID] [--samples FOLDER] [--host 127.0.0.1] [--port 7860] [--share]

The model loads once, with `AutoModel` / `AutoProcessor` and `trust_remote_code=True`, from `--model`, else the
`TMCA_MODEL` environment variable, else the release model `models/tmca-qata-cov19` when it exists, else
`outputs/tmca-qata-sample` (where the README's main job writes). The app runs on the installed `tmca-hf` package
(`space/requirements.txt`): `tmca_hf.modeling.imaging_tmca` (the module every model folder ships) reads the images,
`tmca_hf.inference` checks reports and predicts, `tmca_hf.data` reads the example datasets.
"""

import argparse
import atexit
import functools
import json
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Optional, Union


# Offline and quiet before gradio / transformers are imported (they read these at import time).
for _name, _value in {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1",
                      "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
                      "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_name, _value)

import datasets  # noqa: E402
import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from gradio.utils import get_upload_folder  # noqa: E402
from huggingface_hub import ModelCard, hf_hub_download  # noqa: E402
from PIL import Image, ImageChops, ImageFilter  # noqa: E402

from tmca_hf.data import load_tmca_dataset  # noqa: E402
from tmca_hf.inference import ReportError, check_report, check_threshold, load_model, mask_to_image, predict  # noqa: E402
from tmca_hf.metrics import SegmentationMetrics  # noqa: E402
from tmca_hf.modeling.imaging_tmca import ImageReadError, binary_mask, read_image, threshold_mask, to_display_rgb  # noqa: E402


logger = logging.getLogger("tmca.space")

APP_DIR = Path(__file__).resolve().parent
REPO_ROOT = APP_DIR.parent
DEFAULT_MODELS = (REPO_ROOT / "models" / "tmca-qata-cov19", REPO_ROOT / "outputs" / "tmca-qata-sample")
QUEUE_SIZE = 64  # requests waiting beyond this are told the queue is full
DISPLAY_SIDE = 1024  # the overlay and heatmaps are drawn at most this large; the mask file keeps the original size
THUMBNAIL_SIDE = 256
CONSISTENCY_WARNING = 0.5  # below this the Space warns that the report may not match the image
PREDICTION_COLOUR, TRUTH_COLOUR = (255, 45, 85), (40, 220, 90)
# Perceptually ordered colours (inferno-like) for the alignment heatmaps: dark = the report does not point here.
HEATMAP_ANCHORS = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], np.float32)
CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # NUL and friends; tab and newlines are kept
HOW_TO_GET_A_MODEL = (
    "Train one with the README's main job (`accelerate launch train.py`, it writes `outputs/tmca-qata-sample`), or "
    "point the app to a model folder or Hub id: `python space/app.py --model PATH_OR_HUB_ID` (or `TMCA_MODEL=...`)."
)


# ------------------------------------------------------------------------------------------------------ model


@dataclass(frozen=True)
class LoadedModel:
    """The model, its processor, and what its folder says about it (model card, eval_results.json)."""

    name: str
    model: object
    processor: object
    trained_on: tuple  # dataset names, e.g. ("QaTa-COV19", "qata_cov19")
    validation_dice: Optional[str]  # e.g. "74.59 % (per image, 1,429 validation images)"

    @property
    def text_free(self) -> bool:
        return bool(getattr(self.model.config, "supports_text_free_inference", False))


MODEL: Union[LoadedModel, str, None] = None  # the loaded model, or why there is none; set once by `load`


def default_model() -> str:
    return os.environ.get("TMCA_MODEL") or str(next((p for p in DEFAULT_MODELS if p.is_dir()), DEFAULT_MODELS[-1]))


def _model_file(name: str, filename: str) -> Optional[Path]:
    """A file of the model folder or Hub repository, None when it has none (or the Hub cannot be reached)."""
    if Path(name).expanduser().is_dir():
        path = Path(name).expanduser() / filename
        return path if path.is_file() else None
    try:
        return Path(hf_hub_download(name, filename))
    except Exception:  # no such file, no network, not a Hub id: the fact is simply unknown
        return None


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())  # "QaTa-COV19", "qata_cov19" -> "qatacov19"


def model_facts(name: str) -> tuple:
    """(training dataset names, validation Dice in words or None) from the model card, eval_results.json and
    training_args.json, the files `train.py` writes beside the weights."""
    trained_on, dice = [], None
    if (readme := _model_file(name, "README.md")) is not None:
        card = ModelCard.load(readme).data
        trained_on += [card.datasets] if isinstance(card.datasets, str) else list(card.datasets or [])
        for result in card.eval_results or []:
            trained_on.append(result.dataset_name)
            if result.metric_type == "dice_per_image" and dice is None:
                dice = f"{result.metric_value:.2f} % (per image, {result.dataset_split} split)"
    if (path := _model_file(name, "training_args.json")) is not None:
        trained_on.append(Path(str(json.loads(path.read_text()).get("dataset", ""))).name)
    if (path := _model_file(name, "eval_results.json")) is not None:
        for result in json.loads(path.read_text()).get("evaluation", []):
            if result.get("text_mode") == "report" and result.get("dice_per_image") is not None:
                dice = f"{100 * result['dice_per_image']:.2f} % (per image, {result['num_images']:,} validation images)"
    names = {}
    for dataset in filter(None, trained_on):
        names.setdefault(_key(dataset), dataset)  # one spelling per dataset: "QaTa-COV19" and "qata_cov19" are one
    return tuple(names.values()), dice


def load(name: Optional[str] = None) -> Optional[str]:
    """Load the model (once per name) into `MODEL`. Returns None, or what is wrong, in words."""
    global MODEL
    name = name or default_model()
    if isinstance(MODEL, LoadedModel) and MODEL.name == name:
        return None
    try:
        model, processor = load_model(name)
        predict(model, processor, [np.zeros((64, 64), np.uint8)], ["warm-up"], 0.5)  # the first pass is slow
    except Exception as error:  # a missing folder, a Hub id that does not exist, no network, not a TMCA model
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        MODEL = f"{name} could not be loaded: {reason} {HOW_TO_GET_A_MODEL}"
        return MODEL
    try:
        facts = model_facts(name)
    except (OSError, ValueError, TypeError, AttributeError) as error:  # a card or JSON file that does not parse
        logger.warning("%s: cannot read what the model folder says about the model (%s)", name, error)
        facts = ((), None)
    MODEL = LoadedModel(name, model, processor, *facts)
    return None


def _model() -> LoadedModel:
    if not isinstance(MODEL, LoadedModel):
        raise gr.Error(MODEL or f"No model loaded. {HOW_TO_GET_A_MODEL}", print_exception=False)
    return MODEL


def describe(loaded: Union[LoadedModel, str, None]) -> str:
    if not isinstance(loaded, LoadedModel):
        return f"> **No model loaded.** {loaded or HOW_TO_GET_A_MODEL}"
    return (f"**Model:** `{Path(loaded.name).name}` · **trained on:** {', '.join(loaded.trained_on) or 'not stated'}"
            f" · **validation Dice:** {loaded.validation_dice or 'not stated in the model folder'}")


# ---------------------------------------------------------------------------------------------------- drawing


def _display(pixels: np.ndarray, side: int = DISPLAY_SIDE) -> Image.Image:
    height, width = pixels.shape[:2]
    scale = min(1.0, side / max(height, width))
    return Image.fromarray(to_display_rgb(pixels)).resize((max(1, round(width * scale)), max(1, round(height * scale))))


def _draw(picture: Image.Image, prediction, truth, style: str = "contour", opacity: float = 1.0) -> Image.Image:
    """The ground truth's contour (green) and the prediction (red, a contour or filled) over a picture, at `opacity`."""
    for mask, colour, filled in ((truth, TRUTH_COLOUR, False), (prediction, PREDICTION_COLOUR, style == "filled")):
        if mask is None:
            continue
        region = Image.fromarray(mask.astype(np.uint8) * np.uint8(255)).resize(picture.size, Image.NEAREST)
        if not filled:
            region = ImageChops.subtract(region.filter(ImageFilter.MaxFilter(5)), region.filter(ImageFilter.MinFilter(3)))
        alpha = region.point(lambda value: round(value * float(opacity)))
        picture = Image.composite(Image.new("RGB", picture.size, colour), picture, alpha)
    return picture


def _heatmap(alignment_map: np.ndarray, background: Image.Image) -> Image.Image:
    """An alignment map in [0, 1] coloured and laid over the (display-size) image."""
    values = np.asarray(Image.fromarray(alignment_map.astype(np.float32)).resize(background.size, Image.BILINEAR))
    positions = np.clip(values, 0.0, 1.0) * (len(HEATMAP_ANCHORS) - 1)
    grid = np.arange(len(HEATMAP_ANCHORS))
    colours = np.stack([np.interp(positions, grid, HEATMAP_ANCHORS[:, c]) for c in range(3)], axis=-1)
    return Image.fromarray((0.45 * np.asarray(background) + 0.55 * colours).round().astype(np.uint8))


def _request_folder() -> Path:
    """A new folder inside gradio's cache for one request's files: served as they are (gradio copies nothing), never
    rewritten by another request, and deleted by `delete_cache` like gradio's own files."""
    folder = Path(get_upload_folder()) / f"tmca-{uuid.uuid4().hex}"
    folder.mkdir(parents=True)
    return folder


def _saved(image: Image.Image, path: Path) -> str:
    image.save(path)
    return str(path)


# ---------------------------------------------------------------------------------------------------- actions


def _user_errors(function):
    """Every refusal reaches the user as one line (`gr.Error`); a bug also leaves its traceback in the server log."""

    @functools.wraps(function)
    def wrapper(image_path, *args):
        if not image_path:
            raise gr.Error("Upload an image first (PNG, JPEG, 16-bit PNG, TIFF or DICOM).", print_exception=False)
        name = Path(image_path).name
        try:
            return function(image_path, *args)
        except gr.Error:
            raise
        except (ImageReadError, ReportError, ValueError, TypeError) as error:
            raise gr.Error(str(error), print_exception=False) from None
        except MemoryError:
            raise gr.Error(f"{name} is too large for this machine's memory; downscale it.", print_exception=False) from None
        except Exception as error:
            logger.exception("failed on %s", name)
            raise gr.Error(f"Failed on {name} ({type(error).__name__}: {error}).", print_exception=False) from None

    return wrapper


def _truth(ground_truth, shape: tuple, notes: list) -> Optional[np.ndarray]:
    """The ground-truth mask (mask files as datasets bring them, `threshold_mask`), None when absent or mis-sized."""
    if ground_truth is None:
        return None
    truth = threshold_mask(ground_truth, "the ground-truth mask").numpy()
    if truth.shape != shape:
        notes.append(f"The ground-truth mask is {truth.shape[1]}x{truth.shape[0]} pixels but the image is "
                     f"{shape[1]}x{shape[0]}: no Dice.")
        return None
    return truth


@_user_errors
def segment(image_path, report, threshold=0.5, ground_truth=None, style="contour", opacity=0.5, laterality="patient"):
    """
    Segment one image guided by its report.

    Args:
        image_path: the uploaded file (PNG, JPEG, 16-bit PNG, TIFF, DICOM, ...), as `gr.File` passes it.
        report: the clinician's report; empty for text-free inference when the model supports it.
        threshold: probability above which a pixel is lesion.
        ground_truth: optional ground-truth mask (PIL image) of the same size: the Dice of the prediction is given.
        style, opacity: how the overlay draws the lesion: "contour" or "filled", opacity in [0, 1].
        laterality: whose left and right the report names: "patient" (as clinicians write; the default) or "image".

    Returns:
        `(overlay, mask_file, alignment_maps, dice, lesion_pixels, lesion_percent, latency_ms, consistency, notes)`:
        paths of the overlay PNG and of the binary mask PNG (original size, 0/255), a list of (heatmap path,
        caption), the numbers as text ("" for a Dice without ground truth or a consistency without a report), and
        Markdown notes. Every file is new, in a folder of its own.
    """
    loaded = _model()
    name = Path(image_path).name
    threshold = check_threshold(threshold)
    image = read_image(image_path, name=name)
    cleaned = CONTROL_CHARACTERS.sub("", "" if report is None else str(report))
    removed = len(str(report or "")) - len(cleaned)
    notes = list(image.notes) + ([f"Removed {removed} control character(s) (NUL, ...) from the report."] if removed else [])
    checked = check_report(cleaned, loaded.processor, loaded.text_free)
    started = time.perf_counter()
    prediction = predict(loaded.model, loaded.processor, [image.pixels], [checked.text], threshold, laterality)[0]
    latency_ms = (time.perf_counter() - started) * 1000.0
    notes += checked.notes
    consistency = "" if prediction.consistency is None else f"{prediction.consistency:.2f}"
    if prediction.consistency is not None and prediction.consistency < CONSISTENCY_WARNING:
        notes.append(f"The report may not match the image (consistency {consistency}, below "
                     f"{CONSISTENCY_WARNING}): check the report, and its side convention.")
    truth = _truth(ground_truth, prediction.mask.shape, notes)
    dice = ""
    if truth is not None:
        metrics = SegmentationMetrics(with_hd95=False)
        metrics.update(torch.from_numpy(prediction.mask)[None], torch.from_numpy(truth)[None])
        dice = f"{metrics.compute()['dice_per_image']:.4f}"
    for note in notes:
        gr.Warning(note)

    folder, picture = _request_folder(), _display(image.pixels)
    overlay = _saved(_draw(picture, prediction.mask, truth, style, opacity), folder / "overlay.png")
    mask_file = _saved(mask_to_image(prediction.mask), folder / f"{Path(name).stem}_mask.png")
    maps = [(_saved(_heatmap(level_map, picture), folder / f"stride_{stride}.png"),
             f"stride {stride} ({level_map.shape[1]}x{level_map.shape[0]} map)")
            for stride, level_map in prediction.alignment_maps.items()]
    height, width = image.size
    percent = 100.0 * prediction.area_fraction
    summary = (f"**{name}**: {width}x{height} pixels, threshold {threshold:g}. Lesion: {prediction.lesion_pixels:,} "
               f"pixels ({percent:.2f} % of the image)" + (f", Dice {dice} against the ground truth" if dice else "")
               + f". Prediction took {latency_ms:.0f} ms on {loaded.model.device.type.upper()}."
               + (f" The report matches the image: {consistency}." if consistency else ""))
    notes_markdown = "\n".join([summary] + [f"- {note}" for note in notes])
    return (overlay, mask_file, maps, dice, str(prediction.lesion_pixels), f"{percent:.3f}", f"{latency_ms:.1f}",
            consistency, notes_markdown)


@_user_errors
def redraw(image_path, mask_file, ground_truth=None, style="contour", opacity=0.5):
    """The overlay again, in another style or opacity, from the image and the mask file (the model does not run)."""
    if not mask_file:
        return None
    prediction = binary_mask(mask_file, "the mask file").numpy()
    image = read_image(image_path, name=Path(image_path).name)
    truth = _truth(ground_truth, prediction.shape, [])
    return _saved(_draw(_display(image.pixels), prediction, truth, style, opacity), _request_folder() / "overlay.png")


# --------------------------------------------------------------------------------------------------- examples


class Example(NamedTuple):
    image: str  # the image file as the dataset holds it
    report: str
    mask: str  # its ground-truth mask, 0/255 PNG
    thumbnail: str  # the image with the ground truth's contour
    caption: str


def example_inputs(example: Example, model_laterality: str) -> list:
    """What picking an example puts in the form: image, report, ground truth, and the side convention set to the
    model's own, since the examples' reports come from its training data (for QaTa-COV19, the image's sides)."""
    return [example.image, example.report, example.mask, model_laterality]


def laterality_note(laterality: str, model_laterality: str) -> str:
    """One line under the control: what it does to a typed report's "left lung"."""
    if laterality == model_laterality:
        return f'"left lung" is read as the {laterality}\'s left, as the model was trained: the report is given unchanged.'
    other = "patient" if laterality == "image" else "image"
    return (f'"left lung" is read as the {laterality}\'s left, which is the {other}\'s right: left and right are swapped '
            f"before the model, which was trained on the {model_laterality}'s sides, reads the report.")


def find_examples(trained_on, samples_dir=None, per_dataset: int = 4) -> list:
    """
    Validation examples, read by `load_tmca_dataset`, of the datasets in `samples_dir` (default: `samples/` in the
    repository, or beside app.py on a Space) that the model was trained on (folder names matched to `trained_on`
    ignoring case and punctuation). Their files are written to a new temporary folder, removed at exit.
    """
    folders = [Path(samples_dir)] if samples_dir else [REPO_ROOT / "samples", APP_DIR / "samples"]
    folder = next((folder for folder in folders if folder.is_dir()), None)
    wanted = {_key(name) for name in trained_on}
    datasets_found = sorted(p for p in folder.iterdir() if p.is_dir() and _key(p.name) in wanted) if folder else []
    out, examples = Path(tempfile.mkdtemp(prefix="tmca-examples-")), []  # outside gradio's cache: never expired
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    for dataset in datasets_found:
        try:
            split = load_tmca_dataset(dataset, splits=["validation"])["validation"]
        except (OSError, ValueError) as error:
            logger.warning("no examples from %s: %s", dataset, error)
            continue
        split = split.select(range(min(per_dataset, len(split)))).cast_column("image", datasets.Image(decode=False))
        (out / dataset.name).mkdir()
        for row in split:
            image = out / dataset.name / Path(row["image"]["path"]).name
            image.write_bytes(row["image"]["bytes"])
            truth = binary_mask(row["mask"], "mask").numpy()
            thumbnail = _draw(_display(read_image(image).pixels, THUMBNAIL_SIDE), None, truth)
            examples.append(Example(
                str(image), row["text"], _saved(row["mask"], image.with_name(f"{row['id']}_truth.png")),
                _saved(thumbnail, image.with_name(f"{row['id']}_thumbnail.png")), f"{dataset.name} {row['id']}: {row['text']}"))
    return examples


# ------------------------------------------------------------------------------------------------------- app


DESCRIPTION = """\
# TMCA: report-guided lesion segmentation
Upload a medical image (PNG, JPEG, 16-bit PNG, TIFF or DICOM) and paste the clinician's report. TMCA
([Li et al., 2024](https://arxiv.org/abs/2412.13533)) segments the lesion the report describes; the heatmaps show,
per decoder level, where the report points. **Research demo, not a medical device.**
"""


def build_demo(model_path: Optional[str] = None, samples_dir=None) -> gr.Blocks:
    """The Gradio app for the model at `model_path` (loaded once), with examples of what it was trained on."""
    load(model_path)
    loaded = MODEL if isinstance(MODEL, LoadedModel) else None
    examples = find_examples(loaded.trained_on, samples_dir) if loaded else []
    with gr.Blocks(title="TMCA lesion segmentation", delete_cache=(900, 3600)) as demo:
        gr.Markdown(DESCRIPTION)
        gr.Markdown(describe(MODEL), elem_id="model-info")
        with gr.Row():
            with gr.Column():
                image = gr.File(label="Image (PNG, JPEG, 16-bit PNG, TIFF or DICOM .dcm)", type="filepath", elem_id="image")
                report = gr.Textbox(label="Report", lines=3, elem_id="report", placeholder=(
                    "e.g. bilateral pulmonary infection, two infected areas, middle lower left lung"
                    + (" (leave empty for a text-free prediction)" if loaded and loaded.text_free else "")))
                model_laterality = loaded.processor.report_laterality if loaded else "image"
                laterality = gr.Radio(
                    [("the patient's (as clinicians write)", "patient"), ("the image's", "image")], value="patient",
                    label=f"Left and right in the report are ... (the model was trained on reports naming "
                          f"{model_laterality} sides; picking an example sets this to match)", elem_id="laterality")
                laterality_line = gr.Markdown(laterality_note("patient", model_laterality), elem_id="laterality-note")
                threshold = gr.Slider(0.05, 0.95, value=0.5, step=0.05, label="Threshold (lesion probability)")
                truth = gr.Image(label="Ground-truth mask (optional, after the image): the Dice of the prediction",
                                 type="pil", image_mode=None, format="png", sources=["upload"], height=160, elem_id="truth")
                button = gr.Button("Segment", variant="primary", elem_id="segment")
            with gr.Column():
                overlay = gr.Image(label="Prediction (red) and ground truth (green)", type="filepath", format="png",
                                   interactive=False, elem_id="overlay")
                with gr.Row():
                    style = gr.Radio(["contour", "filled"], value="contour", label="Draw the lesion as", elem_id="style")
                    opacity = gr.Slider(0.0, 1.0, value=0.6, step=0.05, label="Opacity", elem_id="opacity")
                with gr.Row():
                    numbers = [gr.Textbox(label=label, interactive=False, elem_id=elem_id) for label, elem_id in (
                        ("Dice vs ground truth", "dice"), ("Lesion area (pixels)", "lesion-pixels"),
                        ("Lesion area (% of image)", "lesion-percent"), ("Prediction latency (ms)", "latency"),
                        ("Report matches the image (0-1)", "consistency"))]
                mask_file = gr.File(label="Binary mask (PNG at the original size, 0 / 255)", interactive=False,
                                    elem_id="mask-file")
                notes = gr.Markdown(elem_id="notes")
        if examples:
            gallery = gr.Gallery([(e.thumbnail, e.caption) for e in examples], label="Examples (validation images, "
                                 "ground truth in green): click one, then Segment", columns=4, height=320,
                                 allow_preview=False, elem_id="examples")
        else:
            gr.Markdown("No examples: they are offered only for the datasets the model folder says it was trained on "
                        "(its README.md, training_args.json or eval_results.json), found in `samples/`.")
        maps = gr.Gallery(label="Where the report points: pixel-report similarity per decoder level", columns=3,
                          object_fit="contain", format="png", elem_id="alignment-maps")
        outputs = [overlay, mask_file, maps, *numbers, notes]

        def clear():
            return [None] * len(outputs)

        def pick_example(event: gr.SelectData):
            example = examples[event.index]
            return [*example_inputs(example, model_laterality), laterality_note(model_laterality, model_laterality)] + clear()

        if examples:
            gallery.select(pick_example, None, [image, report, truth, laterality, laterality_line, *outputs],
                           api_visibility="private")
        laterality.change(lambda side: laterality_note(side, model_laterality), laterality, laterality_line,
                          queue=False, api_visibility="private")
        image.upload(lambda: [None] + clear(), None, [truth, *outputs], api_visibility="private")
        gr.on([button.click, report.submit], clear, None, outputs, queue=False, api_visibility="private").then(
            segment, [image, report, threshold, truth, style, opacity, laterality], outputs, api_name="segment",
            concurrency_limit=1)  # one prediction at a time: the model and its tokenizer are shared
        gr.on([style.change, opacity.release], redraw, [image, mask_file, truth, style, opacity], overlay,
              api_name="redraw")
    demo.queue(max_size=QUEUE_SIZE)
    return demo


def launch_kwargs() -> dict:
    """Arguments of `demo.launch` shared by `main` and the tests."""
    return dict(max_file_size="100mb", ssr_mode=False, mcp_server=False)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="TMCA Gradio app: report-guided lesion segmentation.")
    parser.add_argument("--model", help="model folder or Hub id (default: $TMCA_MODEL, else models/tmca-qata-cov19 "
                                        "when it exists, else outputs/tmca-qata-sample)")
    parser.add_argument("--samples", help="folder of example datasets (default: the repository's samples/)")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--share", action="store_true", help="make a public gradio.live link (off by default)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    demo = build_demo(args.model, args.samples)
    if not isinstance(MODEL, LoadedModel):
        logger.warning("%s\nThe app starts anyway and shows this message.", MODEL)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, **launch_kwargs())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
