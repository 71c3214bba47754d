#!/usr/bin/env python
"""Summarise a folder of runs (benchmarks/qata_ablation.sh, or benchmarks/gpu/score.py for the GPU campaign): one row
per configuration and dataset, mean +- sd over seeds.

    python benchmarks/ablation_table.py OUT_DIR [--compare tmca baseline]

Each run's numbers are its final evaluation (`eval_results.json`: the model selected by per-epoch validation Dice,
re-measured in float32 on the full validation split at each image's original size, the protocol of the method notes),
so every row is measured the same way: with its own report (Dice and IoU per image and pooled, HD95), and Dice per
image with another image's report (shuffled) and with none (empty; only for models trained with text dropout). A run
trained on several datasets gives one row per dataset. `--compare A B` says whether A's mean Dice per image differs
from B's by more than the seed spread (the larger of the two standard deviations).
"""

import argparse
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path


METRICS = ("dice_per_image", "dice_pooled", "iou_per_image", "iou_pooled", "hd95")


def run_rows(run: Path) -> dict:
    """{dataset: numbers} of one run's eval_results.json."""
    results = json.loads((run / "eval_results.json").read_text())
    args_file = run / "training_args.json"
    trained_on = json.loads(args_file.read_text())["dataset"] if args_file.is_file() else "-"
    default = Path(trained_on).name if isinstance(trained_on, str) else "-"
    rows = defaultdict(dict)
    for result in results["evaluation"]:
        if not result.get("available", True):
            continue
        row = rows[result.get("dataset", default)]
        if result["text_mode"] == "report":
            row.update({key: result[key] for key in METRICS}, images=result["num_images"], epoch=results["best"]["epoch"])
        else:
            row[f"dice_{result['text_mode']}"] = result["dice_per_image"]
    return {dataset: row for dataset, row in rows.items() if "dice_per_image" in row}


def cell(values: list, scale: float) -> str:
    values = [scale * value for value in values if value is not None]
    if not values:
        return "n/a"
    mean = statistics.mean(values)
    return f"{mean:.2f} +- {statistics.stdev(values):.2f}" if len(values) > 1 else f"{mean:.2f}"


def collect(folder: Path) -> dict:
    rows = defaultdict(list)
    for results in sorted(folder.glob("*/eval_results.json")):
        configuration = re.sub(r"-seed\d+$", "", results.parent.name)
        for dataset, row in run_rows(results.parent).items():
            rows[(configuration, dataset)].append(row)
    return rows


def comparison(rows: dict, a: str, b: str) -> list:
    lines = []
    for (configuration, dataset), runs_a in sorted(rows.items()):
        runs_b = rows.get((b, dataset))
        if configuration != a or not runs_b:
            continue
        dice_a = [100 * run["dice_per_image"] for run in runs_a]
        dice_b = [100 * run["dice_per_image"] for run in runs_b]
        difference = statistics.mean(dice_a) - statistics.mean(dice_b)
        if min(len(dice_a), len(dice_b)) < 2:
            lines.append(f"{a} - {b} on {dataset}: {difference:+.2f} Dice per image (one seed: no spread to compare)")
            continue
        spread = max(statistics.stdev(dice_a), statistics.stdev(dice_b))
        verdict = "more than" if abs(difference) > spread else "within"
        lines.append(f"{a} - {b} on {dataset}: {difference:+.2f} Dice per image over {len(dice_a)} and {len(dice_b)} "
                     f"seeds; seed sd {statistics.stdev(dice_a):.2f} and {statistics.stdev(dice_b):.2f}: {verdict} "
                     f"the seed spread")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), default=None)
    args = parser.parse_args(argv)
    rows = collect(args.folder)
    print("| configuration | dataset | seeds | images | Dice per-image | Dice pooled | IoU per-image | IoU pooled | "
          "HD95 (px) | Dice, shuffled report | Dice, no report | best epochs |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for (name, dataset), runs in sorted(rows.items()):
        cells = [cell([run[key] for run in runs], 1 if key == "hd95" else 100) for key in METRICS]
        cells += [cell([run.get(f"dice_{mode}") for run in runs], 100) for mode in ("shuffled", "empty")]
        epochs = ", ".join(str(run["epoch"]) for run in runs)
        print(f"| {name} | {dataset} | {len(runs)} | {runs[0]['images']} | {' | '.join(cells)} | {epochs} |")
    if args.compare:
        print()
        print("\n".join(comparison(rows, *args.compare)) or f"no common dataset for {args.compare}")


if __name__ == "__main__":
    main()
