"""How well `outputs.consistency` tells an image's own report from a wrong one (issues 10 and 16).

For each image of a split, the consistency score with
  (own)  its own report,
  (a)    the report of another image whose report differs in wording (a fixed-seed derangement of the images,
         repaired so that no image gets a text equal to its own),
  (b)    its own report with left and right swapped (`tmca_hf.modeling.laterality_tmca.swap_laterality`; the hard case),
  (c)    its own report with a wrong count of infected areas (`tmca_hf.report_matching.wrong_count`),
and the AUROC of own against each. AUROCs are computed on the raw score s before calibration (the report-matching
head's logit where the model has the head, else the alignment space's mean cosine), so they do not depend on the
calibration. For (b), swaps that leave the report's findings unchanged ("lower left lung and lower right lung", a
report without a side) are not negatives: they are left out of `auroc_b` and `num_images_b` counts the rest
(`auroc_b_all_changed_texts` keeps every swap that changed the text at all); (c) counts the reports that state a count.

With --fit_split train, a report-matching head is first trained on that split (`tmca_hf.report_matching`) and saved
into the model folder, so one run fits the head on the training images and measures it on the --split.

With --calibrate, the logistic calibration p = sigmoid(a * s + b) is fitted by plain torch (LBFGS on the
class-balanced logistic loss, float64): own reports are positives, (a), (b) and (c) negatives, each class weighted to
half the loss (a prior of 0.5 that a given report matches). It is written into the model folder's config.json with
`config.save_pretrained` (the weights are not touched).

When it writes into the model folder (--fit_split, --calibrate), the printed line is also kept there as
`consistency_auroc.json`, which the Space shows beside the score.

    python benchmarks/consistency_auroc.py --model FOLDER --dataset ../shared/data/qata_cov19 --split validation \
        [--max_samples N] [--calibrate]

Prints one JSON line. The model is loaded with this checkout's `tmca_hf` classes (not the folder's remote code,
which may predate the consistency score).
"""

import argparse
import json
import os
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
from tmca_hf.evaluation import normalise_report  # noqa: E402
from tmca_hf.fit_checks import CONSISTENCY_AUROC_FILE, write_record  # noqa: E402
from tmca_hf.hub import save_release  # noqa: E402
from tmca_hf.modeling.laterality_tmca import swap_laterality  # noqa: E402
from tmca_hf.report_matching import (  # noqa: E402
    fit_report_matching,
    matching_logits,
    other_reports,
    report_claims,
    report_vectors,
    text_free_lesion_features,
    wrong_count,
)


SWAP_SOURCE = "tmca_hf.modeling.laterality_tmca.swap_laterality"


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


class RawScores:
    """The uncalibrated score s of (image, report) pairs: the report-matching head's logit when the model has one
    (its image inputs computed once), else the alignment space's mean cosine (consistency without calibration is
    (s + 1) / 2)."""

    def __init__(self, model, processor, images, batch_size: int, device):
        self.model, self.processor, self.images, self.batch_size, self.device = model, processor, images, batch_size, device
        self.inputs = (
            text_free_lesion_features(model, processor, images, batch_size) if model.report_matching is not None else None
        )

    def __call__(self, reports) -> np.ndarray:
        if self.inputs is None:
            return mean_cosines(self.model, self.processor, self.images, reports, self.batch_size, self.device)
        vectors = report_vectors(self.model, self.processor, reports)
        return matching_logits(self.model.report_matching, self.inputs, reports, vectors).double().numpy()


@torch.inference_mode()
def mean_cosines(model, processor, images, reports, batch_size: int, device) -> np.ndarray:
    """The mean cosine s of each (image, report) pair: consistency without calibration is (s + 1) / 2."""
    scores = []
    for start in range(0, len(images), batch_size):
        inputs = processor(
            images=images[start : start + batch_size], text=reports[start : start + batch_size], return_tensors="pt"
        ).to(device)
        scores.append(2 * model(**inputs).consistency.double().cpu() - 1)
    return torch.cat(scores).numpy()


