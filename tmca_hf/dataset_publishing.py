"""Saving and publishing TMCA datasets: `save_tmca_dataset` (arrow, or parquet shards with a dataset card),
`make_dataset_card` and `push_tmca_dataset` (a Hub dataset repo).

They take the `DatasetDict` that `tmca_hf.data.load_tmca_dataset` returns (columns image, mask, text, id; provenance in
each split's `DatasetInfo`). Files are written only inside the folder the caller names: a new copy is written beside
it first and then moved in place, and an existing folder is replaced only when it holds a dataset saved here.
"""

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Union

import datasets
import pyarrow.parquet as pq


MAX_PARQUET_SHARD_BYTES = 500 << 20
MAX_ROW_GROUP_BYTES = 100 << 20


def _is_saved_dataset(folder: Path) -> bool:
    """A folder that save_tmca_dataset (or save_to_disk) wrote: the only kind overwrite=True may delete."""
    if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
        return True
    names = {path.name for path in folder.iterdir()}
    data = folder / "data"
    return names <= {"data", "README.md"} and data.is_dir() and all(p.suffix == ".parquet" for p in data.iterdir())


def _prepare_output(output_dir: Path, overwrite: bool, dataset_dict) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f"{output_dir} exists and is not a folder.")
    if output_dir.is_dir() and any(output_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{output_dir} exists and is not empty; pass overwrite=True (--overwrite) to replace it."
            )
        if not _is_saved_dataset(output_dir):
            raise FileExistsError(
                f"{output_dir} is not empty and does not look like a dataset saved by save_tmca_dataset "
                f"(dataset_dict.json, or data/*.parquet); refusing to delete it even with overwrite=True."
            )
    resolved = output_dir.resolve()
    for dataset in dataset_dict.values():
        for cache_file in dataset.cache_files:
            if resolved in Path(cache_file["filename"]).resolve().parents:
                raise ValueError(f"Cannot overwrite {output_dir}: the dataset being saved is read from it.")


