"""Data for TMCA: image-report-mask triplets from the layouts users bring, as a `datasets.DatasetDict`.

Every reader returns one [`datasets.Dataset`] per split with four columns:

- `image` (`datasets.Image`): the image file's own bytes (PNG, JPEG, ...), not re-encoded;
- `mask` (`datasets.Image`): a single-channel ("L") PNG with values 0 (background) and 255 (lesion);
- `text` (`string`): the report that guides the segmentation;
- `id` (`string`): the example's name (file stem without a `mask_` prefix).

Split names follow the `datasets` convention everywhere: `train`, `validation`, `test`. Names found on disk are
mapped case-insensitively, with an LViT `_Folder` suffix removed: `Train` -> `train`; `Val`, `Valid`, `Validation`,
`Dev` -> `validation`; `Test` -> `test`; any other name is kept in lower case (`testA` -> `testa`).

Masks follow the one mask rule of `tmca_hf.modeling.imaging_tmca` (its module docstring): each mask file is put on the
0..255 scale, refused as *not binary* when more than 2 % of its pixels are mid-gray or when nothing lies above
`mask_threshold` (default 127), and stored as `value > mask_threshold` -> 255, else 0. Images are read by the same
module, so what is checked here is what the processor decodes.

Other checks while reading: an image without a mask or a report (or a mask without an image), several files or
conflicting reports for one id, an id listed in two splits, a mask whose size differs from its image's, an
unreadable or corrupt file (every image and mask is decoded once), an empty report. All problems are collected and
raised as one [`DatasetValidationError`] listing each file and why; with `skip_invalid=True` those examples are left
out, a warning gives their number, and the returned DatasetDict's `invalid_examples` lists them.

Reports: LViT/GuideDecoder tables are matched to files by name without extension and without a `mask_` prefix;
medvlsm records give their report through `prompt_key` (default "p6", the richest single sentence; p7-p9 hold
lists of sentences, of which the first is used, so the text stays deterministic).

Saving, pushing and the dataset card are in `tmca_hf.dataset_publishing`; the `Trainer` collator and the zoom
augmentation (`TmcaSegmentationCollator`, `RandomZoom`) in `tmca_hf.training_data`.
"""

import os
import warnings
from pathlib import Path
from typing import Optional, Union

import datasets

from ..modeling.imaging_tmca import MASK_THRESHOLD
from .checks import (
    DatasetValidationError,
    build_split,
    normalize_split_name,
)
from .flat import read_flat
from .lvit import lvit_split_folders, read_lvit
from .medvlsm import read_medvlsm
from .prebuilt import check_prebuilt_split, is_hub_id, load_prebuilt
from .sources import source_info


LAYOUTS = ("lvit", "flat", "medvlsm", "disk", "parquet", "hub")

LAYOUT_HELP = """\
  lvit:    <Split>_Folder/img/*.png, <Split>_Folder/labelcol/*.png (same names, or with a "mask_" prefix) and a
           text table with columns Image, Description: <Split>_Folder/<Split>_text.xlsx (LViT) or .csv; the
           GuideDecoder variant <Split>/Images, <Split>/GTs with prompt/<split>.csv is read too.
  flat:    images/<id>.png, masks/<id>.png, reports/<id>.txt and split.json ({"train": [ids], "val": [ids]}).
  medvlsm: images/, masks/ and anns/<split>.json (a list of records with img_name, mask_name, prompts {p0..p9}).
  disk:    a folder written by DatasetDict.save_to_disk (dataset_dict.json) or save_tmca_dataset(format="arrow").
  parquet: parquet shards such as data/train-00000-of-00001.parquet (save_tmca_dataset(format="parquet"), Hub).
  hub:     a Hub dataset id such as "user/name" (datasets.load_dataset)."""




