#!/usr/bin/env python
"""Train TMCA with Accelerate, in the shape of transformers' no-trainer examples.

    accelerate launch train.py                      # the README's main job: the small QaTa-COV19 sample, offline encoders
    accelerate launch train.py --dataset ../shared/data/qata_cov19 --num_train_epochs 20 --output_dir outputs/qata
    accelerate launch train.py --dataset ../shared/data/qata_cov19 ../shared/data/kvasir_seg ...  # one model for both
    accelerate launch train.py ... --mixed_precision bf16 --torch_compile --fused_adamw  # the CUDA fast path

Each split is decoded once into memory on the training device, the zoom runs there on whole batches, and a frozen
text encoder runs once per distinct report (`tmca_hf.training_data`). It evaluates on the validation split after
every epoch (Dice on the device, gathered across processes; with several datasets, on each, and the best model is
the one with the best mean over them), logs images/s and the share of time spent waiting for data, keeps the best
model by validation Dice, and ends with one Hub-ready folder: model + processor + remote code + a
model card with the metrics measured at the end (at each image's original size, with the real, shuffled and empty
reports). The resumable checkpoints go beside it, in `<output_dir>-checkpoints`, so the folder is what gets served.
"""

import argparse
import json
import logging
import math
import shutil
import sys
import time
from pathlib import Path

import datasets
import torch
import transformers
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, TorchDynamoPlugin, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoModel, AutoProcessor, SchedulerType, get_scheduler

from tmca_hf.data import load_tmca_dataset, normalize_split_name
from tmca_hf.encoders import OFFLINE_IMAGE_ENCODER, OFFLINE_TEXT_ENCODER, from_pretrained_encoders
from tmca_hf.evaluation import evaluate, format_table
from tmca_hf.hub import push_folder_to_hub
from tmca_hf.inference import RELEASED_MODEL
from tmca_hf.metrics import SegmentationMetrics
from tmca_hf.model_card import write_model_card
from tmca_hf.training_data import BatchedAppearance, BatchedRandomZoom, DecodedSplit, JpegStability, SideConditioning


