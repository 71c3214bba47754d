"""The model card a training run writes: the repository's `model_card.md` with the metrics that run just measured."""

import re
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard


RESULTS_START, RESULTS_END = "<!-- measured-results:start -->", "<!-- measured-results:end -->"
METRICS = (("dice_per_image", "Dice (per image)"), ("dice_pooled", "Dice (pooled)"),
           ("iou_per_image", "IoU (per image)"), ("iou_pooled", "IoU (pooled)"))


def results_table(results: list) -> str:
    """A Markdown table of `tmca_hf.evaluation.evaluate` results (percent; HD95 in pixels)."""
    lines = ["| text given | images | Dice per-image | Dice pooled | IoU per-image | IoU pooled | HD95 (px) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for result in results:
        if not result.get("available", True):
            lines.append(f"| {result['text_mode']} | - | not available: {result['error']} | | | | |")
            continue
        hd95 = "n/a" if result["hd95"] is None else f"{result['hd95']:.2f}"
        scores = " | ".join(f"{100 * result[key]:.2f}" for key, _ in METRICS)
        lines.append(f"| {result['text_mode']} | {result['num_images']} | {scores} | {hd95} |")
    return "\n".join(lines)


def _eval_results(results: list, dataset_name: str, split: str) -> list:
    report = next((r for r in results if r["text_mode"] == "report" and r.get("available", True)), None)
    if report is None:
        return []
    return [
        EvalResult(
            task_type="image-segmentation",
            task_name="Language-guided lesion segmentation",
            dataset_type=dataset_name,
            dataset_name=dataset_name,
            dataset_split=split,
            metric_type=key,
            metric_name=f"{name}, validation",
            metric_value=round(100 * report[key], 2),
        )
        for key, name in METRICS
    ]


def write_model_card(path, template, results: list, training_args: dict,
                     measured_by: str = "the training run that wrote this folder") -> Path:
    """Fill the template's results block and `model-index` with `results`, and save the card at `path`."""
    card = ModelCard(Path(template).read_text())
    dataset_name = Path(str(training_args["dataset"])).name or str(training_args["dataset"])
    card.data.eval_results = _eval_results(results, dataset_name, training_args.get("eval_split", "validation"))
    card.data.model_name = Path(str(training_args["output_dir"])).name
    arguments = " ".join(
        f"--{key} {value}" for key, value in training_args.items()
        if key in ("model_name_or_path", "dataset", "num_train_epochs", "image_size", "per_device_train_batch_size",
                   "learning_rate", "seed") and value is not None
    )
    block = (
        f"{RESULTS_START}\nMeasured by {measured_by}, on `{dataset_name}` "
        f"({training_args.get('eval_split', 'validation')} split, each image at its original size, threshold 0.5):\n\n"
        f"{results_table(results)}\n\nTraining arguments (excerpt; all of them are in `training_args.json`): "
        f"`{arguments}`\n{RESULTS_END}"
    )
    pattern = re.compile(re.escape(RESULTS_START) + ".*?" + re.escape(RESULTS_END), re.S)
    if not pattern.search(card.text):
        raise ValueError(f"{template} has no {RESULTS_START} ... {RESULTS_END} block to fill.")
    card.text = pattern.sub(lambda _: block, card.text)
    card.save(path)
    return Path(path)
