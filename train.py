#!/usr/bin/env python
"""Train TMCA with Accelerate, in the shape of transformers' no-trainer examples.

    accelerate launch train.py                      # the README's main job: the small QaTa-COV19 sample, offline encoders
    accelerate launch train.py --dataset ../shared/data/qata_cov19 --num_train_epochs 20 --output_dir outputs/qata

It evaluates on the validation split after every epoch (Dice, gathered across processes), keeps the best model by
validation Dice, and ends with one Hub-ready folder: model + processor + remote code + a model card with the metrics
measured at the end (at each image's original size, with the real, shuffled and empty reports).
"""

import argparse
import json
import logging
import math
import os
import shutil
from pathlib import Path

import datasets
import torch
import transformers
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm
from transformers import AutoModel, AutoProcessor, SchedulerType, get_scheduler

from tmca_hf.data import RandomZoom, TmcaSegmentationCollator, load_tmca_dataset, normalize_split_name
from tmca_hf.encoders import OFFLINE_IMAGE_ENCODER, OFFLINE_TEXT_ENCODER, from_pretrained_encoders
from tmca_hf.evaluation import evaluate, format_table
from tmca_hf.hub import push_folder_to_hub
from tmca_hf.metrics import SegmentationMetrics
from tmca_hf.model_card import write_model_card


