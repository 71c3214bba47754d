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

import argparse
import io
import json
import math
import os
import re
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from .dataset_publishing import push_tmca_dataset, save_tmca_dataset
from .modeling.imaging_tmca import MASK_THRESHOLD, ImageReadError, open_image, read_image, threshold_mask


FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "mask": datasets.Image(),
        "text": datasets.Value("string"),
        "id": datasets.Value("string"),
    }
)
LAYOUTS = ("lvit", "flat", "medvlsm", "disk", "parquet", "hub")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SPLIT_FOLDER = r"(train|val|valid|validation|dev|test)(_folder)?"  # LViT/GuideDecoder split folder names

LAYOUT_HELP = """\
  lvit:    <Split>_Folder/img/*.png, <Split>_Folder/labelcol/*.png (same names, or with a "mask_" prefix) and a
           text table with columns Image, Description: <Split>_Folder/<Split>_text.xlsx (LViT) or .csv; the
           GuideDecoder variant <Split>/Images, <Split>/GTs with prompt/<split>.csv is read too.
  flat:    images/<id>.png, masks/<id>.png, reports/<id>.txt and split.json ({"train": [ids], "val": [ids]}).
  medvlsm: images/, masks/ and anns/<split>.json (a list of records with img_name, mask_name, prompts {p0..p9}).
  disk:    a folder written by DatasetDict.save_to_disk (dataset_dict.json) or save_tmca_dataset(format="arrow").
  parquet: parquet shards such as data/train-00000-of-00001.parquet (save_tmca_dataset(format="parquet"), Hub).
  hub:     a Hub dataset id such as "user/name" (datasets.load_dataset)."""


# ------------------------------------------------------------------------------------------------ errors


@dataclass(frozen=True)
class InvalidExample:
    """One example that failed the checks: its split, the offending file (or row) and why."""

    split: str
    path: str
    reason: str

    def __str__(self) -> str:
        return f"[{self.split}] {self.path}: {self.reason}"


class DatasetValidationError(ValueError):
    """Raised once for all invalid examples of a dataset; `problems` lists them as [`InvalidExample`]s."""

    def __init__(self, source, problems: list):
        self.problems = list(problems)
        lines = "\n".join(f"  {problem}" for problem in self.problems)
        super().__init__(
            f"{len(self.problems)} invalid example(s) in {source}; fix them, or pass skip_invalid=True "
            f"(--skip_invalid) to leave them out:\n{lines}"
        )


# ------------------------------------------------------------------------------------------------ names


def normalize_split_name(name: str) -> str:
    """`Train_Folder` -> `train`, `Val`/`valid`/`dev` -> `validation`, `Test` -> `test`; others lower-cased."""
    key = re.sub(r"_folder$", "", str(name).strip().lower())
    key = {"val": "validation", "valid": "validation", "dev": "validation"}.get(key, key)
    if not re.fullmatch(r"\w+", key):
        raise ValueError(f"Split name {name!r} is not usable: expected letters, digits and underscores.")
    return key


def _example_key(filename: str) -> str:
    """File name -> example id: the stem, without the `mask_` prefix that QaTa-COV19 masks carry."""
    stem = os.path.splitext(os.path.basename(filename))[0]
    return stem[len("mask_") :] if stem.startswith("mask_") else stem


def _child(folder: Path, *names: str) -> Optional[Path]:
    """The first sub-folder of `folder` whose name matches one of `names`, ignoring case."""
    children = {child.name.lower(): child for child in folder.iterdir() if child.is_dir()} if folder.is_dir() else {}
    return next((children[name.lower()] for name in names if name.lower() in children), None)


def _image_files(folder: Path) -> dict:
    """id -> list of image files in `folder` with that id (more than one is an ambiguity the caller reports)."""
    files = {}
    with os.scandir(folder) as entries:  # plain strings and scandir's cached is_file(): thousands of files stay cheap
        names = sorted(entry.name for entry in entries if entry.is_file())
    for name in names:
        if os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
            files.setdefault(_example_key(name), []).append(folder / name)
    return files


