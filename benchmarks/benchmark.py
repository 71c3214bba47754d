"""CPU inference benchmark: TMCA against its GuideDecoder-style baseline and CLIPSeg, all in one run.

For each model and batch size it measures latency (median and p90 of wall-clock time per forward, after warm-up),
throughput, peak memory allocated by tensors during one forward (torch profiler), parameters and FLOPs
(`torch.utils.flop_counter.FlopCounterMode`), and the attained FLOP/s as a share of a plain float32 `torch.mm` timed
in the same process on the same threads. Ratios are taken against the TMCA row of the same batch size in the same run.

    python benchmarks/benchmark.py --output_json benchmarks/results.json | tee benchmarks/results.md

Rows (model names as printed):
- `TMCA`: the default offline model, `from_pretrained_encoders()` (EfficientNet-Lite0 + all-MiniLM-L6-v2, pretrained
  encoders, fresh decoder). The reference row for the ratios.
- `Baseline`: the same encoders with TSSD/MCA/LTE off (`alignment_levels=[]`, no target alignment or enhancement): the
  GuideDecoder-style language-guided decoder alone.
- `CLIPSeg`: `CLIPSegForImageSegmentation(CLIPSegConfig())`, random weights.
- `TMCA-L` / `Baseline-L`: `TmcaConfig()` shapes (ConvNeXt-Tiny + BERT-base), random weights.

Every model gets the same images and a text input of the same length (`--text_length` tokens, all attended).
On a machine shared with other jobs, `--threads 1` gives steadier figures: with more threads than free cores, every
thread waits for the slowest at each op, which hurts models of many small ops (TMCA's EfficientNet) most.
"""

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

import torch
from torch.utils import flop_counter


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

REFERENCE = "TMCA"
ABLATION = {"alignment_levels": [], "use_target_alignment": False, "use_target_enhancement": False}
MODEL_NAMES = ("TMCA", "Baseline", "CLIPSeg", "TMCA-L", "Baseline-L")
MATMUL_SIZE = 1024
MATMUL_KEY = "reference matmul"
TINY_IMAGE_SIZE = 64


@dataclass
class ModelSpec:
    """A model to benchmark: its row name, a note on its weights, how to build it, and its inputs for a batch size."""

    name: str
    description: str
    build: Callable[[], torch.nn.Module]
    make_inputs: Callable[[torch.nn.Module, int], dict]


# -- measuring (model-agnostic: each takes zero-argument callables) ------------------------------------------------


def time_forwards(forwards: dict[str, Callable[[], object]], repeats: int, warmup: int) -> dict[str, list[float]]:
    """
    Wall-clock seconds of `repeats` calls of each callable, after `warmup` untimed calls.

    The callables run round-robin (A, B, C, A, B, C, ...) so that a slow spell of a shared machine hits every model
    alike instead of whichever happened to run then.
    """
    for _ in range(warmup):
        for forward in forwards.values():
            forward()
    seconds = {name: [] for name in forwards}
    for _ in range(repeats):
        for name, forward in forwards.items():
            start = time.perf_counter()
            forward()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def count_flops(forward: Callable[[], object]) -> int:
    """
    FLOPs of one call (a multiply-add counts 2), by `FlopCounterMode`: matmuls, convolutions and attention only.

    `FlopCounterMode` has no formula for the CPU attention kernel (`_scaled_dot_product_flash_attention_for_cpu`), so
    it would count attention as 0; it gets the formula of the other attention kernels here.
    """
    cpu_attention = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}
    with flop_counter.FlopCounterMode(display=False, custom_mapping=cpu_attention) as counter:
        forward()
    return counter.get_total_flops()


def peak_allocated_bytes(forward: Callable[[], object]) -> int | None:
    """
    Peak bytes held by tensors allocated during one call (activations, outputs, workspaces of the CPU allocator), from
    the torch profiler's memory events; weights and other tensors that exist before the call are not counted. `None`
    when the profiler records no memory events.
    """
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities, profile_memory=True) as profiler:
        forward()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "trace.json")
        profiler.export_chrome_trace(path)
        with open(path) as file:
            events = json.load(file)["traceEvents"]
    totals = [event["args"]["Total Allocated"] for event in events if event.get("name") == "[memory]"]
    return max(totals) if totals else None


def matmul(size: int = MATMUL_SIZE) -> tuple[Callable[[], object], int]:
    """The reference workload: a float32 `torch.mm` of two `size` x `size` matrices, and its FLOPs."""
    left, right, out = torch.randn(size, size), torch.randn(size, size), torch.empty(size, size)
    return (lambda: torch.mm(left, right, out=out)), 2 * size**3


