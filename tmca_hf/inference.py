"""Inference helpers shared by the Gradio Space (`space/app.py`) and `tmca-predict` (`tmca_hf/predict.py`).

This module is deliberately standalone: it imports only numpy, PIL, torch and transformers (and pydicom, lazily, for
DICOM files), never the `tmca_hf` package. The Space must run from a Hub model with `trust_remote_code=True` and
without `tmca_hf` installed, so `space/tmca_inference.py` is a symlink to this file: there is one copy of the image
decoding (DICOM, 16-bit, pixel limits), report checks and batched prediction, and uploading the `space/` folder with
`huggingface_hub.upload_folder` (or `huggingface-cli upload`) sends the file the link points to.

Decoding rules (`read_image`):

- PNG / JPEG / BMP / TIFF / GIF via PIL, first frame, EXIF orientation applied. 8-bit images stay uint8 (gray or
  RGB); palette, CMYK and alpha images are converted to RGB (alpha dropped), 1-bit to gray. 16-bit gray PNG/TIFF
  keep their depth (uint16), 32-bit integer and float images too; the processor scales those by their own min/max.
- DICOM (the `DICM` magic at byte 128, or a `.dcm`/`.dicom` name) via pydicom: rescale slope and intercept applied
  (float32), MONOCHROME1 inverted so that bright is dense, like MONOCHROME2; the first frame of a multi-frame file.
- The size is checked from the header, before any pixel is decoded: more than `MAX_IMAGE_PIXELS` pixels or a side
  under `MIN_IMAGE_SIDE` is refused. Unreadable, truncated or pixel-less files raise `ImageReadError`.
"""

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from transformers import AutoModel, AutoProcessor


# 6000 x 6000: above any chest X-ray (about 3000 x 3000 to 4300 x 3500), endoscopy frame or CT/MR slice, and small
# enough that decoding and resizing on a CPU Space stays within memory (about 150 MB per float channel).
MAX_IMAGE_PIXELS = 36_000_000
# The backbone's coarsest stride: below it there is nothing to segment.
MIN_IMAGE_SIDE = 32
DICOM_SUFFIXES = (".dcm", ".dicom")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp") + DICOM_SUFFIXES
# A report is tokenised only this many characters per model token when counting what is cut (long reports are cheap).
_CHARS_PER_TOKEN_CHECKED = 64

ImageSource = Union[str, os.PathLike, bytes]


class ImageReadError(ValueError):
    """An input file that is not a usable image: unreadable, truncated, too large or small, or without pixel data."""


class ReportError(ValueError):
    """A report the model cannot use: empty for a model that needs text, or made only of unknown tokens."""


@dataclass
class LoadedImage:
    """Decoded pixels, (H, W) or (H, W, 3) (uint8, uint16, int32 or float32), and notes about the decoding."""

    pixels: np.ndarray
    notes: list = field(default_factory=list)

    @property
    def size(self) -> tuple:
        """(height, width)."""
        return tuple(self.pixels.shape[:2])


@dataclass
class CheckedReport:
    """A report ready for the processor (`None` for text-free inference) and notes for the user."""

    text: Optional[str]
    notes: list = field(default_factory=list)
    truncated: bool = False


@dataclass
class Prediction:
    """A binary mask at the image's original size and the model's alignment maps (stride -> (h, w) in [0, 1])."""

    mask: np.ndarray  # (H, W) bool
    alignment_maps: dict  # {stride: (h_s, w_s) float32}

    @property
    def lesion_pixels(self) -> int:
        return int(self.mask.sum())

    @property
    def area_fraction(self) -> float:
        return self.lesion_pixels / self.mask.size


# ----------------------------------------------------------------------------------------------------- images


def _describe(source: ImageSource, name: Optional[str]) -> str:
    if name:
        return name
    return "the image" if isinstance(source, bytes) else os.fspath(source)


def _open_binary(source: ImageSource):
    if isinstance(source, bytes):
        return io.BytesIO(source)
    path = Path(source)
    if path.is_dir():
        raise ImageReadError(f"{path} is a folder; expected an image file.")
    try:
        return open(path, "rb")
    except OSError as error:
        raise ImageReadError(f"Cannot open {path}: {error.strerror or error}.") from None


def _is_dicom(stream, label: str) -> bool:
    header = stream.read(132)
    stream.seek(0)
    return header[128:132] == b"DICM" or label.lower().endswith(DICOM_SUFFIXES)


def _check_size(height: int, width: int, label: str, max_pixels: int, min_side: int) -> None:
    if height * width > max_pixels:
        raise ImageReadError(
            f"{label} is {width}x{height} pixels ({height * width / 1e6:.0f} MP); the limit is "
            f"{max_pixels / 1e6:.0f} MP. Downscale the image first (the model sees it at a few hundred pixels anyway)."
        )
    if min(height, width) < min_side:
        raise ImageReadError(
            f"{label} is {width}x{height} pixels; expected at least {min_side} pixels on each side."
        )


