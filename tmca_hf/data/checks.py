"""The checks every example goes through while it is read (the mask rule of `tmca_hf.modeling.imaging_tmca`, missing
or conflicting files and reports, sizes, unreadable files), the errors that list what failed, and the split and file
names the layout readers share.
"""

import io
import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import datasets
import numpy as np
from PIL import Image

from ..modeling.imaging_tmca import ImageReadError, open_image, read_image, threshold_mask


FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "mask": datasets.Image(),
        "text": datasets.Value("string"),
        "id": datasets.Value("string"),
    }
)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

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


def example_key(filename: str) -> str:
    """File name -> example id: the stem, without the `mask_` prefix that QaTa-COV19 masks carry."""
    stem = os.path.splitext(os.path.basename(filename))[0]
    return stem[len("mask_") :] if stem.startswith("mask_") else stem


def child(folder: Path, *names: str) -> Optional[Path]:
    """The first sub-folder of `folder` whose name matches one of `names`, ignoring case."""
    children = {child.name.lower(): child for child in folder.iterdir() if child.is_dir()} if folder.is_dir() else {}
    return next((children[name.lower()] for name in names if name.lower() in children), None)


def image_files(folder: Path) -> dict:
    """id -> list of image files in `folder` with that id (more than one is an ambiguity the caller reports)."""
    files = {}
    with os.scandir(folder) as entries:  # plain strings and scandir's cached is_file(): thousands of files stay cheap
        names = sorted(entry.name for entry in entries if entry.is_file())
    for name in names:
        if os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
            files.setdefault(example_key(name), []).append(folder / name)
    return files


# ------------------------------------------------------------------------------------------------ checks


@dataclass
class Example:
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


def check_pair(image_bytes: bytes, mask_bytes: bytes, threshold: int):
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


def _load_example(example: Example, threshold: int):
    """Read and check one raw example. Returns (row or None, list of reasons)."""
    if example.problems:
        return None, example.problems
    image_bytes, reason = _read_bytes(example.image, "image")
    if reason is None:
        mask_bytes, reason = _read_bytes(example.mask, "mask")
    if reason is None:
        mask_bytes, reason = check_pair(image_bytes, mask_bytes, threshold)
    if reason is not None:
        return None, [reason]
    row = {
        "image": {"bytes": image_bytes, "path": example.image.name},
        "mask": {"bytes": mask_bytes, "path": f"{example.id}.png"},
        "text": example.text,
        "id": example.id,
    }
    return row, []


def parallel_map(function, items: list) -> list:
    """`map` over threads: PIL and numpy release the GIL while decoding, so this scales with the cores."""
    workers = min(8, os.cpu_count() or 1)
    if workers == 1 or len(items) < 64:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(function, items, chunksize=32))


def in_memory_dataset(rows: list, info: datasets.DatasetInfo) -> datasets.Dataset:
    """Rows of encoded image/mask bytes -> an in-memory Dataset with the four columns and `info`'s provenance. Nothing
    is written to disk (no cache files); `from_dict` fingerprints it by hashing its bytes (~40 ms per 1,000 QaTa
    images)."""
    info = info.copy()
    info.features = FEATURES
    columns = {name: [row[name] for row in rows] for name in FEATURES}
    return datasets.Dataset.from_dict(columns, features=FEATURES, info=info)


def build_split(examples: list, threshold: int, info: datasets.DatasetInfo):
    """Decode and check a split's examples. Returns (Dataset of the valid ones, list of InvalidExample)."""
    results = parallel_map(lambda example: _load_example(example, threshold), examples)
    rows, problems = [], []
    for example, (row, reasons) in zip(examples, results):
        if row is not None:
            rows.append(row)
        problems.extend(InvalidExample(example.split, example.where, reason) for reason in reasons)
    return in_memory_dataset(rows, info), problems


def report_text(text) -> Optional[str]:
    """A report cell/file as a stripped string, None when missing or empty (NaN from pandas included)."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return None
    text = str(text).strip()
    return text or None


def pair_files(split, root: Path, key: str, images: dict, masks: dict, mask_dir: Path, text, text_problem):
    """An example from its id, the id -> files maps of the image and mask folders, and its report (or why not)."""
    example = Example(split=split, id=key, text=text)
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
