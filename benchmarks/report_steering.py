#!/usr/bin/env python
"""Does the report steer the mask? Each image of a split with a unilateral QaTa-COV19-style report ("... lower left
lung.") is segmented twice: with its report, and with the same report with left and right swapped
(`tmca_hf.modeling.laterality_tmca.swap_laterality`). Sides are the image's, as the training reports name them (left =
x < W / 2).

An image *follows* its report when both hold:
- its predicted lesion lies mostly (more than half its pixels) on the side the report names, and
- the lesion on that side at least halves when the report names the other side (the mask moves or goes).

The same is measured for zone words on the unilateral reports whose one zone is "upper" or "lower": the zone word is
swapped (upper <-> lower) and the halves are the image's top and bottom (y < H / 2). Also reported: the mean shift of
the mask's left-half share (top-half share for zones) between the report and its swapped copy, in the direction the
swap asks for (positive: the mask moves as the words say).

    python benchmarks/report_steering.py --model models/tmca-qata-cov19 --dataset ../shared/data/qata_cov19 --split validation

Prints one JSON line. Goal on the QaTa-COV19 validation split: >= 90 % of unilateral images follow.
"""

import argparse
import json
import re
import statistics

import numpy as np
import torch

from tmca_hf.data import load_split
from tmca_hf.inference import load_model
from tmca_hf.modeling.laterality_tmca import swap_laterality
from tmca_hf.report_folders import parse_qata_report


_ZONE = re.compile(r"\b(upper|lower)\b", re.IGNORECASE)


def swap_zone(report: str) -> str:
    """'upper' <-> 'lower', whole words, case kept."""
    def other(match: re.Match) -> str:
        word = "lower" if match.group(0).lower() == "upper" else "upper"
        return word.capitalize() if match.group(0)[0].isupper() else word

    return _ZONE.sub(other, report)


def cases(reports: list) -> dict:
    """Indices of the unilateral reports by the side they name, and of those whose one zone is upper or lower:
    {"side": [(index, "left"|"right")], "zone": [(index, "upper"|"lower")]}."""
    found = {"side": [], "zone": []}
    for index, report in enumerate(reports):
        parsed = parse_qata_report(report)
        if parsed is None or parsed.laterality != "unilateral" or len(parsed.sides) != 1:
            continue
        side = parsed.sides[0]
        found["side"].append((index, side))
        if parsed.zones[side] in ("upper", "lower"):
            found["zone"].append((index, parsed.zones[side]))
    return found


def share_first_half(mask: np.ndarray, axis: int) -> float | None:
    """The share of the mask's lesion pixels in the first half along `axis` (1: left half, 0: top half); None when
    the mask is empty."""
    total = int(mask.sum())
    if total == 0:
        return None
    half = mask.shape[axis] // 2
    first = mask[:, :half] if axis == 1 else mask[:half]
    return float(first.sum()) / total


def pixels_in_half(mask: np.ndarray, axis: int, first: bool) -> int:
    half = mask.shape[axis] // 2
    part = (mask[:, :half] if first else mask[:, half:]) if axis == 1 else (mask[:half] if first else mask[half:])
    return int(part.sum())


@torch.inference_mode()
def masks_for(model, processor, images: list, reports: list, batch_size: int) -> list:
    masks = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        inputs = processor(images=chunk, text=reports[start : start + batch_size], return_tensors="pt").to(model.device)
        sizes = [(image.height, image.width) for image in chunk]
        predicted = processor.post_process_semantic_segmentation(model(**inputs), target_sizes=sizes)
        masks.extend(mask.cpu().numpy().astype(bool) for mask in predicted)
    return masks


def steering(own: list, swapped: list, named: list, axis: int, first_word: str) -> dict:
    """The figures for one kind of word: `named[i]` is the word image i's report names, `first_word` the word of
    the first half along `axis` ("left" for sides, "upper" for zones)."""
    mostly, halves, shifts = [], [], []
    for mask, other, word in zip(own, swapped, named):
        first = word == first_word
        on_named = pixels_in_half(mask, axis, first)
        mostly.append(mask.sum() > 0 and on_named > mask.sum() / 2)
        halves.append(pixels_in_half(other, axis, first) <= on_named / 2 if on_named else False)
        before, after = share_first_half(mask, axis), share_first_half(other, axis)
        if before is not None and after is not None:
            shifts.append((before - after) if first else (after - before))
    follows = [m and h for m, h in zip(mostly, halves)]
    count = len(named)
    return {
        "images": count,
        "follow": round(sum(follows) / count, 4) if count else None,
        "mostly_on_named_half": round(sum(mostly) / count, 4) if count else None,
        "halves_when_swapped": round(sum(halves) / count, 4) if count else None,
        "mean_share_shift": round(statistics.fmean(shifts), 4) if shifts else None,
        "images_with_both_masks_nonempty": len(shifts),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder or Hub id")
    parser.add_argument("--dataset", required=True, help="a dataset load_tmca_dataset reads (QaTa-COV19-style reports)")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--max_samples", type=int, default=None, help="only the first N images of the split")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()

    split, _ = load_split(args.dataset, args.split)
    if args.max_samples:
        split = split.select(range(min(args.max_samples, len(split))))
    found = cases(list(split["text"]))
    if not found["side"]:
        raise SystemExit(f"{args.dataset} ({args.split}) has no unilateral QaTa-COV19-style reports to steer with.")
    model, processor = load_model(args.model, device=args.device)
    result = {"model": args.model, "dataset": args.dataset, "split": args.split, "split_images": len(split)}
    for kind, swap, axis, first_word in (("side", swap_laterality, 1, "left"), ("zone", swap_zone, 0, "upper")):
        indices = [index for index, _ in found[kind]]
        if not indices:
            result[kind] = {"images": 0}
            continue
        rows = split.select(indices)
        images, reports = list(rows["image"]), list(rows["text"])
        own = masks_for(model, processor, images, reports, args.batch_size)
        swapped = masks_for(model, processor, images, [swap(report) for report in reports], args.batch_size)
        result[kind] = steering(own, swapped, [word for _, word in found[kind]], axis, first_word)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
