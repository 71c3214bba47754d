"""Datasets that were already built: `save_to_disk` folders, parquet shards and Hub ids, read by `datasets` itself
(`load_from_disk`, `load_dataset`) and put through the same checks as the raw layouts.
"""

import json
import re
from pathlib import Path

import datasets
import pyarrow.parquet as pq

from .checks import (
    FEATURES,
    InvalidExample,
    check_pair,
    in_memory_dataset,
    normalize_split_name,
    parallel_map,
    report_text,
)


def check_prebuilt_split(split: str, dataset: datasets.Dataset, text_column: str, threshold: int):
    """Check a saved/parquet/Hub split. Returns (Dataset with the four columns, list of InvalidExample)."""
    missing = [name for name in ("image", "mask", text_column) if name not in dataset.column_names]
    if missing:
        raise ValueError(
            f"Split {split!r} has columns {dataset.column_names}; missing {missing}. Expected an 'image' and a "
            f"'mask' column (datasets.Image) and a report column (pass text_column= when it is not 'text')."
        )
    for name in ("image", "mask"):
        if not isinstance(dataset.features[name], datasets.Image):
            raise ValueError(
                f"Column {name!r} of split {split!r} is {dataset.features[name]}; expected datasets.Image()."
            )
    columns = ["image", "mask", text_column] + (["id"] if "id" in dataset.column_names else [])
    raw = dataset.select_columns(columns).cast_column("image", datasets.Image(decode=False))
    raw = raw.cast_column("mask", datasets.Image(decode=False))

    def check(row: dict):
        """row -> (output row or None, reason or None, mask rewritten?)."""
        image, mask, text = row["image"], row["mask"], report_text(row[text_column])
        if text is None:
            return None, "empty report", False
        image_bytes, mask_bytes = image["bytes"], mask["bytes"]
        try:
            image_bytes = image_bytes if image_bytes is not None else Path(image["path"]).read_bytes()
            mask_bytes = mask_bytes if mask_bytes is not None else Path(mask["path"]).read_bytes()
        except (OSError, TypeError) as error:
            return None, f"unreadable file ({error})", False
        new_mask, reason = check_pair(image_bytes, mask_bytes, threshold)
        if reason is not None:
            return None, reason, False
        out = {"image": {"bytes": image_bytes, "path": image["path"]}, "text": text, "id": str(row["id"])}
        out["mask"] = {"bytes": new_mask, "path": f"{row['id']}.png"}
        return out, None, new_mask is not mask_bytes

    rows, problems, rewritten, start = [], [], False, 0
    for batch in raw.iter(batch_size=256):
        size = len(batch["image"])
        ids = batch.get("id") or [f"{split}-{index:06d}" for index in range(start, start + size)]
        batch_rows = [{**{name: batch[name][i] for name in batch}, "id": ids[i]} for i in range(size)]
        for index, (out, reason, changed) in enumerate(parallel_map(check, batch_rows), start=start):
            if reason is not None:
                problems.append(InvalidExample(split, f"row {index} (id {ids[index - start]})", reason))
            else:
                rows.append(out)
                rewritten = rewritten or changed
        start += size
    clean = dataset.select_columns(list(FEATURES)) if text_column == "text" and "id" in dataset.column_names else None
    if not problems and not rewritten and clean is not None and clean.features == FEATURES:
        return clean, problems  # already clean: keep it as it is (memory-mapped when on disk)
    return in_memory_dataset(rows, dataset.info), problems


def read_parquet_folder(root: Path) -> datasets.DatasetDict:
    """
    Parquet shards named by the Hub conventions (data/train-00000-of-00001.parquet, train/*.parquet, ...), read by
    `datasets.load_dataset("parquet")`. Its parquet builder keeps the features (Image columns) but not the
    description, citation and licence that `save_tmca_dataset` stores in the shards' metadata: those are put back.
    """
    from datasets.data_files import DataFilesDict, get_data_patterns

    files = DataFilesDict.from_patterns(get_data_patterns(str(root)), base_path=str(root))
    data_files = {split: [path for path in paths if path.endswith(".parquet")] for split, paths in files.items()}
    data_files = {split: paths for split, paths in data_files.items() if paths}
    if not data_files:
        raise ValueError(f"No parquet shards named by split found in {root} (e.g. data/train-00000-of-00001.parquet).")
    loaded = datasets.load_dataset("parquet", data_files=data_files)
    for split, paths in data_files.items():
        metadata = json.loads((pq.read_schema(paths[0]).metadata or {}).get(b"huggingface", b"{}")).get("info", {})
        for key in ("description", "citation", "license"):
            setattr(loaded[split].info, key, metadata.get(key, ""))
    return loaded


def load_prebuilt(source, layout: str, load_kwargs: dict) -> datasets.DatasetDict:
    if layout == "disk":
        loaded = datasets.load_from_disk(str(source))
    elif layout == "parquet":
        loaded = read_parquet_folder(Path(source))
    else:
        loaded = datasets.load_dataset(str(source), **load_kwargs)
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({str(loaded.split or "train"): loaded})
    if not isinstance(loaded, datasets.DatasetDict):
        raise ValueError(f"{source} gave a {type(loaded).__name__}; expected a DatasetDict of map-style datasets.")
    return datasets.DatasetDict({normalize_split_name(name): split for name, split in loaded.items()})


def is_hub_id(source: str) -> bool:
    """'name' or 'user/name', unless it reads as a missing file in an existing local folder ('samples/typo')."""
    parent = Path(source).parent
    looks_local = source.startswith((".", "/", "~")) or (parent != Path(".") and parent.is_dir())
    return bool(re.fullmatch(r"[\w.-]+(/[\w.-]+)?", source)) and not looks_local
