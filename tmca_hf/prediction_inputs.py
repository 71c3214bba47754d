"""What `tmca-predict` segments: reports read from a CSV, a JSON file or a folder of `<image>.txt` files, matched to
the images under `--images` (or taken from a dataset split), and the mask file name each image gets. The rules are
in `tmca_hf.predict`'s docstring.
"""

import codecs
import csv
import hashlib
import io
import json
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from .modeling.imaging_tmca import IMAGE_SUFFIXES


IMAGE_COLUMNS = ("image", "file", "filename", "img_name")
REPORT_COLUMNS = ("report", "text", "prompt", "description")
MASK_NAMING = (
    "<stem>.png, where stem is the image's path relative to --images (or its dataset id) without its image extension; "
    "when that stem is not a plain file name (a folder part, a character other than letters, digits, '.', '_' and "
    "'-', a leading dot, more than 100 characters) or another image has the same stem ignoring case, those "
    "characters become '_' and '-<the first 8 hex digits of the SHA-256 of the image's name>' is added"
)
_PLAIN_STEM = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")


@dataclass
class PredictionItem:
    """One image to segment: its name (as the summary and messages show it), where its bytes are, and its report."""

    name: str
    source: Union[Path, bytes]
    report: str
    mask_name: str = ""


# ---------------------------------------------------------------------------------------------- reports file


def _read_text(path: Path) -> str:
    """A reports file's text; anything but UTF-8 is refused with the file, the line and the fix."""
    data = path.read_bytes()
    fix = "save it as UTF-8 (in Excel: 'CSV UTF-8'; or iconv -f latin1 -t utf-8) and run again"
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or b"\x00" in data:
        raise ValueError(f"{path}, line 1: the file is UTF-16 (or binary), not UTF-8 text; {fix}.")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ValueError(
            f"{path}, line {line}: byte 0x{data[error.start]:02x} is not UTF-8 (the file looks Latin-1 or "
            f"Windows-1252); {fix}."
        ) from None


def _column(fieldnames, candidates, what: str, path: Path) -> str:
    by_lower = {str(name).strip().lower(): name for name in fieldnames}
    for candidate in candidates:
        if candidate in by_lower:
            return by_lower[candidate]
    raise ValueError(
        f"{path} has no {what} column: found {list(fieldnames)}, expected one of {list(candidates)} (case-insensitive)."
    )


def _csv_pairs(path: Path) -> list:
    reader = csv.reader(io.StringIO(_read_text(path), newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path} is empty; expected a header row (image,report) and one row per image.")
        image_index = header.index(_column(header, IMAGE_COLUMNS, "image", path))
        report_index = header.index(_column(header, REPORT_COLUMNS, "report", path))
        pairs = []
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise ValueError(
                    f"{path}, line {reader.line_num}: {len(row)} value(s) where the header has {len(header)} columns "
                    f"({','.join(header)}); give every row one value per column: quote a report that contains commas "
                    f'("..."), and keep the comma of an empty report (image.png,).'
                )
            if not row[image_index].strip():
                raise ValueError(f"{path}, line {reader.line_num}: the {header[image_index]!r} value is empty.")
            pairs.append((row[image_index].strip(), row[report_index]))
    except csv.Error as error:
        raise ValueError(f"{path}, line {reader.line_num}: not valid CSV ({error}).") from None
    return pairs


def _json_pairs(path: Path) -> list:
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}, line {error.lineno}, column {error.colno}: not valid JSON ({error.msg}).") from None
    if isinstance(data, dict):
        return list(data.items())
    if not isinstance(data, list):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}; expected {{file: report}} or a list of records.")
    if not data:
        return []
    for number, record in enumerate(data, start=1):
        if not isinstance(record, dict):
            raise ValueError(f"{path}, record {number}: a {type(record).__name__}; expected an object (image, report).")
    image_column = _column(list(data[0]), IMAGE_COLUMNS, "image", path)
    report_column = _column(list(data[0]), REPORT_COLUMNS, "report", path)
    pairs = []
    for number, record in enumerate(data, start=1):
        if not record.get(image_column):
            raise ValueError(f"{path}, record {number}: expected an {image_column!r} value (the image file name).")
        pairs.append((str(record[image_column]).strip(), record.get(report_column)))
    return pairs