# ------------------------------------------------------------------------------------------------ checks


@dataclass
class _Example:
    """An example before decoding: where its files are, its report, and the problems already known."""

    split: str
    id: str
    image: Optional[Path] = None
    mask: Optional[Path] = None
    text: Optional[str] = None
    where: str = ""
    problems: list = field(default_factory=list)


def _png_bytes(lesion) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(lesion.numpy().astype(np.uint8) * np.uint8(255)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _check_pair(image_bytes: bytes, mask_bytes: bytes, threshold: int):
    """Decode and check one image and its mask (`imaging_tmca`'s reading and mask rule). Returns (mask PNG bytes or
    None, reason or None); the mask's own bytes are kept when it is already a 0/255 gray PNG."""
    try:
        height, width = read_image(image_bytes, name="it", max_pixels=None, min_side=1).size
    except ImageReadError as error:
        return None, f"unreadable image: {error}"
    try:
        mask = open_image(mask_bytes, name="it", max_pixels=None, min_side=1)
    except ImageReadError as error:
        return None, f"unreadable mask: {error}"
    if mask.size != (width, height):
        return None, f"mask is {mask.size[0]}x{mask.size[1]} but the image is {width}x{height}"
    try:
        lesion = threshold_mask(mask, "mask", threshold)
    except ValueError as error:
        return None, str(error)
    counts = mask.histogram() if mask.format == "PNG" and mask.mode == "L" else []
    if counts and counts[0] + counts[255] == mask.width * mask.height:
        return mask_bytes, None  # already a 0/255 gray PNG: its bytes are kept as they are
    return _png_bytes(lesion), None


def _read_bytes(path: Path, what: str):
    try:
        return path.read_bytes(), None
    except OSError as error:
        return None, f"unreadable {what} ({error.strerror or error})"


def _load_example(example: _Example, threshold: int):
    """Read and check one raw example. Returns (row or None, list of reasons)."""
    if example.problems:
        return None, example.problems
    image_bytes, reason = _read_bytes(example.image, "image")
    if reason is None:
        mask_bytes, reason = _read_bytes(example.mask, "mask")
    if reason is None:
        mask_bytes, reason = _check_pair(image_bytes, mask_bytes, threshold)
    if reason is not None:
        return None, [reason]
    row = {
        "image": {"bytes": image_bytes, "path": example.image.name},
        "mask": {"bytes": mask_bytes, "path": f"{example.id}.png"},
        "text": example.text,
        "id": example.id,
    }
    return row, []


def _parallel_map(function, items: list) -> list:
    """`map` over threads: PIL and numpy release the GIL while decoding, so this scales with the cores."""
    workers = min(8, os.cpu_count() or 1)
    if workers == 1 or len(items) < 64:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(function, items, chunksize=32))


def _in_memory_dataset(rows: list, info: datasets.DatasetInfo) -> datasets.Dataset:
    """Rows of encoded image/mask bytes -> an in-memory Dataset with the four columns and `info`'s provenance. Nothing
    is written to disk (no cache files); `from_dict` fingerprints it by hashing its bytes (~40 ms per 1,000 QaTa
    images)."""
    info = info.copy()
    info.features = FEATURES
    columns = {name: [row[name] for row in rows] for name in FEATURES}
    return datasets.Dataset.from_dict(columns, features=FEATURES, info=info)


def _build_split(examples: list, threshold: int, info: datasets.DatasetInfo):
    """Decode and check a split's examples. Returns (Dataset of the valid ones, list of InvalidExample)."""
    results = _parallel_map(lambda example: _load_example(example, threshold), examples)
    rows, problems = [], []
    for example, (row, reasons) in zip(examples, results):
        if row is not None:
            rows.append(row)
        problems.extend(InvalidExample(example.split, example.where, reason) for reason in reasons)
    return _in_memory_dataset(rows, info), problems