def matmul_flops_per_second(repeats: int, warmup: int, size: int = MATMUL_SIZE) -> list[float]:
    """FLOP/s of `repeats` timed reference matmuls, one sample per call."""
    forward, flops = matmul(size)
    return [flops / second for second in time_forwards({"matmul": forward}, repeats, warmup)["matmul"]]


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between closest ranks."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarise(name: str, description: str, batch_size: int, seconds: list[float], flops: int, peak_bytes, params: int):
    """One result row (no ratios yet)."""
    median = statistics.median(seconds)
    return {
        "model": name,
        "description": description,
        "batch_size": batch_size,
        "params": params,
        "flops": flops,
        "gflops_per_image": flops / batch_size / 1e9,
        "latency_median_ms": median * 1e3,
        "latency_p90_ms": percentile(seconds, 90) * 1e3,
        "throughput_images_per_s": batch_size / median,
        "peak_memory_mib": None if peak_bytes is None else peak_bytes / 2**20,
        "attained_gflops_per_s": flops / median / 1e9,
        "latencies_ms": [second * 1e3 for second in seconds],
    }


def add_ratios(rows: list[dict], matmul_flops: float, reference: str = REFERENCE) -> list[dict]:
    """Latency, FLOPs and parameter ratios against the `reference` row of the same batch size; % of matmul FLOP/s."""
    references = {row["batch_size"]: row for row in rows if row["model"] == reference}
    for row in rows:
        if row["batch_size"] not in references:
            raise ValueError(f"No {reference!r} row at batch size {row['batch_size']} to take ratios against.")
        base = references[row["batch_size"]]
        row["latency_ratio"] = row["latency_median_ms"] / base["latency_median_ms"]
        row["flops_ratio"] = row["flops"] / base["flops"]
        row["params_ratio"] = row["params"] / base["params"]
        row["percent_of_matmul"] = 100 * row["attained_gflops_per_s"] * 1e9 / matmul_flops
    return rows


# -- the models --------------------------------------------------------------------------------------------------


def _text_image_inputs(image_size: int, text_length: int, **extra):
    """Random images and token ids of the model's vocabulary, the same shapes for every model."""

    def make_inputs(model, batch_size: int) -> dict:
        vocab_size = model.config.text_config.vocab_size
        return {
            "pixel_values": torch.randn(batch_size, 3, image_size, image_size),
            "input_ids": torch.randint(vocab_size, (batch_size, text_length)),
            "attention_mask": torch.ones(batch_size, text_length, dtype=torch.long),
            **extra,
        }

    return make_inputs


def _tiny_tmca_config(**overrides):
    from tmca_hf.testing_utils import tiny_config

    return tiny_config(**overrides)


def _tiny_clipseg_config(image_size: int):
    from transformers import CLIPSegConfig

    return CLIPSegConfig(
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2},
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": 16,
        },
        projection_dim=16,
        extract_layers=[0, 1],
        reduce_dim=16,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=32,
    )


def model_specs(image_size: int, text_length: int, tiny: bool = False) -> dict[str, ModelSpec]:
    """The benchmark's models by row name; `tiny` swaps each for a tiny random one of the same class (smoke tests)."""
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation

    from tmca_hf import TmcaConfig, TmcaForImageSegmentation, from_pretrained_encoders

    tmca_inputs = _text_image_inputs(image_size, text_length)
    # A no-op when image_size equals the vision config's (224 for CLIPSegConfig()); resizes otherwise.
    clipseg_inputs = _text_image_inputs(image_size, text_length, interpolate_pos_encoding=True)

    def random_tmca(**overrides):
        config = _tiny_tmca_config(**overrides) if tiny else TmcaConfig(**overrides)
        return lambda: TmcaForImageSegmentation(config)

    def offline_tmca(**overrides):
        if tiny:
            return random_tmca(**overrides)
        return lambda: from_pretrained_encoders(image_size=image_size, max_text_length=text_length, **overrides)[0]

    clipseg_config = _tiny_clipseg_config(image_size) if tiny else CLIPSegConfig()
    pretrained = "tiny random" if tiny else "EfficientNet-Lite0 + all-MiniLM-L6-v2, pretrained encoders"
    lineage = "tiny random" if tiny else "TmcaConfig(): ConvNeXt-Tiny + BERT-base shapes, random"
    specs = [
        ModelSpec("TMCA", f"TMCA, {pretrained}", offline_tmca(), tmca_inputs),
        ModelSpec("Baseline", f"TSSD/MCA/LTE off, {pretrained}", offline_tmca(**ABLATION), tmca_inputs),
        ModelSpec(
            "CLIPSeg",
            "tiny random" if tiny else "CLIPSegConfig(): ViT-B/32 (224x224 native) + CLIP text, random",
            lambda: CLIPSegForImageSegmentation(clipseg_config),
            clipseg_inputs,
        ),
        ModelSpec("TMCA-L", f"TMCA, {lineage}", random_tmca(), tmca_inputs),
        ModelSpec("Baseline-L", f"TSSD/MCA/LTE off, {lineage}", random_tmca(**ABLATION), tmca_inputs),
    ]
    return {spec.name: spec for spec in specs}


