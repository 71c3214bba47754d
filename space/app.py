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


try:
    import gradio as gr
except ImportError as missing:  # a plain `pip install -e .` brings no gradio: the one line that fixes it
    raise SystemExit(
        f"space/app.py needs gradio ({missing}). Install the Space's extra: pip install -e \".[space]\" from the "
        f"repository (on a Space: pip install -r space/requirements.txt)."
    ) from None
import numpy as np  # noqa: E402
import torch  # noqa: E402
from gradio.utils import get_upload_folder  # noqa: E402
from huggingface_hub import ModelCard, hf_hub_download  # noqa: E402
from PIL import Image, ImageChops, ImageFilter  # noqa: E402

from tmca_hf.data import load_tmca_dataset  # noqa: E402
from tmca_hf.describer import CHEST_XRAY_ZONES, SIDES, number_word, qata_report  # noqa: E402
from tmca_hf.fit_checks import (  # noqa: E402
    CONSISTENCY_AUROC_FILE,
    OOD_AUROC_FILE,
    image_fit_note,
    ood_aurocs,
    report_fit_note,
    report_may_not_fit,
)
from tmca_hf.inference import (  # noqa: E402
    ReportError,
    check_report,
    check_threshold,
    load_model,
    mask_to_image,
    predict,
)
from tmca_hf.metrics import SegmentationMetrics  # noqa: E402
from tmca_hf.model_card import RESULTS_END, RESULTS_START, results_table  # noqa: E402
from tmca_hf.modeling.imaging_tmca import ImageReadError, binary_mask, read_image, threshold_mask, to_display_rgb  # noqa: E402


logger = logging.getLogger("tmca.space")

APP_DIR = Path(__file__).resolve().parent
REPO_ROOT = APP_DIR.parent
DEFAULT_MODELS = (REPO_ROOT / "models" / "tmca-qata-cov19", REPO_ROOT / "outputs" / "tmca-qata-sample")
QUEUE_SIZE = 64  # requests waiting beyond this are told the queue is full
DISPLAY_SIDE = 1024  # the overlay and heatmaps are drawn at most this large; the mask file keeps the original size
RESULT_SIDE = 512  # ... and at least this large (a 224 x 224 X-ray is enlarged): larger than each heatmap on the page
THUMBNAIL_SIDE = 256
# Okabe-Ito blue and yellow: apart for protan, deutan and tritan readers, and clear of gray X-rays and of pink
# endoscopy (tests/test_space.py measures both on the samples; red and green were 15 Delta-E apart for deutans).
PREDICTION_COLOUR, TRUTH_COLOUR = (0, 114, 178), (240, 228, 66)
PREDICTION_NAME, TRUTH_NAME = "blue", "yellow"
# Perceptually ordered colours (inferno-like) for the alignment heatmaps: dark = the report does not point here.
HEATMAP_ANCHORS = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], np.float32)
CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # NUL and friends; tab and newlines are kept
# Datasets whose reports are QaTa-COV19's sentences (LViT's annotations): the chest X-ray models the picker writes for.
QATA_STYLE_DATASETS = ("qatacov19",)  # as `_key` spells them
TEXT_MODES = {"report": "with its report", "shuffled": "with another image's report (shuffled)",
              "empty": "with no report (empty)"}  # the rows of the model card's results table
HOW_TO_GET_A_MODEL = (
    "Train one with the README's main job (`accelerate launch train.py`, it writes `outputs/tmca-qata-sample`), or "
    "point the app to a model folder or Hub id: `python space/app.py --model PATH_OR_HUB_ID` (or `TMCA_MODEL=...`)."
)


# ------------------------------------------------------------------------------------------------------ model


class Result(NamedTuple):
    """One row of the model's validation results: the text it was given, and the Dice per image it scored."""

    text_mode: str  # "report", "shuffled" (another image's report) or "empty" (no report)
    dice_per_image: Optional[float]  # percent; None when the row was not available (e.g. "empty" without text dropout)
    num_images: Optional[int]
    dataset: str = ""  # for a model validated on several datasets