def fit_head(args, device) -> dict:
    """Train the report-matching head on --fit_split and save it into --model; what `fit_report_matching` returns."""
    dataset, _ = load_split(args.dataset, args.fit_split)
    if args.max_fit_samples is not None:
        dataset = dataset.select(range(min(args.max_fit_samples, len(dataset))))
    model = TmcaForImageSegmentation.from_pretrained(args.model).to(device).eval()
    processor = TmcaProcessor.from_pretrained(args.model)
    fitted = fit_report_matching(model, processor, list(dataset["image"]), list(dataset["text"]),
                                 hidden_size=args.head_hidden_size, epochs=args.head_epochs, seed=args.seed)
    save_release(model, processor, args.model)
    return {"split": normalize_split_name(args.fit_split), **fitted}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=Path, help="a TMCA save_pretrained folder")
    parser.add_argument("--dataset", required=True, help="dataset source for tmca_hf.data.load_tmca_dataset")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--max_samples", type=int, default=None, help="only the first N images of the split")
    parser.add_argument("--calibrate", action="store_true", help="fit (a, b) and write them into the model's config")
    parser.add_argument("--fit_split", default=None,
                        help="first train a report-matching head on this split of --dataset (e.g. train) and save it "
                             "into --model (tmca_hf.report_matching; 16-bit weights, the rest of the folder kept)")
    parser.add_argument("--max_fit_samples", type=int, default=None, help="only the first N images of --fit_split")
    parser.add_argument("--head_epochs", type=int, default=40)
    parser.add_argument("--head_hidden_size", type=int, default=128)
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
    fitted = fit_head(args, device) if args.fit_split else None
    model = TmcaForImageSegmentation.from_pretrained(args.model).to(device).eval()
    if not model.config.alignment_levels and model.report_matching is None:
        raise SystemExit("consistency_auroc: this model has neither a report-matching head nor alignment levels, "
                         "so it has no consistency score")
    model.config.consistency_calibration = None  # raw s; AUROC does not depend on a monotone calibration
    processor = TmcaProcessor.from_pretrained(args.model)

    others = [reports[index] for index in other_reports(reports, args.seed)]
    swapped = [swap_laterality(text) for text in reports]
    meaning_changed = np.array([report_claims(a) != report_claims(b) for a, b in zip(reports, swapped)])
    text_changed = np.array([normalise_report(a) != normalise_report(b) for a, b in zip(reports, swapped)])

    counted = [wrong_count(text) for text in reports]
    has_count = np.array([text is not None for text in counted])

    raw_scores = RawScores(model, processor, images, args.batch_size, device)
    own, other, swap = raw_scores(reports), raw_scores(others), raw_scores(swapped)
    count = raw_scores([text or own_text for text, own_text in zip(counted, reports)])

    result = {
        "model": str(args.model),
        "split": normalize_split_name(args.split),
        "num_images": len(images),
        "auroc_a": auroc(own, other),
        "auroc_b": auroc(own[meaning_changed], swap[meaning_changed]),
        "num_images_b": int(meaning_changed.sum()),
        "auroc_b_all_changed_texts": auroc(own[text_changed], swap[text_changed]),
        "num_images_b_all_changed_texts": int(text_changed.sum()),
        "auroc_c": auroc(own[has_count], count[has_count]),
        "num_images_c": int(has_count.sum()),
        "score": "report-matching head logit" if raw_scores.inputs is not None else "alignment-space mean cosine",
        "paired_win_rate_a": float((own > other).mean()),
        "paired_win_rate_b": float((own[meaning_changed] > swap[meaning_changed]).mean()),
        "mean_score": {"own": float(own.mean()), "a": float(other.mean()), "b": float(swap[meaning_changed].mean()),
                       "c": float(count[has_count].mean())},
        "seed": args.seed,
        "laterality_swap": SWAP_SOURCE,
    }
    if args.calibrate:
        negatives = np.concatenate([other, swap[meaning_changed], count[has_count]])
        calibration = fit_calibration(own, negatives)
        config = TmcaConfig.from_pretrained(args.model)
        config.consistency_calibration = calibration
        config.save_pretrained(args.model)
        probability = lambda s: 1 / (1 + np.exp(-(calibration[0] * s + calibration[1])))  # noqa: E731
        result["calibration"] = {
            "consistency_calibration": calibration,
            "fit": "torch LBFGS, class-balanced logistic loss; positives own, negatives (a), (b) and (c)",
            "mean_probability": {
                "own": float(probability(own).mean()),
                "a": float(probability(other).mean()),
                "b": float(probability(swap[meaning_changed]).mean()),
                "c": float(probability(count[has_count]).mean()),
            },
            "written_to": str(args.model / "config.json"),
        }
    else:
        stored = TmcaConfig.from_pretrained(args.model).consistency_calibration
        result["calibration"] = {"consistency_calibration": stored}
    if fitted:
        result["report_matching_fit"] = fitted
    result["seconds"] = round(time.perf_counter() - started, 1)
    if args.calibrate or fitted:  # the folder's score changed: keep what it measured beside it, for the Space
        write_record(args.model, CONSISTENCY_AUROC_FILE, result)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