def _pil_pixels(image: Image.Image) -> np.ndarray:
    """A loaded PIL image as gray or RGB pixels, deep gray images kept at their depth."""
    if image.mode in ("1", "LA", "La"):
        image = image.convert("L")
    elif image.mode in ("P", "PA"):
        image = image.convert("RGBA").convert("RGB")  # via RGBA: palette transparency is then dropped quietly
    elif image.mode.startswith("I;16"):
        return np.asarray(image).astype(np.uint16)
    elif image.mode not in ("L", "RGB", "I", "F"):
        image = image.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBA, RGBa, RGBX
    return np.asarray(image)


def _read_pil(stream, label: str, max_pixels: int, min_side: int) -> LoadedImage:
    try:
        image = Image.open(stream)  # reads the header only
    except Image.DecompressionBombError as error:
        raise ImageReadError(
            f"{label} is far too large to decode ({error}); the limit is {max_pixels / 1e6:.0f} MP."
        ) from None
    except UnidentifiedImageError:
        raise ImageReadError(
            f"{label} is not an image file this app can read: expected PNG, JPEG, BMP, TIFF, GIF, WebP or DICOM."
        ) from None
    _check_size(image.height, image.width, label, max_pixels, min_side)
    notes = []
    if getattr(image, "n_frames", 1) > 1:
        notes.append(f"{label} has {image.n_frames} frames; the first one is segmented.")
    try:
        image = ImageOps.exif_transpose(image)
        pixels = _pil_pixels(image)
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageReadError(f"{label} is damaged or truncated and cannot be decoded ({error}).") from None
    return LoadedImage(np.ascontiguousarray(pixels), notes)


def _read_dicom(stream, label: str, max_pixels: int, min_side: int) -> LoadedImage:
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError:
        raise ImageReadError(f"{label} is a DICOM file; reading DICOM needs pydicom (pip install pydicom).") from None
    try:
        dataset = pydicom.dcmread(stream, force=True)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as error:
        raise ImageReadError(f"{label} is not a readable DICOM file ({error}).") from None
    if not any(keyword in dataset for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        kind = dataset.get("Modality") or dataset.get("SOPClassUID", "unknown kind")
        raise ImageReadError(
            f"{label} is a DICOM file without pixel data ({kind}: e.g. a report, a DICOMDIR or a header-only file); "
            f"expected a DICOM image."
        )
    _check_size(int(dataset.get("Rows", 0) or 0), int(dataset.get("Columns", 0) or 0), label, max_pixels, min_side)
    try:
        pixels = dataset.pixel_array
    except Exception as error:  # pydicom raises several types: missing decoders, bad lengths, unknown syntaxes
        raise ImageReadError(f"{label}: the DICOM pixel data cannot be decoded ({error}).") from None
    notes = []
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        pixels = pixels[0]
        notes.append(f"{label} has {frames} frames; the first one is segmented.")
    if pixels.ndim == 2:
        slope = float(dataset.get("RescaleSlope", 1) or 1)
        intercept = float(dataset.get("RescaleIntercept", 0) or 0)
        pixels = pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)
        if dataset.get("PhotometricInterpretation", "") == "MONOCHROME1":
            pixels = pixels.max() + pixels.min() - pixels
    return LoadedImage(np.ascontiguousarray(pixels), notes)


def read_image(
    source: ImageSource,
    name: Optional[str] = None,
    max_pixels: int = MAX_IMAGE_PIXELS,
    min_side: int = MIN_IMAGE_SIDE,
) -> LoadedImage:
    """
    Decode an image file (path or bytes) for TMCA, checking its size before decoding (see the module docstring).

    Args:
        source: a path to the file, or its bytes.
        name: how messages call the file (defaults to the path).
        max_pixels, min_side: size limits; larger or smaller images raise `ImageReadError`.

    Raises:
        ImageReadError: the file is missing, not an image, damaged, too large or small, or a DICOM without pixels.
    """
    label = _describe(source, name)
    stream = _open_binary(source)
    try:
        reader = _read_dicom if _is_dicom(stream, label) else _read_pil
        return reader(stream, label, max_pixels, min_side)
    finally:
        stream.close()