@dataclass(frozen=True)
class LoadedModel:
    """The model, its processor, and what its folder says about it (model card, eval_results.json, ...)."""

    name: str
    model: object
    processor: object
    trained_on: tuple  # dataset names, e.g. ("QaTa-COV19", "qata_cov19")
    validation: tuple = ()  # `Result`s, the model card's rows: its report, another image's ("shuffled"), none ("empty")
    consistency_auroc: Optional[dict] = None  # what benchmarks/consistency_auroc.py measured, when the folder keeps it
    ood_auroc: Optional[dict] = None  # what benchmarks/ood_auroc.py measured, when the folder keeps it

    @property
    def text_free(self) -> bool:
        return bool(getattr(self.model.config, "supports_text_free_inference", False))

    @property
    def chest_xray(self) -> bool:
        """Trained on QaTa-COV19-style reports: the report picker writes those."""
        return any(_key(name) in QATA_STYLE_DATASETS for name in self.trained_on)

    @property
    def image_kind(self) -> str:
        """What the training images were, in words."""
        return "chest X-rays" if self.chest_xray else "images"


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


def _cells(line: str) -> list:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _card_results(text: str) -> list:
    """The rows of the results table that `tmca_hf.model_card.results_table` writes into the card (train.py's, or
    tmca-evaluate's for a release): "| report | 1429 | 69.65 | ..." -> Result("report", 69.65, 1429)."""
    header, separator = results_table([]).splitlines()
    block = text.partition(RESULTS_START)[2].partition(RESULTS_END)[0].splitlines()
    if header not in block:
        return []
    column = _cells(header).index("Dice per-image")
    results = []
    for line in block[block.index(header) + 2:]:
        if not line.startswith("|"):
            break
        cells = _cells(line)
        mode, _, dataset = cells[0].partition(" (")  # "report (qata_cov19)" for a model of several datasets
        try:
            dice, images = float(cells[column]), int(cells[1])
        except (ValueError, IndexError):  # "| empty | - | not available: ... |"
            dice, images = None, None
        results.append(Result(mode, dice, images, dataset.rstrip(")")))
    return results


def _auroc(value) -> bool:
    return isinstance(value, (int, float)) and 0 <= value <= 1


def _check_consistency_record(record: dict):
    if not all(_auroc(record.get(key)) for key in ("auroc_a", "auroc_b")):
        raise ValueError("auroc_a and auroc_b must be numbers in [0, 1]")
    int(record["num_images"])


def _check_ood_record(record: dict):
    aurocs = ood_aurocs(record).values()
    if not aurocs or not all(map(_auroc, aurocs)):
        raise ValueError("each kind of other image needs an auroc in [0, 1]")
    float(record["in_distribution"]["flagged_share"])


def _kept_record(name: str, filename: str, check) -> Optional[dict]:
    """What a benchmark printed for this model, when its JSON line is kept in the model folder as `filename`
    (`benchmarks/consistency_auroc.py` and `benchmarks/ood_auroc.py` keep it when they write the model); None when
    the folder does not record it or the file is not what the benchmark prints (logged)."""
    if (path := _model_file(name, filename)) is None:
        return None
    try:
        record = json.loads(path.read_text())
        check(record)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
        logger.warning("%s: %s is not what benchmarks/%s.py prints (%s); the app does not show it",
                       name, filename, Path(filename).stem, error)
        return None
    return record


def model_facts(name: str) -> tuple:
    """(training dataset names, validation `Result`s, the consistency AUROC record or None) from the model card,
    eval_results.json, training_args.json (the files `train.py` writes beside the weights) and consistency_auroc.json."""
    trained_on, results, card_results = [], [], []
    if (readme := _model_file(name, "README.md")) is not None:
        card = ModelCard.load(readme)
        trained_on += [card.data.datasets] if isinstance(card.data.datasets, str) else list(card.data.datasets or [])
        card_results = _card_results(card.text)
        for result in card.data.eval_results or []:
            trained_on.append(result.dataset_name)
            if result.metric_type == "dice_per_image" and not card_results:  # a card without the results table
                card_results = [Result("report", float(result.metric_value), None)]
    if (path := _model_file(name, "training_args.json")) is not None:
        trained_on.append(Path(str(json.loads(path.read_text()).get("dataset", ""))).name)
    if (path := _model_file(name, "eval_results.json")) is not None:
        for row in json.loads(path.read_text()).get("evaluation", []):
            available = row.get("available", True) and row.get("dice_per_image") is not None
            results.append(Result(row["text_mode"], 100 * row["dice_per_image"] if available else None,
                                  row.get("num_images") if available else None, str(row.get("dataset", ""))))
    names = {}
    for dataset in filter(None, trained_on):
        names.setdefault(_key(dataset), dataset)  # one spelling per dataset: "QaTa-COV19" and "qata_cov19" are one
    return tuple(names.values()), tuple(results or card_results), _kept_record(
        name, CONSISTENCY_AUROC_FILE, _check_consistency_record)