def _write_parquet_split(dataset: datasets.Dataset, folder: Path, split: str) -> None:
    """Shards of at most ~500 MB, row groups of at most ~100 MB, with features and provenance in the metadata."""
    num_shards = max(1, math.ceil(dataset.data.nbytes / MAX_PARQUET_SHARD_BYTES))
    rows_per_group = max(1, len(dataset) * MAX_ROW_GROUP_BYTES // max(dataset.data.nbytes, 1))
    info = {
        "features": dataset.features.to_dict(),
        "description": dataset.info.description,
        "citation": dataset.info.citation,
        "license": dataset.info.license,
    }
    arrow = dataset.with_format("arrow")
    for index in range(num_shards):
        shard = arrow.shard(num_shards, index, contiguous=True)[:]
        shard = shard.replace_schema_metadata({"huggingface": json.dumps({"info": info})})
        path = folder / f"{split}-{index:05d}-of-{num_shards:05d}.parquet"
        pq.write_table(shard, path, row_group_size=rows_per_group)


def save_tmca_dataset(
    dataset_dict: datasets.DatasetDict,
    output_dir: Union[str, os.PathLike],
    format: str = "arrow",
    *,
    overwrite: bool = False,
) -> Path:
    """
    Save a TMCA `DatasetDict`: `format="arrow"` writes `save_to_disk` (fast to reload, keeps provenance);
    `format="parquet"` writes `data/<split>-00000-of-0000N.parquet` shards and a README dataset card, the layout the
    Hub uses (`load_dataset(output_dir)` and [`load_tmca_dataset`] read it). An existing non-empty `output_dir` is
    only replaced with `overwrite=True`; the new copy is written beside it first and then moved in place.
    """
    if format not in ("arrow", "parquet"):
        raise ValueError(f"format={format!r}; expected 'arrow' or 'parquet'.")
    if not isinstance(dataset_dict, datasets.DatasetDict):
        raise TypeError(f"Expected a datasets.DatasetDict, got {type(dataset_dict).__name__}.")
    output_dir = Path(output_dir)
    _prepare_output(output_dir, overwrite, dataset_dict)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}-", dir=output_dir.parent))
    written = staging / "dataset"
    try:
        if format == "arrow":
            dataset_dict.save_to_disk(str(written))
        else:
            (written / "data").mkdir(parents=True)
            for split, dataset in dataset_dict.items():
                _write_parquet_split(dataset, written / "data", split)
            (written / "README.md").write_text(make_dataset_card(dataset_dict), encoding="utf-8")
        if output_dir.exists():
            shutil.rmtree(output_dir)
        os.replace(written, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir


def _size_category(count: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if count < limit:
            return name
    return "n>1M"


def make_dataset_card(
    dataset_dict: datasets.DatasetDict, repo_id: Optional[str] = None, pretty_name: Optional[str] = None
) -> str:
    """
    A Hub dataset card (README.md with YAML metadata) for a TMCA `DatasetDict`: split sizes, columns, the mask
    convention, the source description, licences and citations that [`load_tmca_dataset`] recorded in the
    splits' `DatasetInfo` (from the source folder's README), and the research-use note.
    """
    from huggingface_hub import DatasetCardData

    first = next(iter(dataset_dict.values()))
    name = pretty_name or (repo_id.split("/")[-1] if repo_id else "TMCA image-report-mask dataset")
    total = sum(len(split) for split in dataset_dict.values())
    metadata = DatasetCardData(
        pretty_name=name,
        license="other",
        language=["en"],
        task_categories=["image-segmentation"],
        size_categories=[_size_category(total)],
        tags=["medical", "language-guided-segmentation", "tmca"],
    )
    rows = "\n".join(f"| {split} | {len(dataset):,} |" for split, dataset in dataset_dict.items())
    load_name = repo_id or "<repo_id or folder>"
    licences = first.info.license.strip() or "Not recorded: add the licences of the original sources."
    citation = first.info.citation.strip() or "Not recorded: add the citations of the original sources."
    description = first.info.description.strip() or "Not recorded."
    return f"""---
{metadata.to_yaml()}
---

# {name}

Image, report and lesion-mask triplets for language-guided medical image segmentation (TMCA, `tmca-hf`).

## Dataset structure

| split | examples |
| --- | --- |
{rows}

Columns:
- `image` (Image): the image, as in the source (gray or RGB);
- `mask` (Image): single-channel PNG, 0 = background, 255 = lesion (same size as the image);
- `text` (string): the report that guides the segmentation;
- `id` (string): the example's name in the source.

```python
from datasets import load_dataset
dataset = load_dataset("{load_name}")
# or, with tmca-hf (checks masks and reports): tmca_hf.data.load_tmca_dataset("{load_name}")
```

## Source

{description}

## Licence

The images, masks and reports keep the licences of their original sources:

{licences}

## Intended use

Research use only; not for clinical decisions.

## Citation

```bibtex
{citation}
```
"""


def push_tmca_dataset(
    dataset_dict: datasets.DatasetDict,
    repo_id: str,
    private: bool = False,
    card: Optional[str] = None,
    *,
    token: Optional[str] = None,
):
    """
    Push a TMCA `DatasetDict` to a Hub dataset repo as parquet, with a dataset card (`card`, or
    [`make_dataset_card`]'s). The card goes up first; `push_to_hub` then adds its `dataset_info`/`configs`
    metadata to it. Returns the commit info of the data upload.
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True).repo_id
    card_text = card if card is not None else make_dataset_card(dataset_dict, repo_id=repo_id)
    api.upload_file(
        path_or_fileobj=card_text.encode("utf-8"),
        path_in_repo="README.md",
        repo_id=repo_id,
        repo_type="dataset",
        commit_message="Add dataset card",
    )
    return dataset_dict.push_to_hub(repo_id, private=private, token=token)


__all__ = ["make_dataset_card", "push_tmca_dataset", "save_tmca_dataset"]