logger = get_logger(__name__)
REPO_ROOT = Path(__file__).resolve().parent
DEFAULT_DATASET = REPO_ROOT / "samples" / "qata_cov19"
DEFAULT_OUTPUT_DIR = REPO_ROOT / "outputs" / "tmca-qata-sample"
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")
SCORE_KEYS = ("dice_per_image", "iou_per_image", "dice_pooled", "iou_pooled")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", nargs="+", default=[str(DEFAULT_DATASET)],
                      help="Hub dataset id, a save_to_disk/parquet folder, or a raw LViT/flat/medvlsm folder. Several "
                           "train one model on all of them (training splits concatenated), each validated on its own.")
    data.add_argument("--dataset_layout", default="auto",
                      help="auto, lvit, flat, medvlsm, disk, parquet or hub (for every --dataset).")
    data.add_argument("--train_split", default="train")
    data.add_argument("--eval_split", default="validation")
    data.add_argument("--text_column", default=None, help="Report column of a saved or Hub dataset (default: text).")
    data.add_argument("--prompt_key", default="p6", help="medvlsm prompt used as the report (p0..p9).")
    data.add_argument("--skip_invalid", action="store_true", help="Skip invalid examples instead of stopping.")
    data.add_argument("--max_train_samples", type=int, default=None, help="Per dataset.")
    data.add_argument("--max_eval_samples", type=int, default=None, help="Per dataset.")
    data.add_argument("--no_augment", action="store_true",
                      help="Switch off the augmentation (the light random zoom; contrast, gamma, noise and JPEG).")
    data.add_argument("--one_side_reports", type=float, default=0.0,
                      help="Share of the images with lesion on both sides given, each epoch, a one-side report written "
                           "from one side's lesion, with only that lesion as the target (SideConditioning).")
    data.add_argument("--swapped_side_reports", type=float, default=0.0,
                      help="Share of the images with a unilateral report given, each epoch, that report with left and "
                           "right swapped, with only the lesion on the side it names as the target (SideConditioning).")
    data.add_argument("--jpeg_stability_weight", type=float, default=0.0,
                      help="Stability training against JPEG re-saving: the weight of the KL divergence between the "
                           "predictions on each batch and on its JPEG copy (0: off; a second forward and backward per step).")
    data.add_argument("--preprocessing_num_workers", type=int, default=0,
                      help="Processes that decode each split, once, before training.")

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
    ablation.add_argument("--alignment_position", action="store_true",
                          help="Give the alignment levels each pixel's position (for 'left/right, upper/lower').")
    ablation.add_argument("--cross_attention_init", type=float, default=0.01,
                          help="Initial scale of the attended report in each decoder stage.")
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

    fast = parser.add_argument_group("CUDA fast path (opt-in; validation stays the float32 eager forward)")
    fast.add_argument("--torch_compile", nargs="?", const="max-autotune-no-cudagraphs", default=None,
                      choices=COMPILE_MODES, metavar="MODE",
                      help=f"torch.compile the training forward and backward through Accelerate (inductor, static "
                           f"shapes), in MODE: one of {', '.join(COMPILE_MODES)} (default when given without a value: "
                           f"max-autotune-no-cudagraphs; reduce-overhead adds CUDA graphs). CUDA only.")
    fast.add_argument("--fused_adamw", action="store_true",
                      help="AdamW as one fused kernel per step (torch.optim.AdamW(fused=True)). CUDA only.")

    run = parser.add_argument_group("run")
    run.add_argument("--output_dir", default=str(DEFAULT_OUTPUT_DIR))
    run.add_argument("--checkpoint_dir", default=None,
                     help="Where the resumable checkpoints and the best model so far go; default <output_dir>-checkpoints.")
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

    if args.model_name_or_path:  # it brings its own architecture (config.json and processor): the groups' flags set one up
        new_model_flags = [action.dest for group in (model, ablation) for action in group._group_actions
                           if action.dest not in ("model_name_or_path", "trust_remote_code")]
        given = [f"--{name}" for name in new_model_flags if getattr(args, name) != parser.get_default(name)]
        if given:
            parser.error(f"{', '.join(given)} set up a new model, and --model_name_or_path {args.model_name_or_path} "
                         f"brings its own (its config.json and processor): leave them out.")
        for name in new_model_flags:
            setattr(args, name, None)  # so training_args.json says they came with the model, not what their defaults are

    if len(set(args.dataset)) < len(args.dataset):
        parser.error(f"--dataset names a source twice: {args.dataset}.")
    names = [dataset_name(source) for source in args.dataset]
    if len(set(names)) < len(names):
        parser.error(f"--dataset sources must have distinct names (their validation is logged by name), got {names}.")
    args.dataset = args.dataset[0] if len(args.dataset) == 1 else args.dataset  # one source: a string, as before
    for flag, value in (("--torch_compile", args.torch_compile), ("--fused_adamw", args.fused_adamw)):
        if value and not torch.cuda.is_available():
            parser.error(f"{flag} is part of the CUDA fast path and this machine has no CUDA device; leave it out "
                         f"(on a CPU the eager path is the one that is tested and measured).")
    if args.alignment_levels is not None:
        args.alignment_levels = [] if args.alignment_levels in ([], ["none"]) else [int(s) for s in args.alignment_levels]
    if args.no_text:
        args.alignment_levels = []
    if args.encoder_learning_rate is None:
        args.encoder_learning_rate = args.learning_rate / 10
    if args.checkpointing_steps not in ("epoch", "none") and not args.checkpointing_steps.isdigit():
        parser.error(f"--checkpointing_steps must be 'epoch', 'none' or an integer, got {args.checkpointing_steps!r}.")
    for flag, value in (("--one_side_reports", args.one_side_reports), ("--swapped_side_reports", args.swapped_side_reports)):
        if not 0.0 <= value <= 1.0:
            parser.error(f"{flag} is a share of the training images and must lie in [0, 1], got {value}.")
        if value and args.no_text:
            parser.error(f"{flag} changes reports, and --no_text trains without them: leave one out.")
    if args.jpeg_stability_weight < 0:
        parser.error(f"--jpeg_stability_weight must be >= 0 (0 switches it off), got {args.jpeg_stability_weight}.")
    if args.image_size is not None and args.image_size % 32:
        parser.error(f"--image_size must be a multiple of 32 (the backbone's coarsest stride), got {args.image_size}.")
    if args.checkpoint_dir is None:
        args.checkpoint_dir = f"{Path(args.output_dir)}-checkpoints"
    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id (e.g. your-name/tmca-qata).")
    return args