def load(name: Optional[str] = None) -> Optional[str]:
    """Load the model (once per name) into `MODEL`, and say so in the server log. Returns None, or what is wrong."""
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
    except (OSError, ValueError, TypeError, AttributeError, KeyError) as error:  # a card or JSON file that does not parse
        logger.warning("%s: cannot read what the model folder says about the model (%s)", name, error)
        facts = ((), (), None)
    MODEL = LoadedModel(name, model, processor, *facts, ood_auroc=_kept_record(name, OOD_AUROC_FILE, _check_ood_record))
    where = Path(name).expanduser().resolve() if Path(name).expanduser().is_dir() else f"the Hub ({name})"
    logger.info("TMCA model %s loaded from %s on %s; trained on %s", Path(name).name, where,
                model.device.type.upper(), ", ".join(MODEL.trained_on) or "data its folder does not name")
    return None


def _model() -> LoadedModel:
    if not isinstance(MODEL, LoadedModel):
        raise gr.Error(MODEL or f"No model loaded. {HOW_TO_GET_A_MODEL}", print_exception=False)
    return MODEL


def _dice_line(results: tuple) -> str:
    """ "69.65 % with its report · 60.23 % with another image's report (shuffled) · ..." per dataset, with the number
    of images when the rows give it."""
    parts = []
    for dataset in dict.fromkeys(result.dataset for result in results):
        rows = [result for result in results if result.dataset == dataset]
        counts = {result.num_images for result in rows if result.num_images}
        words = " · ".join(
            (f"**{row.dice_per_image:.2f} %**" if row.text_mode == "report" else f"{row.dice_per_image:.2f} %")
            + f" {TEXT_MODES.get(row.text_mode, row.text_mode)}" if row.dice_per_image is not None
            else f"{TEXT_MODES.get(row.text_mode, row.text_mode)}: not available" for row in rows)
        where = ", ".join(filter(None, [dataset, f"{counts.pop():,} images" if len(counts) == 1 else ""]))
        parts.append(f"{words}" + (f" ({where})" if where else ""))
    return "; ".join(parts)


def _auroc_line(record: dict) -> str:
    return (f"**Report matches the image** (the consistency box) was measured to tell an image's own report from "
            f"another image's with AUROC {record['auroc_a']:.3f}, and from its own report with left and right swapped "
            f"with AUROC {record['auroc_b']:.3f} (1 = always, 0.5 = chance; {int(record['num_images']):,} "
            f"{record.get('split', 'validation')} images, `benchmarks/consistency_auroc.py`).")


def _ood_line(record: dict) -> str:
    others = [f"{auroc:.3f} against {kind.replace('_', ' ')}" for kind, auroc in ood_aurocs(record).items()]
    return (f"**Is the image one the model knows?** Its image score was measured to set other images apart from the "
            f"validation images with AUROC {', '.join(others)}, and flags "
            f"{100 * record['in_distribution']['flagged_share']:.1f} % of the validation images "
            f"(`benchmarks/ood_auroc.py`).")


def describe(loaded: Union[LoadedModel, str, None]) -> str:
    if not isinstance(loaded, LoadedModel):
        return f"> **No model loaded.** {loaded or HOW_TO_GET_A_MODEL}"
    lines = [f"**Model:** `{Path(loaded.name).name}` · **trained on:** {', '.join(loaded.trained_on) or 'not stated'}",
             f"**Validation Dice** (per image): {_dice_line(loaded.validation) or 'not stated in the model folder'}"]
    if loaded.consistency_auroc:
        lines.append(_auroc_line(loaded.consistency_auroc))
    if loaded.ood_auroc:
        lines.append(_ood_line(loaded.ood_auroc))
    return "  \n".join(lines)


# ---------------------------------------------------------------------------------------------------- drawing


