#!/usr/bin/env python
"""Summarise an ablation folder written by benchmarks/qata_ablation.sh: one row per configuration, mean +- sd over seeds.

    python benchmarks/ablation_table.py OUT_DIR

Each run's best epoch (by validation per-image Dice, as train.py selects) gives its per-image and pooled Dice and IoU on
the full validation split at the model's resolution, read from the run's train_log.jsonl.
"""

import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

METRICS = ("dice_per_image", "dice_pooled", "iou_per_image", "iou_pooled")


def best_epoch(log: Path) -> dict:
    records = [json.loads(line) for line in log.read_text().splitlines()]
    return max(records, key=lambda record: record["dice_per_image"]) | {"epochs_run": len(records)}


def main(folder: str):
    rows = defaultdict(list)
    for log in sorted(Path(folder).glob("*/train_log.jsonl")):
        name = log.parent.name
        rows[re.sub(r"-seed\d+$", "", name)].append(best_epoch(log) | {"run": name})
    print("| configuration | seeds | epochs | Dice per-image | Dice pooled | IoU per-image | IoU pooled | train images/s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, runs in sorted(rows.items()):
        cells = []
        for key in METRICS:
            values = [100 * run[key] for run in runs]
            spread = f" +- {statistics.stdev(values):.2f}" if len(values) > 1 else ""
            cells.append(f"{statistics.mean(values):.2f}{spread}")
        epochs = "/".join(str(run["epochs_run"]) for run in runs)
        speed = statistics.mean(run["images_per_second"] for run in runs)
        print(f"| {name} | {len(runs)} | {epochs} | {' | '.join(cells)} | {speed:.0f} |")
    print(json.dumps({name: runs for name, runs in rows.items()}), file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1])
