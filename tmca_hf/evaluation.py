"""Evaluation of a TMCA model on a dataset split, following the protocol of the method notes (section 8).

Every image is scored at its original size (predictions are resized back with `target_sizes`, then thresholded)
against its original mask, with per-image and pooled Dice/IoU and HD95 (`tmca_hf.metrics`). Three text modes show
how much the model relies on the report:

- `report`: each image with its own report;
- `shuffled`: each image with another image's report (a fixed-seed derangement);
- `empty`: no report at all (`text=None`), for models that can segment without one.

Command line: `tmca-evaluate --model PATH_OR_HUB_ID --dataset SOURCE [--split validation] ...` (see `main`).
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from .data import load_split, normalize_split_name, skipped_message
from .inference import load_model
from .metrics import SegmentationMetrics
from .modeling.imaging_tmca import binary_mask


TEXT_MODES = ("report", "shuffled", "empty")


def derangement(size: int, seed: int = 0) -> list[int]:
    """A random permutation of range(size) with no fixed point (no index keeps its place), fixed by `seed`."""
    if size < 2:
        raise ValueError(f"a derangement needs at least 2 items, got {size}: shuffled reports need 2 or more images")
    rng = np.random.default_rng(seed)
    while True:  # about e (2.72) draws on average
        permutation = rng.permutation(size)
        if not (permutation == np.arange(size)).any():
            return permutation.tolist()


def normalise_report(text: str) -> str:
    """A report compared by its words: lower case, single spaces, no final full stop."""
    return " ".join(text.lower().split()).rstrip(".")


def _check_dataset(dataset, text_mode: str) -> None:
    required = ["image", "mask", "id"] + (["text"] if text_mode != "empty" else [])
    missing = [column for column in required if column not in dataset.column_names]
    if missing:
        raise ValueError(
            f"the dataset lacks the column(s) {missing}; expected columns image, mask, text and id "
            f"(see tmca_hf.data.load_tmca_dataset), got {dataset.column_names}"
        )
    if len(dataset) == 0:
        raise ValueError("the dataset split is empty: nothing to evaluate")


def _reports(dataset, text_mode: str, seed: int) -> tuple[Optional[list[str]], dict[str, Any]]:
    """The report given to each image for `text_mode`, and notes for the result."""
    if text_mode == "empty":
        return None, {}
    reports = list(dataset["text"])
    if text_mode == "report":
        return reports, {}
    order = derangement(len(reports), seed)
    shuffled = [reports[source] for source in order]
    identical = sum(normalise_report(a) == normalise_report(b) for a, b in zip(reports, shuffled))
    # Reports repeat (e.g. QaTa-COV19), so some images get a text identical to their own from another image.
    return shuffled, {"shuffle_seed": seed, "identical_texts_after_shuffle": identical}


def evaluate(
    model,
    processor,
    dataset,
    *,
    batch_size: int = 8,
    threshold: float = 0.5,
    text_mode: str = "report",
    seed: int = 0,
    device: Optional[Union[str, torch.device]] = None,
) -> dict[str, Any]:
    """Scores `model` on a `datasets.Dataset` split with columns image, mask, text and id.

    Args:
        model: a `TmcaForImageSegmentation` (or any model taking the processor's outputs and returning logits).
        processor: the matching `TmcaProcessor`.
        dataset: the split to score; masks are binary images (0/255 or 0/1) of the same size as their images.
        batch_size: images per forward pass.
        threshold: probability above which a pixel is lesion.
        text_mode: `"report"`, `"shuffled"` (another image's report, a derangement fixed by `seed`) or `"empty"`.
        seed: seed of the shuffled mode.
        device: where to run; the model is moved there. Defaults to the model's device.

    Returns:
        A JSON-ready dict: text_mode, threshold, available, the metrics of `SegmentationMetrics.compute` and
        per_image records. For `shuffled`, also shuffle_seed and identical_texts_after_shuffle (images whose new
        report reads the same as their own, because reports repeat). For `empty` with a model that needs a report,
        available is False and error says why; nothing is run then.
    """
    if text_mode not in TEXT_MODES:
        raise ValueError(f"text_mode must be one of {TEXT_MODES}, got {text_mode!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be a probability in (0, 1), got {threshold}")
    _check_dataset(dataset, text_mode)
    result: dict[str, Any] = {"text_mode": text_mode, "threshold": threshold}
    if text_mode == "empty" and not model.config.supports_text_free_inference:
        return {
            **result,
            "available": False,
            "error": (
                "this model cannot segment without a report: config.use_text is True and config.text_dropout is 0 "
                "(it was not trained with a null text), so the 'empty' text mode was skipped"
            ),
        }
    reports, notes = _reports(dataset, text_mode, seed)

    if device is not None:
        model.to(device)
    device = next(model.parameters()).device
    metrics = SegmentationMetrics()
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(dataset), batch_size):
                batch = dataset[start : start + batch_size]
                images = batch["image"]  # PIL images at their original sizes
                targets = [binary_mask(mask, f"mask of image {id_!r}") for mask, id_ in zip(batch["mask"], batch["id"])]
                sizes = [(image.height, image.width) for image in images]
                for size, target, image_id in zip(sizes, targets, batch["id"]):
                    if tuple(target.shape) != size:
                        raise ValueError(
                            f"mask of image {image_id!r} is {target.shape[0]}x{target.shape[1]} but the image is "
                            f"{size[0]}x{size[1]} (height x width): they must match"
                        )
                text = reports[start : start + len(images)] if reports is not None else None
                inputs = processor(images=images, text=text, return_tensors="pt").to(device)
                outputs = model(**inputs)
                predictions = processor.post_process_semantic_segmentation(
                    outputs, target_sizes=sizes, threshold=threshold
                )
                metrics.update(predictions, targets, ids=batch["id"])
    finally:
        model.train(was_training)
    return {**result, "available": True, **notes, **metrics.compute(), "per_image": metrics.per_image_records()}


REPORT_MATTERS_BELOW = 0.005  # Dice (per image and pooled) moving less than this with a wrong report: text ignored


def _report_barely_matters(shuffled: dict[str, Any], results: Sequence[dict[str, Any]]) -> bool:
    """Whether the real-report row of the same dataset scored within `REPORT_MATTERS_BELOW` of the shuffled one."""
    keys = ("dice_per_image", "dice_pooled")
    return any(
        other["text_mode"] == "report" and other.get("available") and other.get("dataset") == shuffled.get("dataset")
        and all(abs(other[key] - shuffled[key]) < REPORT_MATTERS_BELOW for key in keys)
        for other in results
    )


def format_table(results: Sequence[dict[str, Any]]) -> str:
    """A compact text table of `evaluate` results: Dice and IoU in percent, HD95 in pixels."""
    header = (
        f"{'text mode':<10} {'images':>6} {'Dice img':>8} {'IoU img':>8} {'Dice pool':>9} {'IoU pool':>8} "
        f"{'HD95 px':>8}  HD95 over"
    )
    lines = [header, "-" * len(header)]
    for result in results:
        if not result["available"]:
            lines.append(f"{result['text_mode']:<10} not available: {result['error']}")
            continue
        hd95 = f"{result['hd95']:8.2f}" if result["hd95"] is not None else f"{'n/a':>8}"
        lines.append(
            f"{result['text_mode']:<10} {result['num_images']:>6} {100 * result['dice_per_image']:8.2f} "
            f"{100 * result['iou_per_image']:8.2f} {100 * result['dice_pooled']:9.2f} "
            f"{100 * result['iou_pooled']:8.2f} {hd95}  {result['hd95_images']} images "
            f"({result['hd95_excluded']} with an empty mask left out)"
        )
        if result["text_mode"] == "shuffled" and _report_barely_matters(result, results):
            lines.append(
                f"{'':<10} the report and shuffled rows differ by under {100 * REPORT_MATTERS_BELOW:g} Dice points: this "
                "model barely uses its reports (a short run, such as the README's sample job, has not learnt to yet)"
            )
        if "identical_texts_after_shuffle" in result:
            lines.append(
                f"{'':<10} shuffled: {result['identical_texts_after_shuffle']} of {result['num_images']} images "
                "still got a text identical to their own (reports repeat)"
            )
    return "\n".join(lines)


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="tmca-evaluate",
        description="Evaluate a TMCA model on a dataset split: per-image and pooled Dice/IoU and HD95, at each "
        "image's original size, with the true, shuffled or no report.",
    )
    parser.add_argument("--model", required=True, help="model folder or Hub id (loaded with trust_remote_code=True)")
    parser.add_argument("--dataset", required=True, help="dataset source for tmca_hf.data.load_tmca_dataset")
    parser.add_argument("--split", default="validation", help="split to evaluate (default: validation)")
    parser.add_argument("--prompt_key", default="p6", help="report prompt of medvlsm-layout datasets (default: p6)")
    parser.add_argument("--skip_invalid", action="store_true", help="leave out (and list) invalid examples")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--text_modes", nargs="+", choices=TEXT_MODES, default=list(TEXT_MODES))
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffled text mode")
    parser.add_argument("--max_samples", type=int, default=None, help="evaluate only the first N images")
    parser.add_argument("--device", default=None, help="e.g. cpu or cuda (default: cuda when available)")
    parser.add_argument("--output_json", type=Path, default=None, help="write the results, per-image records too")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output_json")
    args = parser.parse_args(argv)
    if args.output_json is not None and args.output_json.exists() and not args.overwrite:
        parser.error(f"{args.output_json} exists; pass --overwrite to replace it")
    if args.max_samples is not None and args.max_samples < 1:
        parser.error(f"--max_samples must be at least 1, got {args.max_samples}")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of `tmca-evaluate`: prints a table of the results and writes them to --output_json. Returns 0, or
    2 after a one-line error (an invalid dataset, a missing model or file)."""
    args = _parse_args(argv)
    try:
        _run(args)
    except (ValueError, OSError) as error:
        print(f"tmca-evaluate: error: {error}", file=sys.stderr)
        return 2
    return 0


def _run(args: argparse.Namespace) -> None:
    dataset, skipped = load_split(args.dataset, args.split, prompt_key=args.prompt_key, skip_invalid=args.skip_invalid)
    if skipped:
        print(f"tmca-evaluate: {skipped_message(skipped)}", file=sys.stderr)
    if args.max_samples is not None:
        dataset = dataset.select(range(min(args.max_samples, len(dataset))))
    model, processor = load_model(args.model, device=args.device)

    results = [
        evaluate(
            model,
            processor,
            dataset,
            batch_size=args.batch_size,
            threshold=args.threshold,
            text_mode=text_mode,
            seed=args.seed,
        )
        for text_mode in args.text_modes
    ]
    split = normalize_split_name(args.split)
    print(f"{args.model} on {args.dataset} [{split}], threshold {args.threshold}"
          + (f", {len(skipped)} invalid example(s) skipped" if skipped else ""))
    print(format_table(results))
    if args.output_json is not None:
        report = {
            "model": args.model,
            "dataset": args.dataset,
            "split": split,
            "prompt_key": args.prompt_key,
            "max_samples": args.max_samples,
            "skipped": [str(problem) for problem in skipped],
            "results": {result["text_mode"]: result for result in results},
        }
        args.output_json.parent.mkdir(parents=True, exist_ok=True)
        args.output_json.write_text(json.dumps(report, indent=2, allow_nan=False))
        print(f"wrote {args.output_json}")


if __name__ == "__main__":
    sys.exit(main())