def config_overrides(args) -> dict:
    """The TmcaConfig fields the command line sets."""
    return dict(
        decoder_hidden_sizes=args.decoder_hidden_sizes,
        alignment_levels=args.alignment_levels,
        alignment_source=args.alignment_source,
        alignment_position=args.alignment_position,
        cross_attention_init=args.cross_attention_init,
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


def dataset_name(source: str) -> str:
    """How a dataset is named in logs and results: its folder's (or Hub id's) last part."""
    return Path(str(source).rstrip("/")).name or str(source)


def dataset_sources(args) -> list:
    return args.dataset if isinstance(args.dataset, list) else [args.dataset]


def prepare_output_dir(args) -> Path:
    """The model folder: refuse to replace a finished model unless asked, and say how to continue instead."""
    output_dir = Path(args.output_dir)
    finished = (output_dir / "config.json").exists()
    if finished and not args.overwrite_output_dir and not args.resume_from_checkpoint:
        advice = (
            "--resume_from_checkpoint latest to continue its run, "
            if latest_checkpoint(Path(args.checkpoint_dir)) is not None
            else ""
        )
        raise SystemExit(
            f"{output_dir} already holds a trained model. Pass --overwrite_output_dir to replace it, {advice}"
            f"or choose another --output_dir."
        )
    if finished and args.overwrite_output_dir:
        shutil.rmtree(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    return output_dir


def load_splits(args, accelerator):
    """The training split (several datasets' concatenated) and each dataset's validation split, by dataset name."""
    args.train_split, args.eval_split = normalize_split_name(args.train_split), normalize_split_name(args.eval_split)
    trains, evaluations = [], {}
    for source in dataset_sources(args):
        with accelerator.main_process_first():
            dataset = load_tmca_dataset(
                source,
                layout=args.dataset_layout,
                prompt_key=args.prompt_key,
                text_column=args.text_column,
                skip_invalid=args.skip_invalid,
                splits=[args.train_split, args.eval_split],
            )
        for split in (args.train_split, args.eval_split):
            if split not in dataset:
                raise SystemExit(f"{source} has no split {split!r}; it has {sorted(dataset)}.")
        train, evaluation = dataset[args.train_split], dataset[args.eval_split]
        if args.max_train_samples:
            train = train.select(range(min(args.max_train_samples, len(train))))
        if args.max_eval_samples:
            evaluation = evaluation.select(range(min(args.max_eval_samples, len(evaluation))))
        trains.append(train)
        evaluations[dataset_name(source)] = evaluation
    if len(trains) == 1:
        return trains[0], evaluations
    columns = ["image", "mask", "text", "id"]  # what every layout gives; the rest (bbox, ...) differs between them
    return datasets.concatenate_datasets([train.select_columns(columns) for train in trains]), evaluations


def build_model(args):
    if args.model_name_or_path:
        return (
            AutoModel.from_pretrained(args.model_name_or_path, trust_remote_code=True),
            AutoProcessor.from_pretrained(args.model_name_or_path, trust_remote_code=True),
        )
    model, processor = from_pretrained_encoders(
        args.image_encoder, args.text_encoder, trust_remote_code=args.trust_remote_code,
        image_size=args.image_size, max_text_length=args.max_text_length, **config_overrides(args),
    )
    if args.image_mean_std:
        mean_std = args.image_mean_std
        processor.image_processor.image_mean, processor.image_processor.image_std = mean_std[:3], mean_std[3:]
    return model, processor


def build_optimizer(model, args):
    """AdamW with two learning rates: the pretrained encoders move slower than the fresh decoder and heads (one fused
    kernel per step with --fused_adamw)."""
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
        **({"fused": True} if args.fused_adamw else {}),
    )


def training_step_loss(model, batch, stability, device):
    """The model's outputs on the batch and the loss to step on: the model's own, plus `stability`'s term (a
    `JpegStability`, or None) on a JPEG copy of the batch. The copy's forward replays the random state the batch's
    forward drew from, so both saw the same text dropout and stochastic depth and differ only by the compression."""
    if stability is None:
        outputs = model(**batch)
        return outputs, outputs.loss
    view = stability.view(batch["pixel_values"])
    state = torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    outputs = model(**batch)
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)
    view_logits = model(**{**batch, "pixel_values": view, "labels": None}).logits
    return outputs, outputs.loss + stability.loss(outputs.logits, view_logits)


