#!/usr/bin/env python
"""Summarise an ablation folder written by benchmarks/qata_ablation.sh: one row per configuration, mean +- sd over seeds.

    python benchmarks/ablation_table.py OUT_DIR

Each run's numbers are its final evaluation (train.py's `eval_results.json`: the model selected by per-epoch validation
Dice, re-measured in float32 on the full validation split at each image's original size with its own report, the
protocol of the method notes), so every row is measured the same way.
"""

import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path


METRICS = ("dice_per_image", "dice_pooled", "iou_per_image", "iou_pooled", "hd95")


def report_evaluation(run: Path) -> dict:
    results = json.loads((run / "eval_results.json").read_text())
    evaluation = next(result for result in results["evaluation"] if result["text_mode"] == "report")
    return {key: evaluation[key] for key in METRICS} | {"epoch": results["best"]["epoch"], "images": evaluation["num_images"]}


def cell(values: list, scale: float) -> str:
    mean = statistics.mean(scale * value for value in values)
    return f"{mean:.2f} +- {statistics.stdev(scale * value for value in values):.2f}" if len(values) > 1 else f"{mean:.2f}"


def main(folder: str):
    rows = defaultdict(list)
    for results in sorted(Path(folder).glob("*/eval_results.json")):
        rows[re.sub(r"-seed\d+$", "", results.parent.name)].append(report_evaluation(results.parent))
    print("| configuration | seeds | images | Dice per-image | Dice pooled | IoU per-image | IoU pooled | HD95 (px) | best epochs |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, runs in sorted(rows.items()):
        cells = [cell([run[key] for run in runs], 1 if key == "hd95" else 100) for key in METRICS]
        epochs = ", ".join(str(run["epoch"]) for run in runs)
        print(f"| {name} | {len(runs)} | {runs[0]['images']} | {' | '.join(cells)} | {epochs} |")


if __name__ == "__main__":
    main(sys.argv[1])
