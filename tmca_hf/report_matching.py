"""Does the report fit the image? Training the report-matching head behind `outputs.consistency` (issue 16).

The head (`TmcaReportMatching`) is trained after the main training, on the frozen model: what it sees of an image
(where the model's text-free prediction puts lesions, on a 6 x 4 grid) is computed once per image and the report
vectors once per distinct report, so a fit on a whole training split is cheap on a CPU. Each epoch every image is a positive with its
own report and a negative with each of
  - another image's report whose text differs (a fresh derangement every epoch, `other_reports`),
  - its own report with left and right swapped, where that changes what the report claims (`report_claims`),
  - its own report with a wrong count of infected areas (`wrong_count`),
the two classes weighted to half the loss each. `benchmarks/consistency_auroc.py` measures the head on a validation
split and fits its calibration there.
"""

import re

import numpy as np
import torch
import torch.nn.functional as F

from .evaluation import derangement, normalise_report
from .modeling.laterality_tmca import swap_laterality
from .modeling.modeling_tmca import TmcaReportMatching


COUNT_WORDS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_COUNT = re.compile(r"\b(" + "|".join(COUNT_WORDS) + r") infected areas?\b", re.IGNORECASE)


def report_claims(text: str) -> frozenset:
    """The report's clauses (split at commas and 'and') as a set: equal sets mean the same findings."""
    return frozenset(clause.strip() for clause in re.split(r",|\band\b", normalise_report(text)) if clause.strip())


def other_reports(reports: list, seed: int) -> list:
    """A derangement of the images (fixed by `seed`) in which no image gets a text equal to its own."""
    keys = np.unique([normalise_report(text) for text in reports], return_inverse=True)[1]
    if np.bincount(keys).max() > len(reports) / 2:
        raise ValueError("one report text covers more than half of the images: no image order gives all others")
    order = np.array(derangement(len(reports), seed))
    rng = np.random.default_rng(seed + 1)
    while True:
        clashes = np.flatnonzero(keys[order] == keys)
        if not clashes.size:
            return order.tolist()
        i, j = clashes[0], int(rng.integers(len(reports)))
        if keys[order[j]] != keys[i] and keys[order[i]] != keys[j]:  # different texts imply different images
            order[i], order[j] = order[j], order[i]


def wrong_count(text: str):
    """The report with its count of infected areas changed ("one" -> "two", any other n -> n - 1), or `None` when it
    states no count: "two infected areas" -> "one infected area"."""
    match = _COUNT.search(text)
    if match is None:
        return None
    count = COUNT_WORDS.index(match.group(1).lower()) + 1
    wrong = 2 if count == 1 else count - 1
    phrase = f"{COUNT_WORDS[wrong - 1]} infected area{'s' if wrong > 1 else ''}"
    return text[: match.start()] + phrase + text[match.end():]


def negative_reports(reports: list, seed: int) -> dict:
    """Per image, its negatives: `{"other": [...], "swapped": [... or None], "count": [... or None]}` (None where the
    swap leaves the findings unchanged or the report states no count)."""
    swapped = [swap_laterality(text) for text in reports]
    return {
        "other": [reports[index] for index in other_reports(reports, seed)],
        "swapped": [b if report_claims(a) != report_claims(b) else None for a, b in zip(reports, swapped)],
        "count": [wrong_count(text) for text in reports],
    }


@torch.inference_mode()
def text_free_lesion_features(model, processor, images, batch_size: int = 32) -> torch.Tensor:
    """(N, 48) float32 on the CPU: what the head sees of each image (`model.text_free_lesion_features`)."""
    features = []
    for start in range(0, len(images), batch_size):
        pixels = processor.image_processor(images[start : start + batch_size], return_tensors="pt")["pixel_values"]
        features.append(model.text_free_lesion_features(model.backbone(pixels.to(model.device)).feature_maps).cpu())
    return torch.cat(features)


@torch.inference_mode()
def report_vectors(model, processor, texts, batch_size: int = 256) -> dict:
    """{text: (hidden_size,) float32}: each distinct report's sentence vector, as the forward computes it."""
    distinct = sorted(set(texts))
    vectors = {}
    for start in range(0, len(distinct), batch_size):
        chunk = distinct[start : start + batch_size]
        encoded = processor.encode_reports(chunk).to(model.device)
        text = model.encode_text(encoded["input_ids"], encoded["attention_mask"], len(chunk), model.device)
        vectors.update(zip(chunk, text.vector.float().cpu()))
    return vectors