def float32_forward(model, accelerator):
    """
    The model's forward without the mixed-precision autocast that `accelerator.prepare` wrapped around it for good:
    validation then computes in float32, as `tmca-evaluate` and every user path do, so the epoch chosen is the one
    whose reported number is best. Training keeps the autocast forward. Under --torch_compile this is also the eager
    forward: the compiled one is for training steps only.
    """
    unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
    return getattr(unwrapped, "_original_forward", unwrapped.forward)


def validation_dice(model, dataloader, accelerator, threshold=0.5) -> dict:
    """Per-image and pooled Dice/IoU at the model's resolution in float32, counted on the device and gathered over
    processes."""
    model.eval()
    forward = float32_forward(model, accelerator)
    metrics = SegmentationMetrics(with_hd95=False)  # selection needs Dice only; HD95 is measured at the end
    for batch in dataloader:
        with torch.no_grad():
            logits = forward(**{k: v for k, v in batch.items() if k != "labels"}).logits
        predictions = logits.sigmoid()[:, 0] > threshold
        predictions, labels = accelerator.gather_for_metrics((predictions, batch["labels"].bool()))
        metrics.update(predictions, labels)
    model.train()
    results = metrics.compute()
    return {key: results[key] for key in SCORE_KEYS}


class TrainingProgress:
    """The run's position and its best epoch so far, saved in every checkpoint (Accelerate's custom state)."""

    def __init__(self):
        self.completed_steps, self.best = 0, {"dice_per_image": -1.0, "epoch": None}

    def state_dict(self) -> dict:
        return {"completed_steps": self.completed_steps, "best": self.best}

    def load_state_dict(self, state: dict):
        self.completed_steps, self.best = state["completed_steps"], state["best"]


CHECKPOINT_COMPLETE = "custom_checkpoint_0.pkl"  # TrainingProgress: the last file Accelerate's save_state writes


def latest_checkpoint(checkpoint_dir: Path):
    """The newest complete checkpoint, or None."""
    complete = [path for path in (checkpoint_dir / "checkpoints").glob("checkpoint_*") if (path / CHECKPOINT_COMPLETE).exists()]
    return max(complete, key=lambda path: int(path.name.split("_")[1]), default=None)


def find_resume_checkpoint(args):
    """The checkpoint --resume_from_checkpoint names (a folder, or 'latest'), checked before any work starts."""
    if not args.resume_from_checkpoint:
        return None
    checkpoint_dir = Path(args.checkpoint_dir)
    if args.resume_from_checkpoint == "latest":
        checkpoint = latest_checkpoint(checkpoint_dir)
        if checkpoint is None:
            raise SystemExit(
                f"--resume_from_checkpoint latest: no complete checkpoint under {checkpoint_dir / 'checkpoints'}."
            )
        return checkpoint
    checkpoint = Path(args.resume_from_checkpoint)
    if not (checkpoint / CHECKPOINT_COMPLETE).is_file():
        raise SystemExit(f"--resume_from_checkpoint {checkpoint}: not a complete checkpoint of this script.")
    return checkpoint