def _report_text(text) -> Optional[str]:
    """A report cell/file as a stripped string, None when missing or empty (NaN from pandas included)."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return None
    text = str(text).strip()
    return text or None


def _pair_files(split, root: Path, key: str, images: dict, masks: dict, mask_dir: Path, text, text_problem):
    """An example from its id, the id -> files maps of the image and mask folders, and its report (or why not)."""
    example = _Example(split=split, id=key, text=text)
    found = images.get(key, [])
    example.where = str(found[0])[len(str(root)) + 1 :] if found else key  # relative to root, without pathlib's cost
    if len(found) == 1:
        example.image = found[0]
    else:
        example.problems.append("no image file" if not found else f"{len(found)} image files with this id")
    found = masks.get(key, [])
    if len(found) == 1:
        example.mask = found[0]
    else:
        example.problems.append(f"no mask in {mask_dir.name}/" if not found else f"{len(found)} mask files")
    if text_problem is not None:
        example.problems.append(text_problem)
    return example


# ------------------------------------------------------------------------------------------------ layouts


def _lvit_split_folders(root: Path) -> dict:
    """split -> (split folder, image folder, mask folder): LViT `Train_Folder/img`, GuideDecoder `Train/Images`."""
    found = {}
    for folder in sorted(root.iterdir()):
        if not folder.is_dir() or not re.fullmatch(SPLIT_FOLDER, folder.name.lower()):
            continue
        image_dir, mask_dir = _child(folder, "img", "images"), _child(folder, "labelcol", "gts", "masks")
        if image_dir is not None and mask_dir is not None:
            found[normalize_split_name(folder.name)] = (folder, image_dir, mask_dir)
    return found


def _read_text_table(path: Path) -> dict:
    """An LViT/GuideDecoder text table (xlsx or csv) with columns Image, Description -> {id: [descriptions]}."""
    import pandas as pd

    try:
        table = pd.read_excel(path, dtype=str) if path.suffix.lower() == ".xlsx" else pd.read_csv(path, dtype=str)
    except Exception as error:  # pandas/openpyxl raise many types for malformed files
        raise ValueError(f"Cannot read the text table {path}: {error}") from None
    columns = {str(column).strip().lower(): column for column in table.columns}
    if "image" not in columns or "description" not in columns:
        raise ValueError(
            f"The text table {path} has columns {list(table.columns)}; expected 'Image' (file name) and "
            f"'Description' (report)."
        )
    texts = {}
    for name, text in zip(table[columns["image"]], table[columns["description"]]):
        if isinstance(name, str) and name.strip():
            texts.setdefault(_example_key(name.strip()), []).append(text)
    return texts


def _lvit_text_tables(root: Path, split: str, folder: Path) -> list:
    """The tables holding a split's reports: in the split folder, GuideDecoder's prompt/<split>.csv, or the root."""
    own = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in (".xlsx", ".csv"))
    if own:
        return own
    prompt_dir = _child(root, "prompt", "prompts")
    if prompt_dir is not None:
        raw = folder.name.lower().removesuffix("_folder")
        guide = [p for p in prompt_dir.iterdir() if p.suffix.lower() == ".csv" and p.stem.lower() in (raw, split)]
        if guide:
            return guide
    shared = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in (".xlsx", ".csv"))
    if shared:
        return shared
    raise ValueError(
        f"No text table for {folder}: expected {folder.name}/{folder.name.split('_')[0]}_text.xlsx (LViT), "
        f"prompt/{split}.csv (GuideDecoder) or a table with columns Image, Description in {root}."
    )


def _read_lvit(root: Path) -> dict:
    """LViT / GuideDecoder layout -> {split: [_Example]}."""
    examples = {}
    for split, (folder, image_dir, mask_dir) in _lvit_split_folders(root).items():
        texts = {}
        for table in _lvit_text_tables(root, split, folder):
            for key, values in _read_text_table(table).items():
                texts.setdefault(key, []).extend(values)
        images, masks = _image_files(image_dir), _image_files(mask_dir)
        split_examples = []
        for key in sorted(images):
            values = texts.get(key, [])
            reports = {text for text in map(_report_text, values) if text is not None}
            text = next(iter(reports)) if len(reports) == 1 else None
            problem = (
                None if text is not None
                else f"{len(reports)} different reports in the text table" if reports
                else "empty report" if values
                else "no report in the text table"
            )
            split_examples.append(_pair_files(split, root, key, images, masks, mask_dir, text, problem))
        for key in sorted(set(masks) - set(images)):
            where = str(masks[key][0].relative_to(root))
            split_examples.append(_Example(split, key, where=where, problems=["mask without an image"]))
        examples[split] = split_examples
    return examples


def _read_flat(root: Path) -> dict:
    """Flat layout (images/, masks/, reports/, split.json) -> {split: [_Example]}."""
    split_file = root / "split.json"
    if not split_file.is_file():
        raise ValueError(f"{root} has images/, masks/ and reports/ but no split.json ({{split: [ids]}}).")
    try:
        split_ids = json.loads(split_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"Cannot read {split_file}: {error}") from None
    if not isinstance(split_ids, dict) or not all(isinstance(ids, list) for ids in split_ids.values()):
        raise ValueError(f"{split_file} must hold {{split name: [ids]}}, got {type(split_ids).__name__}.")
    images, masks = _image_files(root / "images"), _image_files(root / "masks")
    seen, examples = {}, {}
    for raw_split, ids in split_ids.items():
        split = normalize_split_name(raw_split)
        split_examples = []
        for key in map(str, ids):
            text, problem = _read_report(root / "reports" / f"{key}.txt")
            example = _pair_files(split, root, key, images, masks, root / "masks", text, problem)
            if key in seen:
                example.problems.append(f"also listed in split {seen[key]!r} of split.json")
            seen.setdefault(key, split)
            split_examples.append(example)
        examples[split] = split_examples
    return examples


def _read_report(path: Path):
    """A report file -> (stripped text or None, problem or None)."""
    try:
        text = _report_text(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, f"no report {path.parent.name}/{path.name}"
    except (OSError, UnicodeDecodeError) as error:
        return None, f"unreadable report ({error})"
    return text, None if text is not None else "empty report"


def _prompt(prompts, prompt_key: str):
    """A medvlsm prompt: p0..p6 are strings; p7..p9 are lists of sentences, of which the first is used."""
    value = prompts.get(prompt_key) if isinstance(prompts, dict) else None
    if isinstance(value, list):
        value = value[0] if value else None
    return value if isinstance(value, str) else None


def _read_medvlsm(root: Path, prompt_key: str) -> dict:
    """medvlsm layout (images/, masks/, anns/<split>.json) -> {split: [_Example]}."""
    images, masks = _image_files(root / "images"), _image_files(root / "masks")
    image_names = {path.name: path for paths in images.values() for path in paths}
    mask_names = {path.name: path for paths in masks.values() for path in paths}
    examples = {}
    for ann_file in sorted((root / "anns").glob("*.json")):
        split = normalize_split_name(ann_file.stem)
        try:
            records = json.loads(ann_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"Cannot read {ann_file}: {error}") from None
        if not isinstance(records, list):
            raise ValueError(f"{ann_file} must hold a list of records (img_name, mask_name, prompts).")
        keys = sorted({key for record in records if isinstance(record, dict) for key in record.get("prompts") or {}})
        if records and prompt_key not in keys:
            raise ValueError(f"prompt_key={prompt_key!r} is not in the prompts of {ann_file}; found {keys}.")
        split_examples = []
        for index, record in enumerate(records):
            record = record if isinstance(record, dict) else {}
            image_name, mask_name = str(record.get("img_name", "")), str(record.get("mask_name", ""))
            key = _example_key(mask_name or image_name) or f"record {index}"  # masks are unique, images may repeat
            example = _Example(split, key, where=f"images/{image_name}")
            example.image, example.mask = image_names.get(image_name), mask_names.get(mask_name)
            example.text = _report_text(_prompt(record.get("prompts"), prompt_key))
            if example.image is None:
                example.problems.append(f"no image file (anns/{ann_file.name} record {index})")
            if example.mask is None:
                example.problems.append(f"no mask masks/{mask_name}")
            if example.text is None:
                example.problems.append(f"empty prompt {prompt_key}")
            split_examples.append(example)
        examples[split] = split_examples
    return examples


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
    if _lvit_split_folders(root):
        matches.append("lvit")
    if not matches and next(root.rglob("*.parquet"), None) is not None:
        matches.append("parquet")
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ValueError(f"{root} looks like several layouts ({', '.join(matches)}); pass layout= to choose one.")
    raise ValueError(f"{root} matches no known dataset layout. The layouts are:\n{LAYOUT_HELP}")


# ------------------------------------------------------------------------------------------------ provenance

# (keyword found in a source README or layout name, licence note, BibTeX) for the public sources of TMCA's datasets.
_KNOWN_SOURCES = (
    (
        "qata",
        "QaTa-COV19 (Qatar University, Tampere University): the licence of the original release (not verified here).",
        "@article{degerli2021covid,\n"
        "  title={COVID-19 infection map generation and detection from chest X-ray images},\n"
        "  author={Degerli, Aysen and Ahishali, Mete and Yamac, Mehmet and Kiranyaz, Serkan and Chowdhury, Muhammad "
        "E. H. and Hameed, Khalid and Hamid, Tahir and Mazhar, Rashid and Gabbouj, Moncef},\n"
        "  journal={Health Information Science and Systems},\n  volume={9},\n  pages={15},\n  year={2021}\n}",
    ),
    (
        "lvit",
        "LViT text annotations: the licence of the LViT release (github.com/HUANGLIZI/LViT; not verified here).",
        "@article{li2023lvit,\n  title={LViT: Language meets Vision Transformer in Medical Image Segmentation},\n"
        "  author={Li, Zihan and Li, Yunxiang and Li, Qingde and Zhang, You and Wang, Puyang and Guo, Dazhou and "
        "Lu, Le and Jin, Dakai and Hong, Qingqi},\n"
        "  journal={IEEE Transactions on Medical Imaging},\n  year={2023}\n}",
    ),
    (
        "mosmed",
        "MosMedData: the licence of the original release (not verified here).",
        "@article{morozov2020mosmeddata,\n"
        "  title={MosMedData: Chest CT Scans With COVID-19 Related Findings Dataset},\n"
        "  author={Morozov, S. P. and others},\n  journal={arXiv preprint arXiv:2005.06465},\n  year={2020}\n}",
    ),
    (
        "monuseg",
        "MoNuSeg: the licence of the challenge release (not verified here).",
        "@article{kumar2017dataset,\n  title={A Dataset and a Technique for Generalized Nuclear Segmentation for "
        "Computational Pathology},\n  author={Kumar, Neeraj and Verma, Ruchika and Sharma, Sanuj and Bhargava, "
        "Surabhi and Vahadane, Abhishek and Sethi, Amit},\n  journal={IEEE Transactions on Medical Imaging},\n"
        "  volume={36},\n  number={7},\n  pages={1550--1560},\n  year={2017}\n}",
    ),
    (
        "kvasir",
        "Kvasir-SEG (Simula): research and educational use, with citation (not verified here).",
        "@inproceedings{jha2020kvasir,\n  title={Kvasir-SEG: A Segmented Polyp Dataset},\n  author={Jha, Debesh and "
        "Smedsrud, Pia H. and Riegler, Michael A. and Halvorsen, P{\\aa}l and de Lange, Thomas and Johansen, Dag and "
        "Johansen, H{\\aa}vard D.},\n  booktitle={MultiMedia Modeling (MMM 2020)},\n  pages={451--462},\n"
        "  year={2020}\n}",
    ),
    (
        "medvlsm",
        "medvlsm prompts (github.com/naamiinepal/medvlsm): MIT licence.",
        "@inproceedings{poudel2024exploring,\n"
        "  title={Exploring Transfer Learning in Medical Image Segmentation using "
        "Vision-Language Models},\n  author={Poudel, Kanchan and Dhakal, Manish and Bhandari, Prasiddha and Adhikari, "
        "Rabin and Thapaliya, Safal and Khanal, Bishesh},\n  booktitle={Medical Imaging with Deep Learning (MIDL)},\n"
        "  year={2024},\n  note={arXiv:2308.07706}\n}",
    ),
)


def _source_info(root: Path, layout: str, prompt_key: str) -> datasets.DatasetInfo:
    """Provenance for a raw folder: its README as description, citations and licences of the sources it names."""
    readme = root / "README.md"
    description = readme.read_text(encoding="utf-8", errors="replace").strip() if readme.is_file() else ""
    known = [source for source in _KNOWN_SOURCES if source[0] in (description + " " + layout).lower()]
    if layout == "medvlsm":
        description = f"{description}\n\nReports: medvlsm prompt {prompt_key}.".strip()
    return datasets.DatasetInfo(
        description=description,
        citation="\n\n".join(source[2] for source in known),
        license="\n".join(source[1] for source in known),
        features=FEATURES,
    )


# ------------------------------------------------------------------------------------------------ loading


def _from_examples(examples: dict, threshold: int, info: datasets.DatasetInfo) -> tuple:
    splits, problems = {}, []
    for split, split_examples in examples.items():
        splits[split], split_problems = _build_split(split_examples, threshold, info)
        problems.extend(split_problems)
    return datasets.DatasetDict(splits), problems


def _check_prebuilt_split(split: str, dataset: datasets.Dataset, text_column: str, threshold: int):
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
        image, mask, text = row["image"], row["mask"], _report_text(row[text_column])
        if text is None:
            return None, "empty report", False
        image_bytes, mask_bytes = image["bytes"], mask["bytes"]
        try:
            image_bytes = image_bytes if image_bytes is not None else Path(image["path"]).read_bytes()
            mask_bytes = mask_bytes if mask_bytes is not None else Path(mask["path"]).read_bytes()
        except (OSError, TypeError) as error:
            return None, f"unreadable file ({error})", False
        new_mask, reason = _check_pair(image_bytes, mask_bytes, threshold)
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
        for index, (out, reason, changed) in enumerate(_parallel_map(check, batch_rows), start=start):
            if reason is not None:
                problems.append(InvalidExample(split, f"row {index} (id {ids[index - start]})", reason))
            else:
                rows.append(out)
                rewritten = rewritten or changed
        start += size
    clean = dataset.select_columns(list(FEATURES)) if text_column == "text" and "id" in dataset.column_names else None
    if not problems and not rewritten and clean is not None and clean.features == FEATURES:
        return clean, problems  # already clean: keep it as it is (memory-mapped when on disk)
    return _in_memory_dataset(rows, dataset.info), problems


def _read_parquet_folder(root: Path) -> datasets.DatasetDict:
    """Parquet shards named by the Hub conventions (data/train-00000-of-00001.parquet, train/*.parquet, ...)."""
    from datasets.data_files import DataFilesDict, get_data_patterns

    files = DataFilesDict.from_patterns(get_data_patterns(str(root)), base_path=str(root))
    splits = {}
    for split, paths in files.items():
        paths = [path for path in paths if path.endswith(".parquet")]
        if not paths:
            continue
        tables = [pq.read_table(path, memory_map=True) for path in paths]
        metadata = json.loads((tables[0].schema.metadata or {}).get(b"huggingface", b"{}")).get("info", {})
        table = pa.concat_tables(tables, promote_options="default")  # zero-copy, as is from_dict below
        info = datasets.DatasetInfo(
            description=metadata.get("description", ""),
            citation=metadata.get("citation", ""),
            license=metadata.get("license", ""),
            features=datasets.Features.from_arrow_schema(table.schema),  # Image columns, from the parquet metadata
        )
        splits[split] = datasets.Dataset.from_dict({name: table[name] for name in table.column_names}, info=info)
    if not splits:
        raise ValueError(f"No parquet shards named by split found in {root} (e.g. data/train-00000-of-00001.parquet).")
    return datasets.DatasetDict(splits)


def _load_prebuilt(source, layout: str, load_kwargs: dict) -> datasets.DatasetDict:
    if layout == "disk":
        loaded = datasets.load_from_disk(str(source))
    elif layout == "parquet":
        loaded = _read_parquet_folder(Path(source))
    else:
        loaded = datasets.load_dataset(str(source), **load_kwargs)
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({str(loaded.split or "train"): loaded})
    if not isinstance(loaded, datasets.DatasetDict):
        raise ValueError(f"{source} gave a {type(loaded).__name__}; expected a DatasetDict of map-style datasets.")
    return datasets.DatasetDict({normalize_split_name(name): split for name, split in loaded.items()})


def _is_hub_id(source: str) -> bool:
    """'name' or 'user/name', unless it reads as a missing file in an existing local folder ('samples/typo')."""
    parent = Path(source).parent
    looks_local = source.startswith((".", "/", "~")) or (parent != Path(".") and parent.is_dir())
    return bool(re.fullmatch(r"[\w.-]+(/[\w.-]+)?", source)) and not looks_local


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
        elif _is_hub_id(str(source)):
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
        readers = {"lvit": _read_lvit, "flat": _read_flat, "medvlsm": lambda root: _read_medvlsm(root, prompt_key)}
        examples = readers[layout](path)  # cheap: file lists and reports; images are decoded for wanted splits only
        _check_wanted(source, wanted, examples)
        examples = {split: found for split, found in examples.items() if wanted is None or split in wanted}
        dataset_dict, problems = _from_examples(examples, mask_threshold, _source_info(path, layout, prompt_key))
    else:
        loaded = _load_prebuilt(source, layout, load_dataset_kwargs)
        _check_wanted(source, wanted, loaded)
        checked, problems = {}, []
        for split, dataset in loaded.items():
            if wanted is None or split in wanted:
                checked[split], found = _check_prebuilt_split(split, dataset, text_column or "text", mask_threshold)
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


# ------------------------------------------------------------------------------------------------ command line


def main(argv=None) -> int:
    """`tmca-data convert SOURCE OUTPUT_DIR ...`, `tmca-data push SOURCE REPO_ID ...` and
    `tmca-data describe MASKS_DIR --output_dir OUT ...`."""
    parser = argparse.ArgumentParser(
        prog="tmca-data", description="Read, check, convert and push TMCA datasets; write reports from masks."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser("convert", help="read a dataset in any layout and save it (arrow or parquet)")
    convert.add_argument("source")
    convert.add_argument("output_dir")
    convert.add_argument("--format", choices=("arrow", "parquet"), default="arrow")
    convert.add_argument("--overwrite", action="store_true", help="replace a non-empty OUTPUT_DIR")
    push = commands.add_parser("push", help="read a dataset in any layout and push it to a Hub dataset repo")
    push.add_argument("source")
    push.add_argument("repo_id")
    push.add_argument("--private", action="store_true")
    for command in (convert, push):
        command.add_argument("--layout", choices=("auto",) + LAYOUTS, default="auto")
        command.add_argument("--prompt_key", default="p6", help="medvlsm prompt used as the report (default p6)")
        command.add_argument("--text_column", default=None, help="report column of saved/parquet/Hub datasets")
        command.add_argument("--mask_threshold", type=int, default=MASK_THRESHOLD)
        command.add_argument("--splits", nargs="+", default=None, help="only these splits")
        command.add_argument("--skip_invalid", action="store_true", help="leave invalid examples out")
    describe = commands.add_parser(
        "describe",
        help="write a report for each mask of a folder (bootstraps text for new data; not a clinician's report)",
        description="Write OUTPUT_DIR/reports/<id>.txt for each mask of MASKS_DIR: QaTa-COV19-style chest X-ray "
        "reports (laterality, number of infected areas, lung zones) or a generic template (count, size, position). "
        "This bootstraps text for new data that has masks but no reports; it describes where the mask lies and "
        "does not replace a clinician's report. Rules and measured agreement: tmca_hf.describer.",
    )
    describe.add_argument("masks_dir", help="folder of mask files (id = file stem without a 'mask_' prefix)")
    describe.add_argument("--output_dir", required=True, help="reports go to OUTPUT_DIR/reports/<id>.txt only")
    describe.add_argument("--modality", choices=("chest_xray", "generic"), default="chest_xray")
    describe.add_argument(
        "--convention", choices=("image", "patient"), default="image",
        help="chest X-ray: 'left' is the image's left (image, the QaTa-COV19 training data's) or the patient's",
    )  # fmt: skip
    describe.add_argument("--target", default="lesion", help="generic: the noun of the report (e.g. polyp)")
    describe.add_argument("--overwrite", action="store_true", help="replace existing report files")
    describe.add_argument("--mask_threshold", type=int, default=MASK_THRESHOLD)
    describe.add_argument("--split_file", default=None, help="a split.json; with --split, describe only its ids")
    describe.add_argument("--split", default=None, help="the split of --split_file to describe (e.g. train)")
    describe.add_argument(
        "--compare", metavar="REPORTS_DIR", default=None,
        help="compare with REPORTS_DIR/<id>.txt and print the agreement (exact, laterality and count, ...)",
    )  # fmt: skip
    args = parser.parse_args(argv)

    if args.command == "describe":
        from .report_folders import describe_folder, read_split_ids

        try:
            if (args.split_file is None) != (args.split is None):
                raise ValueError("--split_file and --split go together.")
            ids = read_split_ids(args.split_file, args.split) if args.split_file is not None else None
            result = describe_folder(
                args.masks_dir,
                args.output_dir,
                modality=args.modality,
                convention=args.convention,
                target=args.target,
                ids=ids,
                overwrite=args.overwrite,
                compare_dir=args.compare,
                read_mask=lambda path: threshold_mask(path, path.name, args.mask_threshold),
            )
        except (ValueError, OSError) as error:
            print(f"tmca-data: error: {error}", file=sys.stderr)
            return 1
        print(result.summary())
        return 0

    try:
        source = Path(args.source).resolve()
        if args.command == "convert" and Path(args.output_dir).resolve() in (source, *source.parents):
            raise ValueError(f"OUTPUT_DIR {args.output_dir} must not be SOURCE or a folder that contains it.")
        dataset_dict = load_tmca_dataset(
            args.source,
            layout=args.layout,
            prompt_key=args.prompt_key,
            text_column=args.text_column,
            mask_threshold=args.mask_threshold,
            skip_invalid=args.skip_invalid,
            splits=args.splits,
        )
        for split, dataset in dataset_dict.items():
            print(f"{split}: {len(dataset)} examples")
        if dataset_dict.invalid_examples:
            print(skipped_message(dataset_dict.invalid_examples))
        if args.command == "convert":
            output = save_tmca_dataset(dataset_dict, args.output_dir, format=args.format, overwrite=args.overwrite)
            print(f"saved ({args.format}) to {output}")
        else:
            push_tmca_dataset(dataset_dict, args.repo_id, private=args.private)
            print(f"pushed to https://huggingface.co/datasets/{args.repo_id}")
    except (ValueError, OSError) as error:
        print(f"tmca-data: error: {error}", file=sys.stderr)
        return 1
    return 0


__all__ = [
    "DatasetValidationError",
    "InvalidExample",
    "detect_layout",
    "load_split",
    "load_tmca_dataset",
    "normalize_split_name",
    "skipped_message",
]

if __name__ == "__main__":
    sys.exit(main())
