#!/usr/bin/env python
"""Training throughput of TMCA: train.py's input path in float32 and in bf16 autocast, against the per-step PIL path
it replaced, and train.py's CUDA fast path (--torch_compile --fused_adamw), in one run.

    python benchmarks/train_throughput.py --device cpu                       # a few steps, a few minutes
    python benchmarks/train_throughput.py --device cuda --dataset ../shared/data/qata_cov19 --steps 200
    python benchmarks/train_throughput.py --device cuda --rows bf16 fast --release_config --compile_mode reduce-overhead

Prints one JSON line: the device, training images/s and the share of step time spent waiting for data for train.py's
path (each split decoded once into memory on the device, the zoom and appearance augmentation as batched ops there,
the frozen text encoder run once per distinct report) in float32 and in bf16 autocast (what `--mixed_precision bf16`
runs; on a CPU with AVX-512 BF16 oneDNN runs bf16 convolutions and matmuls natively), the same for the replaced path
(PIL decoding and zoom in DataLoader workers and a text encoder forward every step, in the device's usual precision:
bf16 on a GPU, fp32 on a CPU), and the ratios. All train the same TMCA (offline encoders, 224, alignment on,
channels-last) with the same optimizer, on the machine's default thread count.

The fast row (`--device cuda` only) is train.py's `--mixed_precision bf16 --torch_compile MODE --fused_adamw`: the model
prepared by Accelerate with bf16 and inductor (static shapes), AdamW fused. Its warm-up steps hold the compilation
(`fast_compile_seconds`). On a CPU it is skipped, with the reason in the JSON: train.py refuses the fast path there. On
a GPU each of the bf16 and fast rows also gets the GPU's busy time per step (kernel time summed by the profiler over a
few steps): images/s at 100 % GPU is `batch_size / gpu_ms_per_step * 1000`, the ceiling of several runs sharing it.
"""

import argparse
import json
import os
import time

import torch
from accelerate import Accelerator
from accelerate.utils import TorchDynamoPlugin, set_seed
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
ROWS = ("fp32", "bf16", "replaced", "fast")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")  # as train.py's
RELEASE_CONFIG = dict(alignment_position=True, text_dropout=0.2, cross_attention_init=1.0)  # with alignment_weight 0.1


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], required=True)
    parser.add_argument("--dataset", default=os.path.join(REPO_ROOT, "samples", "qata_cov19"))
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--text_encoder", default="all-minilm-l6-v2", help="As train.py's --text_encoder.")
    parser.add_argument("--image_encoder", default="efficientnet-lite0", help="As train.py's --image_encoder.")
    parser.add_argument("--batch_size", type=int, default=None, help="Default: 32 on a GPU, 8 on a CPU.")
    parser.add_argument("--steps", type=int, default=None, help="Timed steps per path; default 100 on a GPU, 4 on a CPU.")
    parser.add_argument("--warmup_steps", type=int, default=None, help="Untimed steps first; default 10 / 1.")
    parser.add_argument("--num_workers", type=int, default=None,
                        help="Decoding processes (the replaced path's DataLoader workers); default: up to 4.")
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS), help="Which paths to measure.")
    parser.add_argument("--compile_mode", choices=COMPILE_MODES, default="max-autotune-no-cudagraphs",
                        help="The fast row's train.py --torch_compile MODE.")
    parser.add_argument("--release_config", action="store_true",
                        help="Train the released configuration (position-aware alignment, text dropout 0.2, "
                             "cross-attention init 1.0) instead of plain alignment.")
    parser.add_argument("--output_json", default=None, help="Also write the JSON line to this file.")
    return parser.parse_args()


def batches_forever(dataloader, on_epoch=None):
    epoch = 0
    while True:
        if on_epoch is not None:
            on_epoch(epoch)
        yield from dataloader
        epoch += 1


def time_training(device, model, batches, steps: int, warmup_steps: int, bf16: bool, optimizer=None,
                  compiled: bool = False) -> dict:
    """
    Train `warmup_steps` untimed, then `steps` timed; images/s and the share of time spent fetching batches (and the
    warm-up's seconds). `bf16` wraps the forward in autocast as Accelerate's mixed precision does; a model that
    Accelerate prepared has that wrapper already (`bf16=False` then). On a GPU, then a few more steps under the
    profiler: the GPU's busy time per step.
    """
    model.to(device).train()
    if optimizer is None:
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step():
        batch = {k: v.to(device, non_blocking=True) for k, v in next(batches).items()}
        fetched = time.perf_counter()
        if compiled:
            torch.compiler.cudagraph_mark_step_begin()  # as train.py's loop
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):  # as Accelerate's mixed precision
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return len(batch["labels"]), fetched

    warmup_start = time.perf_counter()
    for _ in range(warmup_steps):
        step()
    synchronize(device)
    images, data_wait, start = 0, 0.0, time.perf_counter()
    for _ in range(steps):
        fetch_start = time.perf_counter()
        count, fetched = step()
        data_wait += fetched - fetch_start
        images += count
    synchronize(device)
    seconds = time.perf_counter() - start
    result = {
        "images_per_second": round(images / seconds, 1),
        "data_wait_fraction": round(data_wait / seconds, 4),
        "warmup_seconds": round(start - warmup_start, 1),
    }
    if device.type == "cuda":
        result["gpu_ms_per_step"] = gpu_ms_per_step(step)
    return result