# -- the run -----------------------------------------------------------------------------------------------------


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load_average() -> list[float] | None:
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def run_benchmark(
    specs: list[ModelSpec], batch_sizes: list[int], repeats: int, warmup: int, matmul_repeats: int, matmul_size: int
) -> dict:
    """
    Build every model, then per batch size time them round-robin together with the reference matmul (one matmul per
    round, the "during" samples that the "% of matmul" column divides by); also time the matmul alone before and after
    everything, to show how much the machine's speed drifted during the run.
    """
    environment = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_average_before": _load_average(),
    }
    matmul_before = matmul_flops_per_second(matmul_repeats, warmup, matmul_size)
    matmul_forward, matmul_flops = matmul(matmul_size)
    models = {}
    for spec in specs:
        torch.manual_seed(0)
        models[spec.name] = spec.build().eval()
    rows, matmul_during = [], []
    with torch.inference_mode():
        for batch_size in batch_sizes:
            torch.manual_seed(batch_size)
            forwards = {}
            for spec in specs:
                inputs = spec.make_inputs(models[spec.name], batch_size)
                forwards[spec.name] = lambda model=models[spec.name], inputs=inputs: model(**inputs)
            seconds = time_forwards({**forwards, MATMUL_KEY: matmul_forward}, repeats, warmup)
            matmul_during += [matmul_flops / second for second in seconds[MATMUL_KEY]]
            for spec in specs:
                params = sum(parameter.numel() for parameter in models[spec.name].parameters())
                forward = forwards[spec.name]
                flops, peak_bytes = count_flops(forward), peak_allocated_bytes(forward)
                rows.append(
                    summarise(spec.name, spec.description, batch_size, seconds[spec.name], flops, peak_bytes, params)
                )
    matmul_after = matmul_flops_per_second(matmul_repeats, warmup, matmul_size)
    environment["load_average_after"] = _load_average()
    reference = statistics.median(matmul_during)
    matmul_samples = {
        "size": matmul_size,
        "gflops_per_s_before": [value / 1e9 for value in matmul_before],
        "gflops_per_s_during": [value / 1e9 for value in matmul_during],
        "gflops_per_s_after": [value / 1e9 for value in matmul_after],
        "reference_gflops_per_s": reference / 1e9,
    }
    return {"environment": environment, "matmul": matmul_samples, "rows": add_ratios(rows, reference)}


# -- report ------------------------------------------------------------------------------------------------------


def _spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.1f} (min {min(values):.1f}, max {max(values):.1f})"


def _load_text(values: list[float] | None) -> str:
    return "n/a" if values is None else " / ".join(f"{value:.2f}" for value in values)