def to_display_rgb(pixels: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 for display: 8-bit kept, deeper images scaled by their min/max (as the processor scales them)."""
    if pixels.dtype != np.uint8:
        pixels = pixels.astype(np.float32)
        low, high = float(pixels.min()), float(pixels.max())
        pixels = (pixels - low) / (high - low) * 255.0 if high > low else np.zeros_like(pixels)
        pixels = pixels.round().astype(np.uint8)
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=-1)
    return pixels[..., :3]


# ---------------------------------------------------------------------------------------------------- reports


def check_report(report: Optional[str], processor, supports_text_free_inference: bool) -> CheckedReport:
    """
    Prepare one report: an empty report becomes text-free inference (or is refused when the model needs text), a
    report of only unknown tokens (emoji, other scripts) is refused, and a report longer than the processor's
    `max_text_length` tokens is cut by the processor, with a note that says what the model reads.

    Raises:
        ReportError: the report cannot guide this model.
    """
    report = "" if report is None else str(report)
    if not report.strip():
        if not supports_text_free_inference:
            raise ReportError(
                "The report is empty, and this model needs one: it was trained without text dropout. Describe the "
                "findings (e.g. 'bilateral pulmonary infection, two infected areas, middle lower left lung')."
            )
        return CheckedReport(None, ["No report given: text-free prediction (the model's learned null text)."])
    tokenizer = processor.tokenizer
    max_tokens = int(processor.max_text_length)
    checked = report[: _CHARS_PER_TOKEN_CHECKED * max_tokens]
    ids = tokenizer(checked, add_special_tokens=False)["input_ids"]
    if ids and all(token == tokenizer.unk_token_id for token in ids):
        raise ReportError(
            f"The report has no word the model's tokenizer knows (its {len(ids)} token(s) are all "
            f"{tokenizer.unk_token}): emoji and symbols carry no findings. Write the findings in words"
            + (", or leave the report empty for a text-free prediction." if supports_text_free_inference else ".")
        )
    kept = max_tokens - tokenizer.num_special_tokens_to_add()
    if len(ids) <= kept:
        return CheckedReport(report)
    kept_text = tokenizer.decode(ids[:kept])
    note = (
        f"The report is {len(report):,} characters, {'more than ' if len(checked) < len(report) else ''}{len(ids)} "
        f"tokens; the model reads only its first {kept} tokens, {kept_text!r}, and ignores the rest."
    )
    return CheckedReport(report, [note], truncated=True)


# ----------------------------------------------------------------------------------------------------- model


def check_model_location(name_or_path: Union[str, os.PathLike]) -> None:
    """
    Raise `FileNotFoundError` when `name_or_path` names a local model that is not there: a missing path that cannot be
    a Hub id ("user/model"), a file, or a folder without config.json. A Hub id passes (the Hub answers for it).
    """
    name = os.fspath(name_or_path)
    path = Path(name).expanduser()
    expected = "expected a folder written by save_pretrained (with config.json) or a Hub id such as 'user/tmca-model'"
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} has no config.json; {expected}.")
        return
    looks_like_hub_id = not path.is_absolute() and not name.startswith((".", "~")) and name.count("/") == 1
    if path.exists() or not looks_like_hub_id:
        raise FileNotFoundError(f"No TMCA model at {name}: {expected}.")


def load_model(name_or_path: Union[str, os.PathLike], device: Optional[str] = None):
    """
    Load a TMCA model and its processor from a `save_pretrained` folder or a Hub id (remote code is trusted: the model
    repository carries the TMCA modelling files). Returns `(model, processor)`, the model in eval mode on `device`
    (CUDA when available by default).
    """
    check_model_location(name_or_path)
    name_or_path = os.fspath(name_or_path)
    model = AutoModel.from_pretrained(name_or_path, trust_remote_code=True)
    if getattr(model.config, "model_type", None) != "tmca":
        raise ValueError(
            f"{name_or_path} holds a {model.config.model_type!r} model; expected a TMCA model (model_type 'tmca')."
        )
    processor = AutoProcessor.from_pretrained(name_or_path, trust_remote_code=True)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), processor


def check_threshold(threshold) -> float:
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be a number between 0 and 1, got {threshold!r}.") from None
    if not 0.0 < value < 1.0:
        raise ValueError(f"threshold must lie strictly between 0 and 1, got {value}.")
    return value


@torch.inference_mode()
def predict(model, processor, images: Sequence[np.ndarray], reports: Sequence[Optional[str]], threshold: float = 0.5):
    """
    Segment a batch: `images` as returned by `read_image(...).pixels`, `reports` checked by `check_report` (`None`
    for text-free inference). Images with and without a report run as two sub-batches (the processor takes text for
    all images or none). Returns one `Prediction` per image, masks at each image's original size.
    """
    if len(images) != len(reports):
        raise ValueError(f"Got {len(reports)} reports for {len(images)} images; expected one per image.")
    threshold = check_threshold(threshold)
    levels = list(model.config.alignment_levels)
    predictions = [None] * len(images)
    for with_text in (True, False):
        indices = [index for index, report in enumerate(reports) if (report is not None) == with_text]
        if not indices:
            continue
        batch = processor(
            images=[images[index] for index in indices],
            text=[reports[index] for index in indices] if with_text else None,
            return_tensors="pt",
        ).to(model.device)
        outputs = model(**batch)
        sizes = [images[index].shape[:2] for index in indices]
        masks = processor.post_process_semantic_segmentation(outputs, target_sizes=sizes, threshold=threshold)
        maps = outputs.alignment_maps or ()
        for position, index in enumerate(indices):
            predictions[index] = Prediction(
                mask=masks[position].cpu().numpy().astype(bool),
                alignment_maps={
                    stride: level_map[position, 0].float().cpu().numpy() for stride, level_map in zip(levels, maps)
                },
            )
    return predictions


def mask_to_image(mask: np.ndarray) -> Image.Image:
    """A boolean mask as an 8-bit gray PNG-ready image, 0 background and 255 lesion."""
    return Image.fromarray(mask.astype(np.uint8) * 255)