def _display(pixels: np.ndarray, side: int = DISPLAY_SIDE, smallest: int = RESULT_SIDE) -> Image.Image:
    """The image as drawn on the page: its longer side at most `side`, and enlarged to `smallest` when shorter."""
    height, width = pixels.shape[:2]
    scale = min(side / max(height, width), max(1.0, smallest / max(height, width)))
    return Image.fromarray(to_display_rgb(pixels)).resize((max(1, round(width * scale)), max(1, round(height * scale))))


def overlay_label(truth_given: bool) -> str:
    """The overlay's title: it names the ground truth only when one is given."""
    return (f"Prediction ({PREDICTION_NAME}) and ground truth ({TRUTH_NAME} contour)" if truth_given
            else f"Prediction ({PREDICTION_NAME})")


def _draw(picture: Image.Image, prediction, truth, style: str = "contour", opacity: float = 1.0) -> Image.Image:
    """The ground truth's contour (yellow) and the prediction (blue, a contour or filled) over a picture, at
    `opacity`. Contours are (longer side / 256 + 1) pixels wide, at least 3, at any display size."""
    outer = max(5, 2 * round(max(picture.size) / 256) + 1)
    for mask, colour, filled in ((truth, TRUTH_COLOUR, False), (prediction, PREDICTION_COLOUR, style == "filled")):
        if mask is None:
            continue
        region = Image.fromarray(mask.astype(np.uint8) * np.uint8(255)).resize(picture.size, Image.NEAREST)
        if not filled:
            region = ImageChops.subtract(region.filter(ImageFilter.MaxFilter(outer)), region.filter(ImageFilter.MinFilter(3)))
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


def map_legend(levels) -> str:
    """The colour bar and the one-line legend of the alignment maps (HTML)."""
    stops = ", ".join(f"rgb({r:.0f},{g:.0f},{b:.0f})" for r, g, b in HEATMAP_ANCHORS)
    strides = ", ".join(str(level) for level in levels)
    return (
        '<div style="display:flex;align-items:center;gap:8px;font-size:var(--text-sm)">'
        "<span>0</span>"
        f'<div id="map-colour-bar" style="flex:0 0 240px;height:14px;border-radius:3px;background:linear-gradient('
        f'to right, {stops})"></div><span>1</span>'
        f"<span>Each map: the pixel-report similarity at one decoder level (strides {strides}, coarse to fine), laid "
        "over the image: dark where the report does not point, bright yellow where it points.</span></div>"
    )


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
                     f"{shape[1]}x{shape[0]}: it is not drawn, and there is no Dice.")
        return None
    return truth


def _text_free_mask(loaded: LoadedModel, image, prediction, threshold: float) -> Optional[np.ndarray]:
    """Where the model finds lesion without the report, when the report may not fit (a second pass, only then) and
    the model segments text-free; else None."""
    if not report_may_not_fit(prediction.consistency) or not loaded.text_free:
        return None
    return predict(loaded.model, loaded.processor, [image.pixels], [None], threshold)[0].mask


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
    notes += filter(None, [
        image_fit_note(prediction.ood_score, loaded.model.config.ood_threshold, loaded.image_kind, loaded.ood_auroc),
        report_fit_note(checked.text, prediction.consistency, _text_free_mask(loaded, image, prediction, threshold),
                        laterality or loaded.processor.report_laterality, loaded.consistency_auroc),
    ])
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
    caption: str  # short enough for the gallery (the example's id); the report is listed under the gallery


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
            thumbnail = _draw(_display(read_image(image).pixels, THUMBNAIL_SIDE, 0), None, truth)
            examples.append(Example(
                str(image), row["text"], _saved(row["mask"], image.with_name(f"{row['id']}_truth.png")),
                _saved(thumbnail, image.with_name(f"{row['id']}_thumbnail.png")), str(row["id"])))
    return examples


def example_reports(examples: list) -> str:
    """The examples' reports in full, in the gallery's order (Markdown): the captions give only the ids."""
    return "\n".join(f"{number}. `{example.caption}` ({Path(example.image).parent.name}): {example.report}"
                     for number, example in enumerate(examples, 1))