@torch.inference_mode()
def matching_logits(head, lesion_features: torch.Tensor, texts: list, vectors: dict, batch_size: int = 1024) -> torch.Tensor:
    """(N,) the head's logits for image i (`lesion_features` from `text_free_lesion_features`) with report texts[i]
    (`vectors` from `report_vectors`), in eval mode."""
    was_training = head.training
    head.eval()
    text_vectors = torch.stack([vectors[text] for text in texts])
    device = next(head.parameters()).device
    logits = torch.cat([
        head(lesion_features[start : start + batch_size].to(device), text_vectors[start : start + batch_size].to(device)).cpu()
        for start in range(0, len(texts), batch_size)
    ])
    head.train(was_training)
    return logits


def _pairs(reports: list, negatives: dict, seed: int) -> tuple:
    """(image indices, texts, labels) of one epoch's positives and negatives: `negatives` from `negative_reports`,
    with a fresh derangement for the other-report negatives."""
    negatives = {**negatives, "other": [reports[index] for index in other_reports(reports, seed)]}
    indices, texts, labels = list(range(len(reports))), list(reports), [1.0] * len(reports)
    for kind in ("other", "swapped", "count"):
        for index, text in enumerate(negatives[kind]):
            if text is not None:
                indices.append(index)
                texts.append(text)
                labels.append(0.0)
    return torch.tensor(indices), texts, torch.tensor(labels)


def fit_report_matching(model, processor, images, reports, hidden_size: int = 128, epochs: int = 40,
                        batch_size: int = 256, learning_rate: float = 1e-3, weight_decay: float = 0.01,
                        seed: int = 0) -> dict:
    """
    Train a report-matching head on `images` and their `reports` (a training split) and attach it to `model`
    (`model.report_matching`, `config.report_matching_hidden_size`); the rest of the model is not touched. Any
    `config.consistency_calibration` is cleared: it belonged to the score the head replaces (refit it on a
    validation split with `benchmarks/consistency_auroc.py --calibrate`).

    Returns:
        `{"images", "pairs_per_epoch", "epochs", "hidden_size", "final_loss"}`.
    """
    if len(images) != len(reports) or len(images) < 2:
        raise ValueError(f"Got {len(images)} images and {len(reports)} reports; expected one report per image, 2 or more.")
    if not model.config.use_text:
        raise ValueError("This model has no text encoder: there is no report to match.")
    model.eval()
    lesions = text_free_lesion_features(model, processor, images)
    negatives = negative_reports(reports, seed)
    vectors = report_vectors(model, processor, [text for kind in (reports, *negatives.values()) for text in kind if text])

    torch.manual_seed(seed)
    model.config.report_matching_hidden_size = hidden_size
    model.config.consistency_calibration = None
    head = TmcaReportMatching(model.config)
    head.apply(model._init_weights)
    head.feature_mean.copy_(lesions.mean(0))
    head.feature_scale.copy_(lesions.std(0).clamp(min=1e-4))
    optimizer = torch.optim.AdamW(head.parameters(), lr=learning_rate, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    head.train()
    for epoch in range(epochs):
        indices, texts, labels = _pairs(reports, negatives, seed + epoch)
        text_vectors = torch.stack([vectors[text] for text in texts])
        weights = torch.where(labels > 0, 0.5 / labels.sum(), 0.5 / (1 - labels).sum())
        order = torch.randperm(len(labels), generator=generator)
        epoch_loss = 0.0
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            logits = head(lesions[indices[batch]], text_vectors[batch])
            losses = F.binary_cross_entropy_with_logits(logits, labels[batch], reduction="none")
            loss = (weights[batch] * losses).sum() * (len(order) / len(batch))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            epoch_loss += float(loss.detach()) * len(batch) / len(order)
    head.eval().requires_grad_(False)
    model.report_matching = head.to(model.device)
    return {"images": len(images), "pairs_per_epoch": len(labels), "epochs": epochs, "hidden_size": hidden_size,
            "final_loss": round(epoch_loss, 4)}


__all__ = [
    "fit_report_matching", "matching_logits", "negative_reports", "other_reports", "report_claims",
    "report_vectors", "text_free_lesion_features", "wrong_count",
]