def gpu_ms_per_step(step, steps: int = 5) -> float:
    """Kernel time on the GPU per training step (the profiler's device self-time, summed), over `steps` steps."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as profiler:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    busy_us = sum(event.self_device_time_total for event in profiler.key_averages())
    return round(busy_us / steps / 1000, 2)


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

    config = RELEASE_CONFIG if args.release_config else {}

    def fresh_model():
        set_seed(0)
        return from_pretrained_encoders(
            args.image_encoder, args.text_encoder, image_size=args.image_size, alignment_weight=0.1, **config
        )

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
    if len(decoded) < batch_size:
        raise SystemExit(f"{args.dataset} has {len(decoded)} training images, fewer than one batch of {batch_size}.")
    rows = {}
    for precision in [row for row in ("fp32", "bf16") if row in args.rows]:
        model, _ = fresh_model()
        decoded.cache_report_states(model.to(device))
        loader = DataLoader(decoded, batch_size=batch_size, shuffle=True, collate_fn=decoded.collate, drop_last=True)
        rows[precision] = time_training(
            device, model, batches_forever(loader, decoded.set_epoch), steps, warmup_steps, bf16=precision == "bf16"
        )

    # The replaced path: PIL decoding and zoom per step in workers, the text encoder every step.
    if "replaced" in args.rows:
        model, processor = fresh_model()
        loader = DataLoader(
            train_set, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=num_workers,
            collate_fn=TmcaSegmentationCollator(processor, augment=RandomZoom()), persistent_workers=num_workers > 0,
        )
        rows["replaced"] = time_training(device, model, batches_forever(loader), steps, warmup_steps, bf16=on_gpu)

    # train.py's fast path: prepared by Accelerate in bf16 with inductor, fused AdamW. Last: nothing after it runs
    # under the Accelerator it creates.
    skipped = None
    if "fast" in args.rows and not on_gpu:
        skipped = "train.py's fast path (--torch_compile, --fused_adamw) is CUDA-only: it refuses both on a CPU"
    elif "fast" in args.rows:
        model, _ = fresh_model()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
        accelerator = Accelerator(
            mixed_precision="bf16",
            dynamo_plugin=TorchDynamoPlugin(backend="inductor", mode=args.compile_mode, dynamic=False),
        )
        torch.backends.cudnn.benchmark = True  # as train.py's fast path
        model, optimizer = accelerator.prepare(model, optimizer)
        decoded.cache_report_states(accelerator.unwrap_model(model, keep_torch_compile=False))
        loader = DataLoader(decoded, batch_size=batch_size, shuffle=True, collate_fn=decoded.collate, drop_last=True)
        rows["fast"] = time_training(
            device, model, batches_forever(loader, decoded.set_epoch), steps, warmup_steps, bf16=False,
            optimizer=optimizer, compiled=True,
        )

    result = {"device": torch.cuda.get_device_name() if on_gpu else f"cpu ({torch.get_num_threads()} threads)"}
    for name, row in rows.items():
        result |= {f"{name}_{key}": value for key, value in row.items() if key != "warmup_seconds"}
    if "fp32" in rows and "bf16" in rows:
        result["bf16_over_fp32"] = round(rows["bf16"]["images_per_second"] / rows["fp32"]["images_per_second"], 2)
    result |= {"decode_seconds_once": round(decode_seconds, 1), "train_images": len(train_set)}
    if "replaced" in rows:
        result["replaced_precision"] = "bf16" if on_gpu else "fp32"
        usual = rows.get("bf16" if on_gpu else "fp32")
        if usual is not None:
            result["speedup_over_replaced"] = round(usual["images_per_second"] / rows["replaced"]["images_per_second"], 2)
    if "fast" in rows:
        result |= {"fast_compile_mode": args.compile_mode, "fast_optimizer": "AdamW(fused=True)",
                   "fast_compile_seconds": rows["fast"]["warmup_seconds"]}
        if "bf16" in rows:
            result["fast_over_bf16"] = round(rows["fast"]["images_per_second"] / rows["bf16"]["images_per_second"], 2)
    if skipped:
        result["fast_skipped"] = skipped
    result |= {"config": "release" if args.release_config else "alignment", "batch_size": batch_size,
               "image_size": args.image_size, "steps": steps, "warmup_steps": warmup_steps}
    line = json.dumps(result)
    print(line)
    if args.output_json:
        with open(args.output_json, "w") as handle:
            handle.write(line + "\n")


if __name__ == "__main__":
    main()