def picked_report(side: str, zone: str, count) -> str:
    """
    The report the picker writes: QaTa-COV19's sentence (worded by `tmca_hf.describer.qata_report`, as the describer
    writes it) for `count` infected areas in the `zone` of the left, right or both lungs, sides as the training reports
    name them (for QaTa-COV19, the image's).
    """
    try:
        return qata_report({name: zone for name in (SIDES if side == "both" else (side,))}, int(count))
    except (TypeError, ValueError) as error:
        raise gr.Error(f"Cannot write that report: {error}", print_exception=False) from None


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
                model_laterality = loaded.processor.report_laterality if loaded else "image"
                with gr.Group(elem_id="report-group"):  # the report and whose left and right it names, together
                    report = gr.Textbox(label="Report", lines=3, elem_id="report", placeholder=(
                        "e.g. bilateral pulmonary infection, two infected areas, middle lower left lung"
                        + (" (leave empty for a text-free prediction)" if loaded and loaded.text_free else "")))
                    laterality = gr.Radio(
                        [("the patient's (as clinicians write)", "patient"), ("the image's", "image")], value="patient",
                        label=f"Left and right in the report are ... (the model was trained on reports naming "
                              f"{model_laterality} sides; an example or the picker sets this to match)",
                        elem_id="laterality")
                    laterality_line = gr.Markdown(laterality_note("patient", model_laterality), elem_id="laterality-note",
                                                  padding=True)
                if loaded and loaded.chest_xray:
                    with gr.Accordion("Write a report in the training reports' words (QaTa-COV19)", open=True,
                                      elem_id="picker"):
                        with gr.Row():
                            picker_side = gr.Radio(["left", "right", "both"], value="left", scale=2, min_width=260,
                                                   label=f"Side (the {model_laterality}'s, as the training reports)",
                                                   elem_id="picker-side")
                            picker_zone = gr.Dropdown(list(CHEST_XRAY_ZONES), value="lower", label="Zone", min_width=110,
                                                      elem_id="picker-zone")
                            picker_count = gr.Dropdown([(number_word(n), n) for n in range(1, 7)], value=1, min_width=110,
                                                       label="Infected areas", elem_id="picker-count")
                        picker_button = gr.Button("Write it into the report box", size="sm", elem_id="picker-write")
                threshold = gr.Slider(0.05, 0.95, value=0.5, step=0.05, label="Threshold (lesion probability)")
                truth = gr.Image(label="Ground-truth mask (optional, after the image): the Dice of the prediction",
                                 type="pil", image_mode=None, format="png", sources=["upload"], height=160, elem_id="truth")
                button = gr.Button("Segment", variant="primary", elem_id="segment")
            with gr.Column():
                overlay = gr.Image(label=overlay_label(False), type="filepath", format="png", interactive=False,
                                   height=RESULT_SIDE + 16, elem_id="overlay")
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
                                 f"ground truth in {TRUTH_NAME}): click one, then Segment", columns=4, height=320,
                                 allow_preview=False, elem_id="examples")
            gr.Markdown(example_reports(examples), elem_id="example-reports")
        else:
            gr.Markdown("No examples: they are offered only for the datasets the model folder says it was trained on "
                        "(its README.md, training_args.json or eval_results.json), found in `samples/`.")
        levels = tuple(loaded.model.config.alignment_levels or ()) if loaded else ()
        if levels:
            gr.HTML(map_legend(levels), elem_id="map-legend")
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
        if loaded and loaded.chest_xray:
            picker_button.click(lambda *picked: [picked_report(*picked), model_laterality], [picker_side, picker_zone,
                                picker_count], [report, laterality], queue=False, api_visibility="private")
        truth.change(lambda mask: gr.update(label=overlay_label(mask is not None)), truth, overlay, queue=False,
                     api_visibility="private")
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


def configure_logging() -> None:
    """Warnings of every library, and the app's own lines (the model it loaded) too."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logger.setLevel(logging.INFO)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="TMCA Gradio app: report-guided lesion segmentation.")
    parser.add_argument("--model", help="model folder or Hub id (default: $TMCA_MODEL, else models/tmca-qata-cov19 "
                                        "when it exists, else outputs/tmca-qata-sample)")
    parser.add_argument("--samples", help="folder of example datasets (default: the repository's samples/)")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--share", action="store_true", help="make a public gradio.live link (off by default)")
    args = parser.parse_args(argv)
    configure_logging()
    demo = build_demo(args.model, args.samples)
    if not isinstance(MODEL, LoadedModel):
        logger.warning("%s\nThe app starts anyway and shows this message.", MODEL)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, **launch_kwargs())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