def _text_file_pairs(folder: Path) -> tuple:
    """A folder of per-image `.txt` reports: (path relative to the folder without .txt, report) pairs, and the other
    files there, which are ignored."""
    listed = _listed_files(folder)
    files = [path for path in listed if path.suffix.lower() == ".txt"]
    if not files:
        raise ValueError(f"Reports folder {folder} has no .txt files; expected one <image name>.txt report per image.")
    ignored = [path.relative_to(folder).as_posix() for path in listed if path.suffix.lower() != ".txt"]
    return [(path.relative_to(folder).with_suffix("").as_posix(), _read_text(path)) for path in files], ignored


@dataclass
class Reports:
    """The reports of a CSV, a JSON file or a folder: `{image name: report}`; for a folder, also the files there
    that are not `.txt` reports (`ignored`). A folder's `.txt` file that names no image (a stray README.txt) is
    skipped with a warning rather than refused: `from_folder` says so."""

    by_name: dict
    source: Path
    from_folder: bool = False
    ignored: list = field(default_factory=list)


def read_reports(path: Union[str, Path]) -> Reports:
    """A CSV or JSON reports file or a folder of .txt reports (see the module docstring)."""
    path = Path(path)
    ignored = []
    if path.is_dir():
        pairs, ignored = _text_file_pairs(path)
    elif not path.is_file():
        raise FileNotFoundError(f"Reports file or folder {path} not found.")
    elif path.suffix.lower() == ".csv":
        pairs = _csv_pairs(path)
    elif path.suffix.lower() == ".json":
        pairs = _json_pairs(path)
    else:
        raise ValueError(f"Reports {path} must be a .csv or .json file or a folder of .txt files (see tmca-predict --help).")
    reports = {}
    for name, report in pairs:
        if report is not None and not isinstance(report, str):
            raise ValueError(f"{path}: the report of {name!r} is a {type(report).__name__}; expected a string.")
        report = (report or "").strip()
        if name in reports and reports[name] != report:
            raise ValueError(f"{path} gives {name!r} two different reports; expected one report per image.")
        reports[name] = report
    if not reports:
        raise ValueError(f"{path} has no reports.")
    return Reports(reports, path, path.is_dir(), ignored)


# ---------------------------------------------------------------------------------------------- images folder


def _listed_files(folder: Path) -> list:
    """Every file under `folder` (symlinked files included, hidden files and folders left out), sorted."""
    found = []
    for parent, folders, names in os.walk(folder):
        folders[:] = [name for name in folders if not name.startswith(".")]
        found.extend(Path(parent) / name for name in names if not name.startswith("."))
    return sorted(path for path in found if path.is_file())


def _without_image_suffix(name: str) -> str:
    stem, suffix = os.path.splitext(name)
    return stem if suffix.lower() in IMAGE_SUFFIXES else name


def _candidates(key: str, files: dict) -> list:
    """The images a report key can name: by relative path, by relative path without its image extension, by file
    name, by file name without its image extension; the first of these ways that finds any image decides. A key with a folder part that is not there
    falls back to the file names at the top of the folder (a path written from elsewhere: data/images/a.png)."""
    key = key.replace("\\", "/").removeprefix("./")
    base = key.rsplit("/", 1)[-1]
    fallback = [name for name in files if "/" not in name] if "/" in key else list(files)
    ways = (
        (files, lambda name: name == key),
        (files, lambda name: _without_image_suffix(name) == key),
        (fallback, lambda name: name.rsplit("/", 1)[-1] == base),
        (fallback, lambda name: _without_image_suffix(name.rsplit("/", 1)[-1]) == base),
    )
    for pool, matches in ways:
        found = [name for name in pool if matches(name)]
        if found:
            return found
    return []


def _shown(names: list) -> str:
    return ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")


@dataclass
class MatchedFolder:
    """What `folder_items` found: the items to segment, the reports that name no image (a folder's stray .txt
    files: skipped), and the files that were not used (a reports folder's other files, non-image files under
    `--images` that no report names)."""

    items: list
    unmatched_reports: list
    ignored_files: dict  # {"reports": [...], "images": [...]}, paths relative to each folder