def resume(accelerator, checkpoint: Path, progress: TrainingProgress):
    """Restore a checkpoint (model, optimizer, scheduler, sampler, RNG states and `progress`)."""
    accelerator.load_state(str(checkpoint))
    accelerator.project_configuration.iteration = int(checkpoint.name.split("_")[1]) + 1  # the next save's number
    accelerator.print(f"Resumed from checkpoint: {checkpoint} (step {progress.completed_steps})")


def checkpoint_due(args, completed_steps: int, epoch_end: bool) -> bool:
    """Step checkpoints that fall on an epoch's last step are taken after its validation, so resuming repeats none."""
    if args.checkpointing_steps == "epoch":
        return epoch_end
    return args.checkpointing_steps != "none" and completed_steps % int(args.checkpointing_steps) == 0


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None):
    args = parse_args(argv)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=None if args.report_to == "none" else args.report_to,
        mixed_precision=args.mixed_precision,
        project_config=ProjectConfiguration(
            project_dir=args.checkpoint_dir, automatic_checkpoint_naming=True, total_limit=args.checkpoints_total_limit
        ),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        # Static shapes (the training batches are all full: drop_last below), so one graph and no recompiles.
        dynamo_plugin=TorchDynamoPlugin(backend="inductor", mode=args.torch_compile, dynamic=False)
        if args.torch_compile else None,
    )
    if (args.torch_compile or args.fused_adamw) and accelerator.device.type != "cuda":
        raise SystemExit(f"--torch_compile and --fused_adamw are the CUDA fast path; this run's device is "
                         f"{accelerator.device} (accelerate launch --cpu, or ACCELERATE_USE_CPU): leave them out.")
    if args.torch_compile:
        torch.backends.cudnn.benchmark = True  # static shapes: each convolution's fastest algorithm, found once
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logging.getLogger("accelerate").setLevel(logging.ERROR)  # its per-checkpoint INFO and rotation lines
    transformers.utils.logging.disable_progress_bar()  # no shard-writing bars inside the training bar
    if not accelerator.is_local_main_process:
        datasets.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()
    set_seed(args.seed)
    resume_checkpoint = find_resume_checkpoint(args)
    output_dir = prepare_output_dir(args) if accelerator.is_main_process else Path(args.output_dir)
    accelerator.wait_for_everyone()

    # Data: each split decoded once, onto the training device.
    train_set, eval_sets = load_splits(args, accelerator)
    model, processor = build_model(args)
    augment = [] if args.no_augment else [
        BatchedRandomZoom(len(train_set), args.seed),
        BatchedAppearance(len(train_set), args.seed, processor.image_processor.image_mean, processor.image_processor.image_std),
    ]
    stability = None
    if args.jpeg_stability_weight:
        image_processor = processor.image_processor
        stability = JpegStability(args.jpeg_stability_weight, image_processor.image_mean, image_processor.image_std)
    started = time.perf_counter()
    side_conditioning = None
    if args.one_side_reports or args.swapped_side_reports:
        side_conditioning = SideConditioning(args.seed, args.one_side_reports, args.swapped_side_reports)
    train_data = DecodedSplit(
        train_set, processor, augment=augment, num_workers=args.preprocessing_num_workers,
        side_conditioning=side_conditioning,
    )
    eval_data = {
        name: DecodedSplit(eval_set, processor, num_workers=args.preprocessing_num_workers)
        for name, eval_set in eval_sets.items()
    }
    train_data.to(accelerator.device)
    for data in eval_data.values():
        data.to(accelerator.device)
    logger.info(f"Decoded {len(train_data)} + {sum(map(len, eval_data.values()))} examples in "
                f"{time.perf_counter() - started:.1f} s")
    train_dataloader = DataLoader(
        train_data,
        batch_size=args.per_device_train_batch_size,
        shuffle=True,  # Accelerate's seedable sampler: the order is a function of (seed, epoch)
        collate_fn=train_data.collate,
        # Own generators: starting an iterator then draws nothing from the global RNG, which a checkpoint restores
        # and which stochastic depth and text dropout use, so a resumed run repeats the unbroken one.
        generator=torch.Generator().manual_seed(args.seed),
        drop_last=len(train_data) > args.per_device_train_batch_size * accelerator.num_processes,
    )
    eval_dataloaders = [
        DataLoader(
            data,
            batch_size=args.per_device_eval_batch_size,
            collate_fn=data.collate,
            generator=torch.Generator().manual_seed(args.seed),
        )
        for data in eval_data.values()
    ]

    # Model, optimizer and schedule.
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
    model, optimizer, train_dataloader, *eval_dataloaders, scheduler = accelerator.prepare(
        model, optimizer, train_dataloader, *eval_dataloaders, scheduler
    )
    eval_dataloaders = dict(zip(eval_data, eval_dataloaders))
    unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
    if unwrapped.text_encoder is not None and unwrapped.config.freeze_text_encoder:
        train_data.cache_report_states(unwrapped)
        for data in eval_data.values():
            data.cache_report_states(unwrapped)
    progress = TrainingProgress()
    accelerator.register_for_checkpointing(progress)
    if args.report_to != "none":
        accelerator.init_trackers("tmca", {k: str(v) for k, v in vars(args).items()})

    total_batch_size = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info(f"{len(train_set)} training and {sum(map(len, eval_sets.values()))} validation examples from {args.dataset}")
    logger.info(f"{args.num_train_epochs} epochs, {args.max_train_steps} steps, total batch size {total_batch_size}")
    if resume_checkpoint is not None:
        resume(accelerator, resume_checkpoint, progress)
    starting_epoch = progress.completed_steps // steps_per_epoch
    resume_batches = (progress.completed_steps % steps_per_epoch) * args.gradient_accumulation_steps

    # Training: one bar, one line per epoch.
    progress_bar = tqdm(  # a bar on a terminal only: in a log file its updates would share lines with the records
        range(args.max_train_steps), initial=progress.completed_steps,
        disable=not accelerator.is_local_main_process or not sys.stderr.isatty(),
    )
    log_path = output_dir / "train_log.jsonl"
    for epoch in range(starting_epoch, args.num_train_epochs):
        model.train()
        train_dataloader.set_epoch(epoch)  # the seedable sampler's order
        train_data.set_epoch(epoch)  # the zoom's draws
        batches = train_dataloader
        if epoch == starting_epoch and resume_batches:
            batches = accelerator.skip_first_batches(train_dataloader, resume_batches)
        images, data_wait, epoch_start = 0, 0.0, time.perf_counter()
        iterator = iter(batches)
        while True:
            fetch_start = time.perf_counter()
            batch = next(iterator, None)
            data_wait += time.perf_counter() - fetch_start
            if batch is None:
                break
            with accelerator.accumulate(model):
                if args.torch_compile:
                    torch.compiler.cudagraph_mark_step_begin()  # a new step: CUDA graphs may reuse the last one's memory
                outputs, loss = training_step_loss(model, batch, stability, accelerator.device)
                accelerator.backward(loss)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            images += len(batch["labels"]) * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            progress.completed_steps += 1
            progress_bar.update(1)
            epoch_end = progress.completed_steps % steps_per_epoch == 0 or progress.completed_steps >= args.max_train_steps
            if not epoch_end and checkpoint_due(args, progress.completed_steps, epoch_end=False):
                accelerator.save_state()
            if progress.completed_steps >= args.max_train_steps:
                break
        synchronize(accelerator.device)
        train_seconds = time.perf_counter() - epoch_start

        validation = {name: validation_dice(model, loader, accelerator) for name, loader in eval_dataloaders.items()}
        scores = next(iter(validation.values()))
        if len(validation) > 1:  # select on the mean over datasets, so each modality counts the same
            scores = {key: sum(result[key] for result in validation.values()) / len(validation) for key in SCORE_KEYS}
            scores["validation"] = validation
        record = {
            "epoch": epoch,
            "step": progress.completed_steps,
            "loss": outputs.loss.item(),
            **scores,
            "images_per_second": round(images / train_seconds, 1),
            "data_wait_fraction": round(data_wait / train_seconds, 4),
        }
        if args.report_to != "none":
            accelerator.log({f"eval/{k}": scores[k] for k in SCORE_KEYS} | {"train/loss": record["loss"]}, step=progress.completed_steps)
        if accelerator.is_main_process:
            tqdm.write(json.dumps(record))
            with log_path.open("a") as log:
                log.write(json.dumps(record) + "\n")
        if scores["dice_per_image"] > progress.best["dice_per_image"]:
            progress.best = {**scores, "epoch": epoch, "step": progress.completed_steps}
            if accelerator.is_main_process:
                accelerator.unwrap_model(model, keep_torch_compile=False).save_pretrained(Path(args.checkpoint_dir) / "best")
        accelerator.wait_for_everyone()
        if checkpoint_due(args, progress.completed_steps, epoch_end=True):
            accelerator.save_state()
        if progress.completed_steps >= args.max_train_steps:
            break
    progress_bar.close()

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        finish(args, output_dir, processor, eval_sets, progress.best, accelerator.device)
    accelerator.end_training()


