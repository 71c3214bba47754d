"""Inference helpers shared by the Gradio Space (`space/app.py`) and `tmca-predict` (`tmca_hf/predict.py`): report
checks, model loading and batched prediction. Images are read by `tmca_hf.modeling.imaging_tmca` (the module every saved model
ships).
"""

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from transformers import AutoModel, AutoProcessor


# The trained model this repository releases (present in a clone of it; the default of tmca-predict and the Space).
RELEASED_MODEL = Path(__file__).resolve().parents[1] / "models" / "tmca-qata-cov19"

# A report is tokenised only this many characters per model token when counting what is cut (long reports are cheap).
_CHARS_PER_TOKEN_CHECKED = 64


class ReportError(ValueError):
    """A report the model cannot use: empty for a model that needs text, or made only of unknown tokens."""


@dataclass
class CheckedReport:
    """A report ready for the processor (`None` for text-free inference) and notes for the user."""

    text: Optional[str]
    notes: list = field(default_factory=list)
    truncated: bool = False


@dataclass
class Prediction:
    """
    A binary mask at the image's original size, the model's alignment maps (stride -> (h, w) in [0, 1]) and the
    report-image consistency (`outputs.consistency`: None without a report or for a model without alignment levels)
    and how unlike the training images the image is (`outputs.ood_score`: None for a model without
    `config.ood_threshold`; above it, `unfamiliar`).
    """

    mask: np.ndarray  # (H, W) bool
    alignment_maps: dict  # {stride: (h_s, w_s) float32}
    consistency: Optional[float] = None
    ood_score: Optional[float] = None
    unfamiliar: bool = False

    @property
    def lesion_pixels(self) -> int:
        return int(self.mask.sum())

    @property
    def area_fraction(self) -> float:
        return self.lesion_pixels / self.mask.size


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
        return CheckedReport(None, [
            "No report given: text-free prediction (the model's learned null text); the mask is less reliable than "
            "one guided by the report."
        ])
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
def predict(
    model, processor, images: Sequence[np.ndarray], reports: Sequence[Optional[str]], threshold: float = 0.5,
    laterality: Optional[str] = None,
):
    """
    Segment a batch: `images` as returned by `imaging_tmca.read_image(...).pixels`, `reports` checked by
    `check_report` (`None` for text-free inference), `laterality` the side convention the reports are written in
    ("patient" or "image"; default: the model's own). Images with and without a report run as two sub-batches (the
    processor takes text for all images or none). Returns one `Prediction` per image, masks at each image's original
    size.
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
            laterality=laterality,
        ).to(model.device)
        outputs = model(**batch)
        sizes = [images[index].shape[:2] for index in indices]
        masks = processor.post_process_semantic_segmentation(outputs, target_sizes=sizes, threshold=threshold)
        maps = outputs.alignment_maps or ()
        consistency = getattr(outputs, "consistency", None)  # models saved before the score have no such output
        ood_scores = getattr(outputs, "ood_score", None)
        for position, index in enumerate(indices):
            ood_score = None if ood_scores is None else round(float(ood_scores[position]), 4)
            predictions[index] = Prediction(
                mask=masks[position].cpu().numpy().astype(bool),
                alignment_maps={
                    stride: level_map[position, 0].float().cpu().numpy() for stride, level_map in zip(levels, maps)
                },
                consistency=None if consistency is None else round(float(consistency[position]), 4),
                ood_score=ood_score,
                unfamiliar=ood_score is not None and ood_score > model.config.ood_threshold,
            )
    return predictions


def mask_to_image(mask: np.ndarray) -> Image.Image:
    """A boolean mask as an 8-bit gray PNG-ready image, 0 background and 255 lesion."""
    return Image.fromarray(mask.astype(np.uint8) * 255)