logger = get_logger(__name__)
REPO_ROOT = Path(__file__).resolve().parent
DEFAULT_DATASET = REPO_ROOT / "samples" / "qata_cov19"
DEFAULT_OUTPUT_DIR = REPO_ROOT / "outputs" / "tmca-qata-sample"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default=str(DEFAULT_DATASET),
                      help="Hub dataset id, a save_to_disk/parquet folder, or a raw LViT/flat/medvlsm folder.")
    data.add_argument("--dataset_layout", default="auto", help="auto, lvit, flat, medvlsm, disk, parquet or hub.")
    data.add_argument("--train_split", default="train")
    data.add_argument("--eval_split", default="validation")
    data.add_argument("--text_column", default=None, help="Report column of a saved or Hub dataset (default: text).")
    data.add_argument("--prompt_key", default="p6", help="medvlsm prompt used as the report (p0..p9).")
    data.add_argument("--skip_invalid", action="store_true", help="Skip invalid examples instead of stopping.")
    data.add_argument("--max_train_samples", type=int, default=None)
    data.add_argument("--max_eval_samples", type=int, default=None)
    data.add_argument("--no_augment", action="store_true", help="Switch off the light random zoom.")
    data.add_argument("--num_workers", type=int, default=0, help="DataLoader workers (0 keeps resumes exact).")

    model = parser.add_argument_group("model")
    model.add_argument("--model_name_or_path", default=None,
                       help="Continue from a trained TMCA folder or Hub id (then the encoder flags are ignored).")
    model.add_argument("--image_encoder", default=OFFLINE_IMAGE_ENCODER,
                       help=f"'{OFFLINE_IMAGE_ENCODER}' (offline), a Hub id such as facebook/convnext-tiny-224, or a folder.")
    model.add_argument("--text_encoder", default=OFFLINE_TEXT_ENCODER,
                       help=f"'{OFFLINE_TEXT_ENCODER}' (offline), a Hub id such as "
                            f"microsoft/BiomedVLP-CXR-BERT-specialized, or a folder.")
    model.add_argument("--trust_remote_code", action="store_true", help="Needed by CXR-BERT's text encoder.")
    model.add_argument("--image_size", type=int, default=224)
    model.add_argument("--image_mean_std", type=float, nargs=6, default=None, metavar="X",
                       help="Per-channel mean (3) then std (3) of the input normalisation; default: the image "
                            "encoder's own (0.5 for EfficientNet-Lite, the processor's values for Hub models).")
    model.add_argument("--max_text_length", type=int, default=24)
    model.add_argument("--decoder_hidden_sizes", type=int, nargs=4, default=[256, 128, 64, 32])

    ablation = parser.add_argument_group("ablation switches (TmcaConfig)")
    ablation.add_argument("--alignment_levels", nargs="*", default=["16", "8", "4"],
                          help="Strides to align at (MCA); 'none' or nothing switches alignment off.")
    ablation.add_argument("--alignment_source", choices=["decoder", "encoder"], default="decoder")
    ablation.add_argument("--no_target_alignment", action="store_true", help="TSSD off: plain global alignment.")
    ablation.add_argument("--no_target_enhancement", action="store_true", help="LTE off.")
    ablation.add_argument("--no_text", action="store_true", help="Image-only model (implies no alignment, no LTE).")
    ablation.add_argument("--text_dropout", type=float, default=0.0, help="Learned null text for text-free inference.")
    ablation.add_argument("--unfreeze_text_encoder", action="store_true")
    ablation.add_argument("--alignment_weight", type=float, default=0.5)
    ablation.add_argument("--pixel_alignment_weight", type=float, default=1.0)
    ablation.add_argument("--alignment_level_weights", type=float, nargs="*", default=None,
                          help="w_s per alignment level (default: equal).")
    ablation.add_argument("--contrastive_temperature", type=float, default=0.07)
    ablation.add_argument("--pixel_temperature", type=float, default=0.1)

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--per_device_train_batch_size", type=int, default=8)
    optim.add_argument("--per_device_eval_batch_size", type=int, default=16)
    optim.add_argument("--gradient_accumulation_steps", type=int, default=1)
    optim.add_argument("--learning_rate", type=float, default=3e-4, help="Decoder and alignment heads.")
    optim.add_argument("--encoder_learning_rate", type=float, default=None,
                       help="Image (and unfrozen text) encoder; defaults to learning_rate / 10.")
    optim.add_argument("--weight_decay", type=float, default=1e-4)
    optim.add_argument("--lr_scheduler_type", type=SchedulerType, default="cosine")
    optim.add_argument("--num_warmup_steps", type=int, default=0)
    optim.add_argument("--num_train_epochs", type=int, default=10)
    optim.add_argument("--max_train_steps", type=int, default=None, help="Overrides num_train_epochs.")
    optim.add_argument("--seed", type=int, default=42)
    optim.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None,
                       help="Overrides `accelerate launch --mixed_precision`.")

    run = parser.add_argument_group("run")
    run.add_argument("--output_dir", default=str(DEFAULT_OUTPUT_DIR))
    run.add_argument("--overwrite_output_dir", action="store_true", help="Replace a finished model in output_dir.")
    run.add_argument("--checkpointing_steps", default="epoch", help="'epoch', an integer number of steps, or 'none'.")
    run.add_argument("--checkpoints_total_limit", type=int, default=2,
                     help="Keep only the newest N checkpoints (each holds the model, optimizer and RNG states).")
    run.add_argument("--resume_from_checkpoint", default=None, help="A checkpoint folder, or 'latest'.")
    run.add_argument("--report_to", default="none", help="Tracker for Accelerate: tensorboard, wandb, all, none.")
    run.add_argument("--final_eval_text_modes", nargs="*", default=["report", "shuffled", "empty"])
    run.add_argument("--push_to_hub", action="store_true")
    run.add_argument("--hub_model_id", default=None)
    run.add_argument("--hub_private", action="store_true")
    args = parser.parse_args(argv)

    args.alignment_levels = [] if args.alignment_levels in ([], ["none"]) else [int(s) for s in args.alignment_levels]
    if args.no_text:
        args.alignment_levels = []
    if args.encoder_learning_rate is None:
        args.encoder_learning_rate = args.learning_rate / 10
    if args.checkpointing_steps not in ("epoch", "none") and not args.checkpointing_steps.isdigit():
        parser.error(f"--checkpointing_steps must be 'epoch', 'none' or an integer, got {args.checkpointing_steps!r}.")
    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id (e.g. your-name/tmca-qata).")
    return args


def config_overrides(args) -> dict:
    """The TmcaConfig fields the command line sets."""
    return dict(
        image_size=args.image_size,
        max_text_length=args.max_text_length,
        decoder_hidden_sizes=args.decoder_hidden_sizes,
        alignment_levels=args.alignment_levels,
        alignment_source=args.alignment_source,
        use_target_alignment=not args.no_target_alignment,
        use_target_enhancement=bool(args.alignment_levels) and not args.no_target_enhancement,
        use_text=not args.no_text,
        text_dropout=args.text_dropout,
        freeze_text_encoder=not args.unfreeze_text_encoder,
        alignment_weight=args.alignment_weight,
        pixel_alignment_weight=args.pixel_alignment_weight,
        alignment_level_weights=args.alignment_level_weights,
        contrastive_temperature=args.contrastive_temperature,
        pixel_temperature=args.pixel_temperature,
    )