def finish(args, output_dir: Path, processor, eval_sets: dict, best: dict, device):
    """Reload the best model, measure it at original sizes on each dataset's validation split, and write the Hub-ready
    folder with its model card."""
    best_dir = Path(args.checkpoint_dir) / "best"
    model = AutoModel.from_pretrained(best_dir, trust_remote_code=True).to(device).eval()
    several = len(eval_sets) > 1
    results = [
        ({"dataset": name} if several else {})
        | evaluate(model, processor, eval_set, batch_size=args.per_device_eval_batch_size, text_mode=mode, device=device)
        for name, eval_set in eval_sets.items()
        for mode in args.final_eval_text_modes
    ]
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    summary = {"selected_by": "validation Dice per image at the model's resolution", "best": best, "evaluation": results}
    if several:
        summary["selected_by"] += f", averaged over {', '.join(eval_sets)}"
    (output_dir / "eval_results.json").write_text(json.dumps(summary, indent=2, default=str))
    (output_dir / "training_args.json").write_text(json.dumps(vars(args), indent=2, default=str))
    card_results, card_args = results, vars(args)
    if several:  # one table for all: each row says which dataset it measured
        card_results = [result | {"text_mode": f"{result['text_mode']} ({result['dataset']})"} for result in results]
        card_args = card_args | {"dataset": " + ".join(eval_sets)}
    write_model_card(output_dir / "README.md", REPO_ROOT / "model_card.md", card_results, card_args)
    shutil.rmtree(best_dir)
    for name, eval_set in eval_sets.items():
        measured = f"{name}, " if several else ""
        print(f"\nValidation ({measured}{args.eval_split}, {len(eval_set)} images, original sizes, threshold 0.5), "
              f"best epoch {best['epoch']}:")
        print(format_table([result for result in results if result.get("dataset", name) == name]))
    evaluate_lines = "\n".join(
        f"Evaluate:  tmca-evaluate --model {output_dir} --dataset {source} --split {args.eval_split}"
        for source in dataset_sources(args)
    )
    print(f"\nSaved the model to {output_dir} (resumable checkpoints: {args.checkpoint_dir})\n"
          f"Serve it:  pip install -e \".[space]\" && python space/app.py --model {output_dir}   (the Space needs gradio)\n"
          f"{evaluate_lines}")
    if not several and Path(args.dataset) == DEFAULT_DATASET:
        print(f"This sample model shows the pipeline. The trained release is {RELEASED_MODEL.relative_to(REPO_ROOT)}: "
              f"python space/app.py serves it (after the same install); its model card has the training command.")
    if args.push_to_hub:
        print(f"Pushed to {push_folder_to_hub(output_dir, args.hub_model_id, private=args.hub_private)}")

if __name__ == "__main__":
    try:
        main()
    except OSError as error:  # a read-only or full disk, a vanished folder: one line, not a traceback
        raise SystemExit(f"train.py: {error.strerror or error}: {error.filename or ''}".rstrip(": ")) from None
