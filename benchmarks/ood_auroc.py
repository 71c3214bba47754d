#!/usr/bin/env python
"""Is the image one the model knows? `outputs.ood_score` fitted on a training split and measured against images of
other kinds.

    python benchmarks/ood_auroc.py --model models/tmca-qata-cov19 --dataset ../shared/data/qata_cov19 \
        --other ../shared/data/kvasir_seg [--write]

Fits the image statistics on the `--fit_split` (default train) of `--dataset` (`tmca_hf.image_checks`), then scores
its `--split` (default validation) and, as images the model should not vouch for: the `--split` of each `--other`
dataset, 32 crops of scikit-learn's two sample photos (china.jpg, flower.jpg), and 64 images of uniform random
noise. Prints one JSON line: the threshold, the share of the in-distribution split flagged (goal <= 1 %), and the
AUROC between the in-distribution split and each kind of other image (goal >= 0.99; scipy's Mann-Whitney U / n1 n2).
With --write, the statistics and `config.ood_threshold` are saved into the model folder (`tmca_hf.hub.save_release`:
16-bit weights, the rest of the folder kept) and the printed line kept beside them as `ood_auroc.json`.
"""

import argparse
import json

import numpy as np
import torch
from PIL import Image
from scipy.stats import mannwhitneyu

from tmca_hf.data import load_split
from tmca_hf.fit_checks import OOD_AUROC_FILE, write_record
from tmca_hf.hub import save_release
from tmca_hf.image_checks import fit_image_statistics
from tmca_hf.inference import load_model


def sample_photo_crops(count: int = 32, seed: int = 0) -> list:
    """Square crops (a quarter to all of the short side) of scikit-learn's sample photos."""
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    photos = load_sample_images().images
    crops = []
    for index in range(count):
        photo = photos[index % len(photos)]
        height, width = photo.shape[:2]
        side = int(rng.integers(min(height, width) // 4, min(height, width) + 1))
        top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
        crops.append(Image.fromarray(photo[top : top + side, left : left + side]))
    return crops


def noise_images(count: int = 64, size: int = 224, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)) for _ in range(count)]


@torch.inference_mode()
def ood_scores(model, processor, images, batch_size: int) -> np.ndarray:
    scores = []
    for start in range(0, len(images), batch_size):
        inputs = processor(images=images[start : start + batch_size], return_tensors="pt").to(model.device)
        scores.append(model(**inputs).ood_score.cpu())
    return torch.cat(scores).numpy()


def auroc(higher: np.ndarray, lower: np.ndarray) -> float:
    """P(an image of another kind scores above an in-distribution one)."""
    return float(mannwhitneyu(higher, lower).statistic / (len(higher) * len(lower)))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder (or Hub id, without --write)")
    parser.add_argument("--dataset", required=True, help="the model's training data (load_tmca_dataset reads it)")
    parser.add_argument("--fit_split", default="train")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--other", nargs="*", default=[], help="datasets of another kind (their --split is scored)")
    parser.add_argument("--quantile", type=float, default=0.995, help="share of training images below the threshold")
    parser.add_argument("--max_fit_samples", type=int, default=None)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--write", action="store_true", help="save the statistics and threshold into --model")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()

    model, processor = load_model(args.model, device=args.device)
    fit_split, _ = load_split(args.dataset, args.fit_split)
    if args.max_fit_samples:
        fit_split = fit_split.select(range(min(args.max_fit_samples, len(fit_split))))
    fitted = fit_image_statistics(model, processor, list(fit_split["image"]), args.quantile, batch_size=args.batch_size)
    inside = ood_scores(model, processor, list(load_split(args.dataset, args.split)[0]["image"]), args.batch_size)
    others = {f"{source.rstrip('/').split('/')[-1]}_{args.split}": list(load_split(source, args.split)[0]["image"])
              for source in args.other}
    others |= {"sample_photos": sample_photo_crops(), "uniform_noise": noise_images()}
    result = {
        "model": args.model, "fit": {"dataset": args.dataset, "split": args.fit_split, **fitted},
        "in_distribution": {"split": args.split, "images": len(inside),
                            "flagged_share": round(float((inside > fitted["threshold"]).mean()), 4),
                            "median_score": round(float(np.median(inside)), 3)},
    }
    for name, images in others.items():
        scores = ood_scores(model, processor, images, args.batch_size)
        result[name] = {"images": len(images), "auroc": round(auroc(scores, inside), 4),
                        "flagged_share": round(float((scores > fitted["threshold"]).mean()), 4),
                        "median_score": round(float(np.median(scores)), 3)}
    if args.write:
        save_release(model, processor, args.model)
        write_record(args.model, OOD_AUROC_FILE, result)  # what the Space shows beside the check
    print(json.dumps(result))


if __name__ == "__main__":
    main()