class EpochSeededZoom(Dataset):
    """
    The light random zoom with draws fixed by (seed, epoch, index), not by when a batch is fetched: Accelerate fetches
    one batch ahead, so draws from the global RNG would shift between an unbroken run and a resumed one.
    """

    def __init__(self, dataset, seed: int, scale=(1.0, 1.2)):
        self.dataset, self.seed, self.scale, self.epoch = dataset, seed, scale, 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __getitem__(self, index):
        row = dict(self.dataset[index])
        generator = torch.Generator().manual_seed(hash((self.seed, self.epoch, index)) % 2**63)
        row["image"], row["mask"] = RandomZoom(self.scale, generator=generator)(row["image"], row["mask"])
        return row

    def __len__(self):
        return len(self.dataset)


class EpochShuffleSampler(Sampler):
    """A shuffle that is a pure function of (seed, epoch), so a resumed run sees the same order as an unbroken one."""

    def __init__(self, num_samples: int, seed: int):
        self.num_samples, self.seed, self.epoch = num_samples, seed, 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=generator).tolist())

    def __len__(self):
        return self.num_samples


def prepare_output_dir(args):
    output_dir = Path(args.output_dir)
    finished = (output_dir / "config.json").exists()
    if finished and not args.overwrite_output_dir and not args.resume_from_checkpoint:
        raise SystemExit(
            f"{output_dir} already holds a trained model. Pass --overwrite_output_dir to replace it, "
            f"--resume_from_checkpoint latest to continue its run, or choose another --output_dir."
        )
    if finished and args.overwrite_output_dir:
        shutil.rmtree(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    return output_dir


def load_splits(args, accelerator):
    args.train_split, args.eval_split = normalize_split_name(args.train_split), normalize_split_name(args.eval_split)
    with accelerator.main_process_first():
        dataset = load_tmca_dataset(
            args.dataset,
            layout=args.dataset_layout,
            prompt_key=args.prompt_key,
            text_column=args.text_column,
            skip_invalid=args.skip_invalid,
            splits=[args.train_split, args.eval_split],
        )
    for split in (args.train_split, args.eval_split):
        if split not in dataset:
            raise SystemExit(f"{args.dataset} has no split {split!r}; it has {sorted(dataset)}.")
    train, evaluation = dataset[args.train_split], dataset[args.eval_split]
    if args.max_train_samples:
        train = train.select(range(min(args.max_train_samples, len(train))))
    if args.max_eval_samples:
        evaluation = evaluation.select(range(min(args.max_eval_samples, len(evaluation))))
    return train, evaluation


def build_model(args):
    if args.model_name_or_path:
        return (
            AutoModel.from_pretrained(args.model_name_or_path, trust_remote_code=True),
            AutoProcessor.from_pretrained(args.model_name_or_path, trust_remote_code=True),
        )
    model, processor = from_pretrained_encoders(
        args.image_encoder, args.text_encoder, trust_remote_code=args.trust_remote_code, **config_overrides(args)
    )
    if args.image_mean_std:
        mean_std = args.image_mean_std
        processor.image_processor.image_mean, processor.image_processor.image_std = mean_std[:3], mean_std[3:]
    return model, processor


def build_optimizer(model, args):
    """AdamW with two learning rates: the pretrained encoders move slower than the fresh decoder and heads."""
    encoder_params, other_params = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (encoder_params if name.startswith(("backbone.", "text_encoder.")) else other_params).append(param)
    return torch.optim.AdamW(
        [
            {"params": encoder_params, "lr": args.encoder_learning_rate},
            {"params": other_params, "lr": args.learning_rate},
        ],
        weight_decay=args.weight_decay,
    )


def validation_dice(model, dataloader, accelerator, threshold=0.5) -> dict:
    """Per-image and pooled Dice/IoU at the model's resolution, gathered over processes (for model selection)."""
    model.eval()
    metrics = SegmentationMetrics(with_hd95=False)  # selection needs Dice only; HD95 is measured at the end
    for batch in dataloader:
        with torch.no_grad():
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        predictions = (logits.sigmoid()[:, 0] > threshold).to(torch.uint8)
        predictions, labels = accelerator.gather_for_metrics((predictions, batch["labels"].to(torch.uint8)))
        metrics.update(predictions.cpu(), labels.cpu())
    model.train()
    results = metrics.compute()
    return {key: results[key] for key in ("dice_per_image", "iou_per_image", "dice_pooled", "iou_pooled")}


def complete_checkpoints(output_dir: Path) -> list:
    """Checkpoint folders, oldest first; best.json is written last, so a folder without it was cut off mid-save."""
    return sorted(
        (path for path in (output_dir / "checkpoints").glob("step_*") if (path / "best.json").exists()),
        key=lambda path: int(path.name.split("_")[1]),
    )


def find_checkpoint(output_dir: Path, requested: str) -> Path:
    if requested != "latest":
        return Path(requested)
    checkpoints = complete_checkpoints(output_dir)
    if not checkpoints:
        raise SystemExit(f"--resume_from_checkpoint latest: no checkpoint under {output_dir / 'checkpoints'}.")
    return checkpoints[-1]


def save_checkpoint(accelerator, output_dir: Path, completed_steps: int, best: dict, total_limit: int):
    folder = output_dir / "checkpoints" / f"step_{completed_steps}"
    accelerator.save_state(str(folder))
    if accelerator.is_main_process:
        (folder / "best.json").write_text(json.dumps(best))
        for old in complete_checkpoints(output_dir)[:-total_limit]:
            shutil.rmtree(old)


def main(argv=None):
    args = parse_args(argv)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=None if args.report_to == "none" else args.report_to,
        project_dir=args.output_dir,
        mixed_precision=args.mixed_precision,
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if not accelerator.is_local_main_process:
        datasets.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()
    set_seed(args.seed)
    output_dir = prepare_output_dir(args) if accelerator.is_main_process else Path(args.output_dir)
    accelerator.wait_for_everyone()

    train_set, eval_set = load_splits(args, accelerator)
    model, processor = build_model(args)
    if not args.no_augment:
        train_set = EpochSeededZoom(train_set, args.seed)
    train_dataloader = DataLoader(
        train_set,
        batch_size=args.per_device_train_batch_size,
        sampler=EpochShuffleSampler(len(train_set), args.seed),
        collate_fn=TmcaSegmentationCollator(processor),
        num_workers=args.num_workers,
        # Its own generator: starting an iterator then draws nothing from the global RNG, which a checkpoint
        # restores and which the augmentation and text dropout use, so a resumed run repeats the unbroken one.
        generator=torch.Generator().manual_seed(args.seed),
        drop_last=len(train_set) > args.per_device_train_batch_size * accelerator.num_processes,
    )
    eval_dataloader = DataLoader(
        eval_set,
        batch_size=args.per_device_eval_batch_size,
        collate_fn=TmcaSegmentationCollator(processor),
        num_workers=args.num_workers,
    )
    optimizer = build_optimizer(model, args)
    steps_per_epoch = math.ceil(len(train_dataloader) / accelerator.num_processes / args.gradient_accumulation_steps)
    if args.max_train_steps is None:
        args.max_train_steps = args.num_train_epochs * steps_per_epoch
    args.num_train_epochs = math.ceil(args.max_train_steps / steps_per_epoch)
    scheduler = get_scheduler(
        args.lr_scheduler_type,
        optimizer=optimizer,
        num_warmup_steps=args.num_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
    )
    model, optimizer, train_dataloader, eval_dataloader, scheduler = accelerator.prepare(
        model, optimizer, train_dataloader, eval_dataloader, scheduler
    )
    if args.report_to != "none":
        accelerator.init_trackers("tmca", {k: str(v) for k, v in vars(args).items()})

    total_batch_size = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info(f"{len(train_set)} training and {len(eval_set)} validation examples from {args.dataset}")
    logger.info(f"{args.num_train_epochs} epochs, {args.max_train_steps} steps, total batch size {total_batch_size}")

    completed_steps, starting_epoch, resume_batches = 0, 0, 0
    best = {"dice_per_image": -1.0, "epoch": None}
    if args.resume_from_checkpoint:
        checkpoint = find_checkpoint(output_dir, args.resume_from_checkpoint)
        accelerator.print(f"Resumed from checkpoint: {checkpoint}")
        accelerator.load_state(str(checkpoint))
        best = json.loads((checkpoint / "best.json").read_text())
        completed_steps = int(checkpoint.name.split("_")[1])
        starting_epoch = completed_steps // steps_per_epoch
        resume_batches = (completed_steps % steps_per_epoch) * args.gradient_accumulation_steps

    progress_bar = tqdm(
        range(args.max_train_steps), initial=completed_steps, disable=not accelerator.is_local_main_process
    )
    log_path = output_dir / "train_log.jsonl"
    for epoch in range(starting_epoch, args.num_train_epochs):
        model.train()
        train_dataloader.set_epoch(epoch)  # the shuffle, and Accelerate's own epoch counter
        if isinstance(train_set, EpochSeededZoom):
            train_set.set_epoch(epoch)  # Accelerate skips this when it shards the batches over processes
        batches = train_dataloader
        if epoch == starting_epoch and resume_batches:
            batches = accelerator.skip_first_batches(train_dataloader, resume_batches)
        for batch in batches:
            with accelerator.accumulate(model):
                outputs = model(**batch)
                accelerator.backward(outputs.loss)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
            completed_steps += 1
            progress_bar.update(1)
            progress_bar.set_postfix(loss=f"{outputs.loss.item():.4f}", epoch=epoch)
            if args.checkpointing_steps.isdigit() and completed_steps % int(args.checkpointing_steps) == 0:
                save_checkpoint(accelerator, output_dir, completed_steps, best, args.checkpoints_total_limit)
            if completed_steps >= args.max_train_steps:
                break

        scores = validation_dice(model, eval_dataloader, accelerator)
        record = {"epoch": epoch, "step": completed_steps, "loss": outputs.loss.item(), **scores}
        accelerator.print(json.dumps(record))
        if args.report_to != "none":
            accelerator.log({f"eval/{k}": v for k, v in scores.items()} | {"train/loss": record["loss"]}, step=completed_steps)
        if accelerator.is_main_process:
            with log_path.open("a") as log:
                log.write(json.dumps(record) + "\n")
        if scores["dice_per_image"] > best["dice_per_image"]:
            best = {**scores, "epoch": epoch, "step": completed_steps}
            if accelerator.is_main_process:
                accelerator.unwrap_model(model).save_pretrained(output_dir / "best")
        accelerator.wait_for_everyone()
        if args.checkpointing_steps == "epoch":
            save_checkpoint(accelerator, output_dir, completed_steps, best, args.checkpoints_total_limit)
        if completed_steps >= args.max_train_steps:
            break

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        finish(args, output_dir, processor, eval_set, best, accelerator.device)
    accelerator.end_training()


def finish(args, output_dir: Path, processor, eval_set, best: dict, device):
    """Reload the best model, measure it at original sizes, and write the Hub-ready folder with its model card."""
    model = AutoModel.from_pretrained(output_dir / "best", trust_remote_code=True).to(device).eval()
    results = [
        evaluate(model, processor, eval_set, batch_size=args.per_device_eval_batch_size, text_mode=mode, device=device)
        for mode in args.final_eval_text_modes
    ]
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    summary = {"selected_by": "validation Dice per image at the model's resolution", "best": best, "evaluation": results}
    (output_dir / "eval_results.json").write_text(json.dumps(summary, indent=2, default=str))
    (output_dir / "training_args.json").write_text(json.dumps(vars(args), indent=2, default=str))
    write_model_card(output_dir / "README.md", REPO_ROOT / "model_card.md", results, vars(args))
    shutil.rmtree(output_dir / "best")
    print(f"\nValidation ({args.eval_split}, {len(eval_set)} images, original sizes, threshold 0.5), best epoch {best['epoch']}:")
    print(format_table(results))
    print(f"\nSaved the model to {output_dir}\nServe it:  python space/app.py --model {output_dir}\n"
          f"Evaluate:  tmca-evaluate --model {output_dir} --dataset {args.dataset} --split {args.eval_split}")
    if args.push_to_hub:
        print(f"Pushed to {push_folder_to_hub(output_dir, args.hub_model_id, private=args.hub_private)}")


if __name__ == "__main__":
    main()
