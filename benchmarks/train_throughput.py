#!/usr/bin/env python
"""Training throughput of TMCA: the input path of train.py against the per-step PIL path it replaced, in one run.

    python benchmarks/train_throughput.py --device cpu                       # a few steps, under 3 minutes
    python benchmarks/train_throughput.py --device cuda --dataset ../shared/data/qata_cov19 --steps 200

Prints one JSON line: the device, training images/s and the share of step time spent waiting for data for train.py's
path (each split decoded once into memory on the device, the zoom as one batched op there, the frozen text encoder run
once per distinct report), the same for the replaced path (PIL decoding and zoom in DataLoader workers and a text
encoder forward every step), and their ratio. Both train the same TMCA (offline encoders, 224, alignment on) with the
same optimizer and precision (bf16 on a GPU, fp32 on a CPU).
"""

import argparse
import json
import os
import time

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader

from tmca_hf.data import load_tmca_dataset
from tmca_hf.encoders import from_pretrained_encoders
from tmca_hf.training_data import BatchedRandomZoom, DecodedSplit, RandomZoom, TmcaSegmentationCollator


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


def time_training(accelerator, model, batches, steps: int, warmup_steps: int) -> dict:
    """Train `warmup_steps` untimed, then `steps` timed; images/s and the share of time spent fetching batches."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    images, data_wait = 0, 0.0
    for step in range(warmup_steps + steps):
        if step == warmup_steps:
            if accelerator.device.type == "cuda":
                torch.cuda.synchronize()
            images, data_wait, start = 0, 0.0, time.perf_counter()
        fetch_start = time.perf_counter()
        batch = {k: v.to(accelerator.device, non_blocking=True) for k, v in next(batches).items()}
        data_wait += time.perf_counter() - fetch_start
        accelerator.backward(model(**batch).loss)  # prepare() runs the forward in the mixed precision
        optimizer.step()
        optimizer.zero_grad()
        images += len(batch["labels"])
    if accelerator.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"images_per_second": round(images / seconds, 1), "data_wait_fraction": round(data_wait / seconds, 4)}


def main():
    args = parse_args()
    on_gpu = args.device == "cuda"
    batch_size = args.batch_size or (32 if on_gpu else 8)
    steps = args.steps or (100 if on_gpu else 4)
    warmup_steps = args.warmup_steps if args.warmup_steps is not None else (10 if on_gpu else 1)
    num_workers = args.num_workers if args.num_workers is not None else min(4, os.cpu_count() or 1)
    accelerator = Accelerator(cpu=not on_gpu, mixed_precision="bf16" if on_gpu else "no")
    train_set = load_tmca_dataset(args.dataset, splits=["train"])["train"]

    def fresh_model():
        set_seed(0)
        return from_pretrained_encoders(text_encoder=args.text_encoder, image_size=args.image_size, alignment_weight=0.1)

    # train.py's path.
    model, processor = fresh_model()
    started = time.perf_counter()
    decoded = DecodedSplit(train_set, processor, augment=BatchedRandomZoom(len(train_set), seed=0), num_workers=num_workers)
    decoded.to(accelerator.device)
    decode_seconds = time.perf_counter() - started
    model.to(accelerator.device)
    decoded.cache_report_states(model.text_encoder)
    loader = DataLoader(decoded, batch_size=batch_size, shuffle=True, collate_fn=decoded.collate, drop_last=True)
    fast = time_training(accelerator, model, batches_forever(loader, decoded.set_epoch), steps, warmup_steps)

    # The replaced path: PIL decoding and zoom per step in workers, the text encoder every step.
    model, processor = fresh_model()
    loader = DataLoader(
        train_set, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=num_workers,
        collate_fn=TmcaSegmentationCollator(processor, augment=RandomZoom()), persistent_workers=num_workers > 0,
    )
    replaced = time_training(accelerator, model, batches_forever(loader), steps, warmup_steps)

    print(json.dumps({
        "device": torch.cuda.get_device_name() if on_gpu else f"cpu ({torch.get_num_threads()} threads)",
        **fast,
        "decode_seconds_once": round(decode_seconds, 1),
        "train_images": len(train_set),
        "replaced_images_per_second": replaced["images_per_second"],
        "replaced_data_wait_fraction": replaced["data_wait_fraction"],
        "speedup": round(fast["images_per_second"] / replaced["images_per_second"], 2),
        "batch_size": batch_size,
        "image_size": args.image_size,
        "steps": steps,
        "precision": "bf16" if on_gpu else "fp32",
    }))


if __name__ == "__main__":
    main()
