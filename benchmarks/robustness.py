#!/usr/bin/env python
"""How much a model's per-image Dice depends on how an image was saved: each validation image as the dataset holds it
(PNG), as a JPEG at quality 80, and with +-1 gray level of noise (each pixel moved up or down by one 8-bit level, or
left, uniformly at random), scored the same way (`tmca_hf.evaluation.evaluate`: each image at its original size,
its own report, threshold 0.5).

    python benchmarks/robustness.py --model models/tmca-qata-cov19 --dataset ../shared/data/qata_cov19 --split validation

Prints one JSON line: Dice per image for each copy, and per copy the mean and the standard deviation over images of
the change of each image's Dice from its PNG's (points, x100). Goal for a release: sd of the change <= 3 points.
"""

import argparse
import io
import json
import statistics

import numpy as np
from PIL import Image

from tmca_hf.data import load_tmca_dataset
from tmca_hf.evaluation import evaluate
from tmca_hf.inference import load_model


def as_jpeg(image: Image.Image, quality: int = 80) -> Image.Image:
    """The image saved as a JPEG and read back (8-bit gray or RGB, as a JPEG can hold)."""
    buffer = io.BytesIO()
    image.convert("L" if image.mode in ("L", "I", "I;16", "F", "1") else "RGB").save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).copy()


def with_gray_level_noise(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Each 8-bit value moved by -1, 0 or +1 (uniformly), clipped to 0..255."""
    pixels = np.asarray(image.convert("L" if image.mode != "RGB" else "RGB"), np.int16)
    return Image.fromarray(np.clip(pixels + rng.integers(-1, 2, pixels.shape), 0, 255).astype(np.uint8))


def per_image_dice(model, processor, dataset, batch_size: int) -> dict:
    result = evaluate(model, processor, dataset, batch_size=batch_size, text_mode="report")
    return {record["id"]: record["dice"] for record in result["per_image"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder or Hub id")
    parser.add_argument("--dataset", required=True, help="a dataset load_tmca_dataset reads")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--prompt_key", default="p6", help="report prompt of medvlsm-layout datasets")
    parser.add_argument("--max_samples", type=int, default=None, help="only the first N images")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0, help="seed of the gray-level noise")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()

    split = load_tmca_dataset(args.dataset, splits=[args.split], prompt_key=args.prompt_key)[args.split]
    if args.max_samples:
        split = split.select(range(min(args.max_samples, len(split))))
    model, processor = load_model(args.model, device=args.device)
    rng = np.random.default_rng(args.seed)
    copies = {
        "png": split,
        "jpeg_q80": split.map(lambda row: {"image": as_jpeg(row["image"])}),
        "gray_level_noise": split.map(lambda row: {"image": with_gray_level_noise(row["image"], rng)}),
    }
    dice = {name: per_image_dice(model, processor, copy, args.batch_size) for name, copy in copies.items()}
    summary = {"model": args.model, "dataset": args.dataset, "split": args.split, "images": len(split)}
    summary["dice_per_image"] = {name: round(100 * statistics.fmean(scores.values()), 2) for name, scores in dice.items()}
    for name in ("jpeg_q80", "gray_level_noise"):
        changes = [100 * (dice[name][image_id] - dice["png"][image_id]) for image_id in dice["png"]]
        summary[f"{name}_change"] = {"mean": round(statistics.fmean(changes), 2), "sd": round(statistics.pstdev(changes), 2)}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