def to_markdown(result: dict, settings: dict) -> str:
    """The run as Markdown: setup, the noise indicators, one table, and what each column means."""
    env, matmul = result["environment"], result["matmul"]
    before, after = statistics.median(matmul["gflops_per_s_before"]), statistics.median(matmul["gflops_per_s_after"])
    lines = [
        f"## Inference benchmark (CPU, {settings['image_size']}x{settings['image_size']}, "
        f"{settings['text_length']}-token text)",
        "",
        f"{env['date']}, {env['cpu']} with {env['cpu_count']} logical cores, torch {env['torch']} on "
        f"{env['torch_threads']} thread{'s' if env['torch_threads'] != 1 else ''}, float32, `model.eval()` + `torch.inference_mode()`; "
        f"{settings['warmup']} warm-up and {settings['repeats']} timed forwards per model and batch size, "
        f"models interleaved round-robin.",
        "",
        f"Reference and noise: {matmul['size']}x{matmul['size']} float32 `torch.mm`, GFLOP/s alone before the models "
        f"{_spread(matmul['gflops_per_s_before'])}; interleaved with the models (the reference for \"% of matmul\") "
        f"{_spread(matmul['gflops_per_s_during'])}; alone after the models {_spread(matmul['gflops_per_s_after'])} "
        f"(after vs before: {100 * (after - before) / before:+.0f}%). Load average (1/5/15 min) before: "
        f"{_load_text(env['load_average_before'])}, after: {_load_text(env['load_average_after'])}.",
        "",
        "| Model | Batch | Params (M) | GFLOPs/image | Latency median (ms) | Latency p90 (ms) | Throughput (img/s) "
        "| Peak tensor memory (MiB) | GFLOP/s | % of matmul | Latency ratio | FLOPs ratio | Params ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in result["rows"]:
        memory = "n/a" if row["peak_memory_mib"] is None else f"{row['peak_memory_mib']:.1f}"
        lines.append(
            f"| {row['model']} | {row['batch_size']} | {row['params'] / 1e6:.2f} | {row['gflops_per_image']:.3f} "
            f"| {row['latency_median_ms']:.1f} | {row['latency_p90_ms']:.1f} | {row['throughput_images_per_s']:.1f} "
            f"| {memory} | {row['attained_gflops_per_s']:.1f} | {row['percent_of_matmul']:.0f}% "
            f"| {row['latency_ratio']:.2f} | {row['flops_ratio']:.2f} | {row['params_ratio']:.2f} |"
        )
    described = {row["model"]: row["description"] for row in result["rows"]}
    lines += ["", "Rows:"] + [f"- {name}: {description}." for name, description in described.items()]
    lines += [
        "",
        "Inputs: random images and random token ids (every position attended), the same shapes for every model; "
        "CLIPSeg gets `interpolate_pos_encoding=True` (a no-op at its config's native 224). "
        f"Ratios: against the {REFERENCE} row of the same batch size, same run. FLOPs: "
        "`torch.utils.flop_counter.FlopCounterMode` (multiply-add = 2 FLOPs; matmuls, convolutions and attention "
        "only, elementwise ops, norms and resizes not counted). Peak tensor memory: the torch profiler's peak of "
        "bytes allocated by tensors during one forward (activations and outputs; weights excluded; not RSS). "
        "GFLOP/s: counted FLOPs / median latency; % of matmul: that over the median GFLOP/s of the matmul interleaved "
        "with the models.",
    ]
    return "\n".join(lines)


# -- command line ------------------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch_sizes", type=_positive_int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=_positive_int, default=None, help="timed forwards per model and batch size "
                        "(default 10, or 2 with --quick)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed rounds first (default 2, or 1 with --quick)")
    parser.add_argument("--threads", type=_positive_int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument("--quick", action="store_true", help="few repeats: a smoke run, not figures to quote")
    parser.add_argument("--models", nargs="+", choices=MODEL_NAMES, default=list(MODEL_NAMES),
                        help=f"rows to run; {REFERENCE} is always run (the ratios' reference)")
    parser.add_argument("--image_size", type=_positive_int, default=None,
                        help=f"input side (default 224, or {TINY_IMAGE_SIZE} with --tiny); a multiple of 32")
    parser.add_argument("--text_length", type=_positive_int, default=24, help="text tokens per image, every model")
    parser.add_argument("--tiny", action="store_true", help="tiny random models of the same classes (smoke tests)")
    parser.add_argument("--matmul_size", type=_positive_int, default=MATMUL_SIZE, help="side of the reference matmul")
    parser.add_argument("--output_json", default=None, help="also write every figure and raw latency here")
    args = parser.parse_args(argv)
    if args.image_size is None:
        args.image_size = TINY_IMAGE_SIZE if args.tiny else 224
    if args.image_size % 32:
        parser.error(f"--image_size must be a multiple of 32 (TMCA's coarsest stride), got {args.image_size}")
    if args.repeats is None:
        args.repeats = 2 if args.quick else 10
    if args.warmup is None:
        args.warmup = 1 if args.quick else 2
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    args.models = [REFERENCE] + [name for name in dict.fromkeys(args.models) if name != REFERENCE]
    return args


def main(argv=None) -> dict:
    """Run the benchmark, print the Markdown report, write the JSON when asked; return the result."""
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    specs = model_specs(args.image_size, args.text_length, tiny=args.tiny)
    result = run_benchmark(
        [specs[name] for name in args.models], args.batch_sizes, args.repeats, args.warmup,
        matmul_repeats=3 if args.quick else 20, matmul_size=args.matmul_size,
    )
    keys = ("image_size", "text_length", "repeats", "warmup", "quick", "tiny", "models")
    settings = {key: getattr(args, key) for key in keys}
    result["settings"] = settings
    print(to_markdown(result, settings), flush=True)
    if args.output_json:
        with open(args.output_json, "w") as file:
            json.dump(result, file, indent=2)
    return result


if __name__ == "__main__":
    main()