def detect_layout(folder: Union[str, os.PathLike]) -> str:
    """The layout of a local folder: "lvit", "flat", "medvlsm", "disk" or "parquet"; ValueError when none fits."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder.")
    has = {name: (root / name).is_dir() for name in ("images", "masks", "reports", "anns")}
    matches = []
    if (root / "dataset_dict.json").is_file() or (root / "state.json").is_file():
        matches.append("disk")
    if has["images"] and has["masks"] and has["reports"]:
        matches.append("flat")
    if has["images"] and has["masks"] and has["anns"]:
        matches.append("medvlsm")
    if lvit_split_folders(root):
        matches.append("lvit")
    if not matches and next(root.rglob("*.parquet"), None) is not None:
        matches.append("parquet")
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ValueError(f"{root} looks like several layouts ({', '.join(matches)}); pass layout= to choose one.")
    raise ValueError(f"{root} matches no known dataset layout. The layouts are:\n{LAYOUT_HELP}")






def from_examples(examples: dict, threshold: int, info: datasets.DatasetInfo) -> tuple:
    splits, problems = {}, []
    for split, split_examples in examples.items():
        splits[split], split_problems = build_split(split_examples, threshold, info)
        problems.extend(split_problems)
    return datasets.DatasetDict(splits), problems




def load_tmca_dataset(
    source: Union[str, os.PathLike],
    *,
    layout: str = "auto",
    prompt_key: str = "p6",
    text_column: Optional[str] = None,
    mask_threshold: int = MASK_THRESHOLD,
    skip_invalid: bool = False,
    splits=None,
    **load_dataset_kwargs,
) -> datasets.DatasetDict:
    """
    Read image-report-mask triplets into a `DatasetDict` with columns image, mask, text, id (see the module docstring
    for split names and the binary-mask rule).

    Args:
        source: a local folder in the LViT, flat or medvlsm layout, a folder written by `save_to_disk` or
            [`save_tmca_dataset`], a folder of parquet shards, or a Hub dataset id.
        layout: "auto" (detect), or one of "lvit", "flat", "medvlsm", "disk", "parquet", "hub".
        prompt_key: medvlsm prompt used as the report ("p0".."p9"; p7-p9 are lists: their first sentence is used).
        text_column: the report column of a saved/parquet/Hub dataset, when it is not "text".
        mask_threshold: mask values above it are lesion (0..254).
        skip_invalid: leave invalid examples out (with a warning) instead of raising one
            [`DatasetValidationError`] that lists them all.
        splits: only read these splits (names as on disk or normalised, e.g. ["train", "val"]).
        **load_dataset_kwargs: passed to `datasets.load_dataset` for Hub ids (revision, token, cache_dir, ...).

    Returns:
        `datasets.DatasetDict`. Its attribute `invalid_examples` lists the skipped [`InvalidExample`]s (empty when
        nothing was skipped); DatasetDict methods return new objects without it.
    """
    if load_dataset_kwargs and not (layout in ("auto", "hub") and not Path(source).exists()):
        raise TypeError(
            f"load_tmca_dataset got unexpected keyword arguments {sorted(load_dataset_kwargs)} (extra keywords only "
            f"go to datasets.load_dataset for Hub ids)."
        )
    if layout != "auto" and layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is not one of 'auto', {', '.join(map(repr, LAYOUTS))}.")
    if not 0 <= int(mask_threshold) < 255:
        raise ValueError(f"mask_threshold={mask_threshold} must lie in 0..254.")
    path = Path(source)
    if layout == "auto":
        if path.exists():
            layout = detect_layout(path)
        elif is_hub_id(str(source)):
            layout = "hub"
        else:
            raise FileNotFoundError(f"{source} is neither an existing folder nor a Hub dataset id ('user/name').")
    elif layout != "hub" and not path.is_dir():
        raise FileNotFoundError(f"{source} is not a folder (layout={layout!r} reads a local folder).")
    wanted = None if splits is None else {normalize_split_name(name) for name in splits}
    raw_layout = layout in ("lvit", "flat", "medvlsm")
    if text_column is not None and raw_layout:
        raise ValueError(
            f"text_column applies to saved, parquet and Hub datasets; the {layout} layout defines its reports "
            f"(use prompt_key= for medvlsm)."
        )

    if raw_layout:
        readers = {"lvit": read_lvit, "flat": read_flat, "medvlsm": lambda root: read_medvlsm(root, prompt_key)}
        examples = readers[layout](path)  # cheap: file lists and reports; images are decoded for wanted splits only
        _check_wanted(source, wanted, examples)
        examples = {split: found for split, found in examples.items() if wanted is None or split in wanted}
        dataset_dict, problems = from_examples(examples, mask_threshold, source_info(path, layout, prompt_key))
    else:
        loaded = load_prebuilt(source, layout, load_dataset_kwargs)
        _check_wanted(source, wanted, loaded)
        checked, problems = {}, []
        for split, dataset in loaded.items():
            if wanted is None or split in wanted:
                checked[split], found = check_prebuilt_split(split, dataset, text_column or "text", mask_threshold)
                problems.extend(found)
        dataset_dict = datasets.DatasetDict(checked)

    if problems and not skip_invalid:
        raise DatasetValidationError(source, problems)
    if problems:
        warnings.warn(
            f"Skipped {len(problems)} invalid example(s) in {source}; see .invalid_examples for the list.", stacklevel=2
        )
    dataset_dict.invalid_examples = problems  # inspectable count and list of what was skipped
    return dataset_dict


def load_split(source, split: str, *, prompt_key: str = "p6", skip_invalid: bool = False) -> tuple:
    """One split for the command-line tools: (Dataset, skipped [`InvalidExample`]s). The tool lists what was skipped
    (`skipped_message`), so the library's warning is not repeated."""
    split = normalize_split_name(split)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Skipped \d+ invalid example", category=UserWarning)
        loaded = load_tmca_dataset(source, prompt_key=prompt_key, splits=[split], skip_invalid=skip_invalid)
    return loaded[split], loaded.invalid_examples


def skipped_message(problems: list) -> str:
    """What a command line says about the examples --skip_invalid left out: how many, and each file and why."""
    shown = "\n  ".join(map(str, problems[:20])) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
    return f"skipped {len(problems)} invalid example(s) (--skip_invalid):\n  {shown}"


def _check_wanted(source, wanted, found) -> None:
    if wanted is not None and not wanted <= set(found):
        raise ValueError(f"Split(s) {sorted(wanted - set(found))} not found in {source}; it has {sorted(found)}.")
    if not found:
        raise ValueError(f"No splits found in {source}.")
