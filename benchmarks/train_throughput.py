#!/usr/bin/env python
"""Training throughput of TMCA: train.py's input path in float32 and in bf16 autocast, against the per-step PIL path
it replaced, in one run.

    python benchmarks/train_throughput.py --device cpu                       # a few steps, a few minutes
    python benchmarks/train_throughput.py --device cuda --dataset ../shared/data/qata_cov19 --steps 200

Prints one JSON line: the device, training images/s and the share of step time spent waiting for data for train.py's
path (each split decoded once into memory on the device, the zoom and appearance augmentation as batched ops there,
the frozen text encoder run once per distinct report) in float32 and in bf16 autocast (what `--mixed_precision bf16`
runs; on a CPU with AVX-512 BF16 oneDNN runs bf16 convolutions and matmuls natively), the same for the replaced path
(PIL decoding and zoom in DataLoader workers and a text encoder forward every step, in the device's usual precision:
bf16 on a GPU, fp32 on a CPU), and the ratios. All train the same TMCA (offline encoders, 224, alignment on,
channels-last) with the same optimizer, on the machine's default thread count.
"""

import argparse
import json
import os
import time

import torch
from accelerate.utils import set_seed
from torch.utils.data import DataLoader

from tmca_hf.data import load_tmca_dataset
from tmca_hf.encoders import from_pretrained_encoders
from tmca_hf.training_data import (
    BatchedAppearance,
    BatchedRandomZoom,
    DecodedSplit,
    RandomZoom,
    TmcaSegmentationCollator,
)


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], required=True)
    parser.add_argument("--dataset", default=os.path.join(REPO_ROOT, "samples", "qata_cov19"))
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--text_encoder", default="all-minilm-l6-v2", help="As train.py's --text_encoder.")
    parser.add_argument("--batch_size", type=int, default=None, help="Default: 32 on a GPU, 8 on a CPU.")
    parser.add_argument("--steps", type=int, default=None, help="Timed steps per path; default 100 on a GPU, 4 on a CPU.")
    parser.add_argument("--warmup_steps", type=int, default=None, help="Untimed steps first; default 10 / 1.")
    parser.add_argument("--num_workers", type=int, default=None,
                        help="Decoding processes (the replaced path's DataLoader workers); default: up to 4.")
    return parser.parse_args()


def batches_forever(dataloader, on_epoch=None):
    epoch = 0
    while True:
        if on_epoch is not None:
            on_epoch(epoch)
        yield from dataloader
        epoch += 1


def time_training(device, model, batches, steps: int, warmup_steps: int, bf16: bool) -> dict:
    """Train `warmup_steps` untimed, then `steps` timed; images/s and the share of time spent fetching batches."""
    model.to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    images, data_wait = 0, 0.0
    for step in range(warmup_steps + steps):
        if step == warmup_steps:
            synchronize(device)
            images, data_wait, start = 0, 0.0, time.perf_counter()
        fetch_start = time.perf_counter()
        batch = {k: v.to(device, non_blocking=True) for k, v in next(batches).items()}
        data_wait += time.perf_counter() - fetch_start
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):  # as Accelerate's mixed precision
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        images += len(batch["labels"])
    synchronize(device)
    seconds = time.perf_counter() - start
    return {"images_per_second": round(images / seconds, 1), "data_wait_fraction": round(data_wait / seconds, 4)}


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main():
    args = parse_args()
    on_gpu = args.device == "cuda"
    batch_size = args.batch_size or (32 if on_gpu else 8)
    steps = args.steps or (100 if on_gpu else 4)
    warmup_steps = args.warmup_steps if args.warmup_steps is not None else (10 if on_gpu else 1)
    num_workers = args.num_workers if args.num_workers is not None else min(4, os.cpu_count() or 1)
    device = torch.device(args.device)
    train_set = load_tmca_dataset(args.dataset, splits=["train"])["train"]

    def fresh_model():
        set_seed(0)
        return from_pretrained_encoders(text_encoder=args.text_encoder, image_size=args.image_size, alignment_weight=0.1)

    # train.py's path, in float32 and in bf16 autocast.
    _, processor = fresh_model()
    started = time.perf_counter()
    augment = [
        BatchedRandomZoom(len(train_set), seed=0),
        BatchedAppearance(len(train_set), 0, processor.image_processor.image_mean, processor.image_processor.image_std),
    ]
    decoded = DecodedSplit(train_set, processor, augment=augment, num_workers=num_workers)
    decoded.to(device)
    decode_seconds = time.perf_counter() - started
    fast = {}
    for precision in ("fp32", "bf16"):
        model, _ = fresh_model()
        decoded.cache_report_states(model.to(device))
        loader = DataLoader(decoded, batch_size=batch_size, shuffle=True, collate_fn=decoded.collate, drop_last=True)
        fast[precision] = time_training(
            device, model, batches_forever(loader, decoded.set_epoch), steps, warmup_steps, bf16=precision == "bf16"
        )

    # The replaced path: PIL decoding and zoom per step in workers, the text encoder every step.
    model, processor = fresh_model()
    loader = DataLoader(
        train_set, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=num_workers,
        collate_fn=TmcaSegmentationCollator(processor, augment=RandomZoom()), persistent_workers=num_workers > 0,
    )
    replaced = time_training(device, model, batches_forever(loader), steps, warmup_steps, bf16=on_gpu)

    print(json.dumps({
        "device": torch.cuda.get_device_name() if on_gpu else f"cpu ({torch.get_num_threads()} threads)",
        "fp32_images_per_second": fast["fp32"]["images_per_second"],
        "fp32_data_wait_fraction": fast["fp32"]["data_wait_fraction"],
        "bf16_images_per_second": fast["bf16"]["images_per_second"],
        "bf16_data_wait_fraction": fast["bf16"]["data_wait_fraction"],
        "bf16_over_fp32": round(fast["bf16"]["images_per_second"] / fast["fp32"]["images_per_second"], 2),
        "decode_seconds_once": round(decode_seconds, 1),
        "train_images": len(train_set),
        "replaced_precision": "bf16" if on_gpu else "fp32",
        "replaced_images_per_second": replaced["images_per_second"],
        "replaced_data_wait_fraction": replaced["data_wait_fraction"],
        "speedup_over_replaced": round(fast["bf16" if on_gpu else "fp32"]["images_per_second"] / replaced["images_per_second"], 2),
        "batch_size": batch_size,
        "image_size": args.image_size,
        "steps": steps,
    }))


if __name__ == "__main__":
    main()