def folder_items(images: Path, reports: Reports) -> MatchedFolder:
    """
    Match the images under a folder (or one image file) with their reports: every image needs one report, and every
    report of a CSV or JSON file an image; a `.txt` report in a reports folder that names no image is skipped. With
    one image file, the reports of other images are not needed.
    """
    single = images.is_file()
    if not single and not images.is_dir():
        raise FileNotFoundError(f"--images {images} is neither an image file nor a folder.")
    root = images.parent if single else images
    files = {images.name: images} if single else {path.relative_to(root).as_posix(): path for path in _listed_files(root)}
    matched, named_by, unknown = {}, {}, []
    for key, report in reports.by_name.items():
        found = _candidates(key, files)
        if len(found) > 1:
            raise ValueError(
                f"The report for {key!r} fits {len(found)} images in {root}: {_shown(found)}; name the image "
                f"by its path relative to {root} (e.g. {found[0]!r})."
            )
        if not found:
            unknown.append(key)
            continue
        if found[0] in named_by:
            raise ValueError(
                f"The reports for {named_by[found[0]]!r} and {key!r} both name {root / found[0]}; give each image "
                f"one report, named by its path relative to {root}."
            )
        named_by[found[0]], matched[found[0]] = key, report
    unmatched = []
    if unknown and reports.from_folder and not single:
        unmatched = [f"{key}.txt" for key in unknown]
        print(f"tmca-predict: warning: skipped {len(unmatched)} report file(s) in {reports.source} that name no image "
              f"in {root}: {_shown(unmatched)} (listed in summary.json).", file=sys.stderr)
    elif unknown and not single:
        raise FileNotFoundError(f"{len(unknown)} report(s) name images that are not in {root}: {_shown(unknown)}.")
    if single and images.name not in matched:
        raise ValueError(f"{reports.source} has no report for {images.name}; add one (an empty report asks for "
                         f"text-free inference).")
    missing = [name for name in files if name.lower().endswith(IMAGE_SUFFIXES) and name not in matched]
    if missing:
        raise ValueError(
            f"{len(missing)} image(s) in {root} have no report: {_shown(missing)}. Add them to the reports (an "
            f"empty report asks for text-free inference) or move them out of the folder."
        )
    beside = reports.from_folder and reports.source.resolve() == root.resolve()  # reports beside their images
    unused = [name for name in files if name not in matched and not (beside and name.lower().endswith(".txt"))]
    items = [PredictionItem(name, files[name], matched[name]) for name in sorted(matched)]
    return MatchedFolder(items, unmatched, {"reports": sorted(reports.ignored), "images": unused})


def dataset_items(source: str, split: str, prompt_key: str, skip_invalid: bool) -> tuple:
    """The examples of a dataset split as items (image bytes, report), and the invalid examples skipped (listed on
    stderr)."""
    import datasets

    from .data import load_split, skipped_message

    dataset, skipped = load_split(source, split, prompt_key=prompt_key, skip_invalid=skip_invalid)
    if skipped:
        print(f"tmca-predict: {skipped_message(skipped)}", file=sys.stderr)
    dataset = dataset.cast_column("image", datasets.Image(decode=False)).select_columns(["image", "text", "id"])
    items = []
    for example in dataset:
        image = example["image"]
        data = image["bytes"] if image.get("bytes") is not None else Path(image["path"]).read_bytes()
        items.append(PredictionItem(example["id"], data, (example["text"] or "").strip()))
    return items, skipped


def assign_mask_names(items: list) -> None:
    """Mask file names by `MASK_NAMING`: plain, unique names kept; the others made safe and told apart by a hash."""
    stems = [_without_image_suffix(item.name) for item in items]
    counts = Counter(stem.lower() for stem in stems)
    for item, stem in zip(items, stems):
        if _PLAIN_STEM.fullmatch(stem) and counts[stem.lower()] == 1:
            item.mask_name = f"{stem}.png"
        else:
            safe = re.sub(r"[^A-Za-z0-9._-]", "_", stem)[:100].lstrip(".") or "image"
            item.mask_name = f"{safe}-{hashlib.sha256(item.name.encode('utf-8')).hexdigest()[:8]}.png"
    taken = Counter(item.mask_name.lower() for item in items)
    repeated = sorted({item.name for item in items if taken[item.mask_name.lower()] > 1})
    if repeated:
        raise ValueError(f"{len(repeated)} image name(s) occur more than once: {_shown(repeated)}; names must be unique.")


def is_mask_name(name: str) -> bool:
    """A name `assign_mask_names` can give: one plain file name ending in .png, so inside the output folder."""
    return name.endswith(".png") and _PLAIN_STEM.fullmatch(name[: -len(".png")]) is not None
