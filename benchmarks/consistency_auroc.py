"""How well `outputs.consistency` tells an image's own report from a wrong one (issue 10, items 1 and 2).

For each image of a split, the consistency score with
  (own)  its own report,
  (a)    the report of another image whose report differs in wording (a fixed-seed derangement of the images,
         repaired so that no image gets a text equal to its own),
  (b)    its own report with left and right swapped (`tmca_hf.modeling.laterality_tmca.swap_laterality`; the hard case),
and the AUROC of own against (a) and own against (b). AUROCs are computed on the raw mean cosine s (the score before
calibration), so they do not depend on the calibration. For (b), swaps that leave the report's findings unchanged
("lower left lung and lower right lung", a report without a side) are not negatives: they are left out of `auroc_b`
and `num_images_b` counts the rest (`auroc_b_all_changed_texts` keeps every swap that changed the text at all).

With --calibrate, the logistic calibration p = sigmoid(a * s + b) is fitted by plain torch (LBFGS on the
class-balanced logistic loss, float64): own reports are positives, (a) and (b) negatives, each class weighted to
half the loss (a prior of 0.5 that a given report matches). It is written into the model folder's config.json with
`config.save_pretrained` (the weights are not touched).

    python benchmarks/consistency_auroc.py --model FOLDER --dataset /work/shared/data/qata_cov19 --split validation \
        [--max_samples N] [--calibrate]

Prints one JSON line. The model is loaded with this checkout's `tmca_hf` classes (not the folder's remote code,
which may predate the consistency score).
"""

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tmca_hf import TmcaConfig, TmcaForImageSegmentation, TmcaProcessor  # noqa: E402
from tmca_hf.data import load_split, normalize_split_name  # noqa: E402
from tmca_hf.evaluation import derangement  # noqa: E402
from tmca_hf.modeling.laterality_tmca import swap_laterality  # noqa: E402


SWAP_SOURCE = "tmca_hf.modeling.laterality_tmca.swap_laterality"


def normalise_report(text: str) -> str:
    return " ".join(text.lower().split()).rstrip(".")


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


def auroc(positives, negatives) -> float:
    """P(positive > negative) + P(tie) / 2: the Mann-Whitney rank formula."""
    negatives = np.sort(np.asarray(negatives, dtype=np.float64))
    positives = np.asarray(positives, dtype=np.float64)
    below = np.searchsorted(negatives, positives, side="left")
    below_or_tied = np.searchsorted(negatives, positives, side="right")
    return float((below + 0.5 * (below_or_tied - below)).sum() / (len(positives) * len(negatives)))


def fit_calibration(positives, negatives, steps: int = 200) -> list:
    """(a, b) of sigmoid(a * s + b), class-balanced logistic loss, torch LBFGS in float64."""
    scores = torch.tensor(np.concatenate([positives, negatives]), dtype=torch.float64)
    labels = torch.cat([torch.ones(len(positives)), torch.zeros(len(negatives))]).double()
    weights = torch.where(labels > 0, 0.5 / len(positives), 0.5 / len(negatives))
    parameters = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([parameters], lr=1, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        logits = parameters[0] * scores + parameters[1]
        loss = (weights * torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return [float(value) for value in parameters.detach()]


@torch.inference_mode()
def raw_scores(model, processor, images, reports, batch_size: int, device) -> np.ndarray:
    """The mean cosine s of each (image, report) pair: consistency without calibration is (s + 1) / 2."""
    scores = []
    for start in range(0, len(images), batch_size):
        inputs = processor(
            images=images[start : start + batch_size], text=reports[start : start + batch_size], return_tensors="pt"
        ).to(device)
        scores.append(2 * model(**inputs).consistency.double().cpu() - 1)
    return torch.cat(scores).numpy()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=Path, help="a TMCA save_pretrained folder")
    parser.add_argument("--dataset", required=True, help="dataset source for tmca_hf.data.load_tmca_dataset")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--max_samples", type=int, default=None, help="only the first N images of the split")
    parser.add_argument("--calibrate", action="store_true", help="fit (a, b) and write them into the model's config")
    parser.add_argument("--seed", type=int, default=0, help="seed of the other-report derangement")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    dataset, _ = load_split(args.dataset, args.split)
    if args.max_samples is not None:
        dataset = dataset.select(range(min(args.max_samples, len(dataset))))
    images, reports = list(dataset["image"]), list(dataset["text"])

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = TmcaForImageSegmentation.from_pretrained(args.model).to(device).eval()
    if not model.config.alignment_levels:
        raise SystemExit("consistency_auroc: this model has no alignment levels, so it has no consistency score")
    model.config.consistency_calibration = None  # raw s; AUROC does not depend on a monotone calibration
    processor = TmcaProcessor.from_pretrained(args.model)

    others = [reports[index] for index in other_reports(reports, args.seed)]
    swapped = [swap_laterality(text) for text in reports]
    meaning_changed = np.array([report_claims(a) != report_claims(b) for a, b in zip(reports, swapped)])
    text_changed = np.array([normalise_report(a) != normalise_report(b) for a, b in zip(reports, swapped)])

    own = raw_scores(model, processor, images, reports, args.batch_size, device)
    other = raw_scores(model, processor, images, others, args.batch_size, device)
    swap = raw_scores(model, processor, images, swapped, args.batch_size, device)

    result = {
        "model": str(args.model),
        "split": normalize_split_name(args.split),
        "num_images": len(images),
        "auroc_a": auroc(own, other),
        "auroc_b": auroc(own[meaning_changed], swap[meaning_changed]),
        "num_images_b": int(meaning_changed.sum()),
        "auroc_b_all_changed_texts": auroc(own[text_changed], swap[text_changed]),
        "num_images_b_all_changed_texts": int(text_changed.sum()),
        "paired_win_rate_a": float((own > other).mean()),
        "paired_win_rate_b": float((own[meaning_changed] > swap[meaning_changed]).mean()),
        "mean_cosine": {"own": float(own.mean()), "a": float(other.mean()), "b": float(swap[meaning_changed].mean())},
        "seed": args.seed,
        "laterality_swap": SWAP_SOURCE,
    }
    if args.calibrate:
        negatives = np.concatenate([other, swap[meaning_changed]])
        calibration = fit_calibration(own, negatives)
        config = TmcaConfig.from_pretrained(args.model)
        config.consistency_calibration = calibration
        config.save_pretrained(args.model)
        probability = lambda s: 1 / (1 + np.exp(-(calibration[0] * s + calibration[1])))  # noqa: E731
        result["calibration"] = {
            "consistency_calibration": calibration,
            "fit": "torch LBFGS, class-balanced logistic loss; positives own, negatives (a) and (b)",
            "mean_probability": {
                "own": float(probability(own).mean()),
                "a": float(probability(other).mean()),
                "b": float(probability(swap[meaning_changed]).mean()),
            },
            "written_to": str(args.model / "config.json"),
        }
    else:
        stored = TmcaConfig.from_pretrained(args.model).consistency_calibration
        result["calibration"] = {"consistency_calibration": stored}
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
