"""`tmca-predict`: segment a folder of images with their reports (or a dataset split) and write one mask per image.

    tmca-predict --model PATH_OR_HUB_ID --images DIR --reports REPORTS.csv|REPORTS.json|REPORTS_DIR --output_dir OUT
    tmca-predict --model PATH_OR_HUB_ID --dataset SOURCE [--split validation] [--skip_invalid] --output_dir OUT
                 [--threshold 0.5] [--batch_size 8] [--overwrite] [--device cpu|cuda]

Reports (one report per image under `--images`), UTF-8:

- CSV with a header row: an image column (`image`, `file`, `filename`, `img_name` or LViT's `Image`) and a report
  column (`report`, `text`, `prompt` or LViT's `Description`), matched case-insensitively; every row has one value
  per column (quote reports that contain commas).
- JSON: `{"image.png": "report", ...}`, or a list of records with the same columns as the CSV,
  `[{"image": "image.png", "report": "..."}, ...]`.
- A folder of `<image>.txt` files, one report each (the layout of `samples/qata_cov19/reports`); a file's path
  relative to that folder, without `.txt`, names its image.

Images are every file under `--images` (subfolders included, hidden ones left out), named by their path relative to
it. A report names its image by that relative path (`left/a.png`), by the path without its image extension
(`left/a`), or by a file name, with or without its image extension, found once in the tree (`a.png`, `a`; for a path
whose folder is not there, at the top of the folder); a name that fits several images, or two reports that name one
image, are refused. Every image with a supported extension (PNG, JPEG, BMP, TIFF, GIF, WebP, DICOM
.dcm/.dicom) needs a report, and every report needs its image; files named by a report are read whatever their
extension (DICOM without one). An empty report means text-free inference, allowed only for models that support it
(`config.supports_text_free_inference`). `--dataset` reads any layout `tmca_hf.data.load_tmca_dataset` reads (LViT,
flat, medvlsm, saved, parquet, Hub); with `--skip_invalid` its invalid examples are left out and listed.

Output, only inside `OUT`: one mask PNG per image, the original size, 0 (background) / 255 (lesion), named by
`MASK_NAMING` (also recorded in summary.json); `OUT/summary.json` with the per-image file, mask, report, size, lesion
pixels, area fraction and report-image consistency (0-1, how well the report matches the image; null without a
report), the laterality convention used, the skipped examples, the totals and the timing. An existing non-empty `OUT` is only written
to with `--overwrite` (which first removes the masks a previous run listed in its summary.json).

Exit status: 0 when every image was segmented, 1 when some images could not be read (they are listed on stderr and in
summary.json under "failed"; the others are written), 2 for a usage error (nothing is written).
"""

import argparse
import codecs
import csv
import hashlib
import io
import json
import os
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from tqdm.auto import tqdm

from .inference import RELEASED_MODEL, ReportError, check_report, check_threshold, load_model, mask_to_image, predict
from .modeling.imaging_tmca import IMAGE_SUFFIXES, ImageReadError, read_image


IMAGE_COLUMNS = ("image", "file", "filename", "img_name")
REPORT_COLUMNS = ("report", "text", "prompt", "description")
SUMMARY_FILE = "summary.json"
MASK_NAMING = (
    "<stem>.png, where stem is the image's path relative to --images (or its dataset id) without its image extension; "
    "when that stem is not a plain file name (a folder part, a character other than letters, digits, '.', '_' and "
    "'-', a leading dot, more than 100 characters) or another image has the same stem ignoring case, those "
    "characters become '_' and '-<the first 8 hex digits of the SHA-256 of the image's name>' is added"
)
_PLAIN_STEM = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")


@dataclass
class _Item:
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


def _text_file_pairs(folder: Path) -> list:
    """A folder of per-image `.txt` reports: (path relative to the folder without .txt, report)."""
    files = [path for path in _listed_files(folder) if path.suffix.lower() == ".txt"]
    if not files:
        raise ValueError(f"Reports folder {folder} has no .txt files; expected one <image name>.txt report per image.")
    return [(path.relative_to(folder).with_suffix("").as_posix(), _read_text(path)) for path in files]


def read_reports(path: Union[str, Path]) -> dict:
    """A CSV or JSON reports file or a folder of .txt reports (see the module docstring) as `{image name: report}`."""
    path = Path(path)
    if path.is_dir():
        pairs = _text_file_pairs(path)
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
    return reports


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


def _folder_items(images_dir: Path, reports: dict) -> list:
    """Match the images under a folder with their reports; every image needs one report and every report an image."""
    if not images_dir.is_dir():
        raise NotADirectoryError(f"--images {images_dir} is not a folder.")
    files = {path.relative_to(images_dir).as_posix(): path for path in _listed_files(images_dir)}
    matched, named_by, unknown = {}, {}, []
    for key, report in reports.items():
        found = _candidates(key, files)
        if len(found) > 1:
            raise ValueError(
                f"The report for {key!r} fits {len(found)} images in {images_dir}: {_shown(found)}; name the image "
                f"by its path relative to {images_dir} (e.g. {found[0]!r})."
            )
        if not found:
            unknown.append(key)
            continue
        if found[0] in named_by:
            raise ValueError(
                f"The reports for {named_by[found[0]]!r} and {key!r} both name {images_dir / found[0]}; give each image "
                f"one report, named by its path relative to {images_dir}."
            )
        named_by[found[0]], matched[found[0]] = key, report
    if unknown:
        raise FileNotFoundError(f"{len(unknown)} report(s) name images that are not in {images_dir}: {_shown(unknown)}.")
    missing = [name for name in files if name.lower().endswith(IMAGE_SUFFIXES) and name not in matched]
    if missing:
        raise ValueError(
            f"{len(missing)} image(s) in {images_dir} have no report: {_shown(missing)}. Add them to the reports (an "
            f"empty report asks for text-free inference) or move them out of the folder."
        )
    return [_Item(name, files[name], matched[name]) for name in sorted(matched)]


def _dataset_items(source: str, split: str, prompt_key: str, skip_invalid: bool) -> tuple:
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
        items.append(_Item(example["id"], data, (example["text"] or "").strip()))
    return items, skipped


def _assign_mask_names(items: list) -> None:
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


# ----------------------------------------------------------------------------------------------------- output


def _check_output(output_dir: Path, overwrite: bool, images_dir: Optional[Path]) -> None:
    """Refuse an output folder in the images folder, a file, or a folder that is not empty (without --overwrite)."""
    if images_dir is not None and images_dir.resolve() in (output_dir.resolve(), *output_dir.resolve().parents):
        raise ValueError(
            f"--output_dir {output_dir} is in the images folder {images_dir} (whose subfolders are read as images); "
            f"choose a folder outside it for the masks."
        )
    if output_dir.exists() and not output_dir.is_dir():
        raise NotADirectoryError(f"--output_dir {output_dir} is a file; expected a folder.")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(
            f"--output_dir {output_dir} exists and is not empty; pass --overwrite to replace its masks and "
            f"{SUMMARY_FILE}, or choose another folder."
        )


def _is_mask_name(name: str) -> bool:
    """A name `_assign_mask_names` can give: one plain file name ending in .png, so inside the output folder."""
    return name.endswith(".png") and _PLAIN_STEM.fullmatch(name[: -len(".png")]) is not None


def _write_mask(path: Path, mask) -> None:
    """Write inside the output folder only: a symlink found at `path` is replaced, never written through."""
    if path.is_symlink():
        path.unlink()
    mask_to_image(mask).save(path)


def _prepare_output(output_dir: Path) -> None:
    """Create the folder; remove the masks a previous run listed in its summary.json (and that summary)."""
    previous = output_dir / SUMMARY_FILE
    if previous.is_file():
        try:
            listed = [entry["mask"] for entry in json.loads(previous.read_text()).get("images", [])]
        except (ValueError, KeyError, TypeError, AttributeError):
            listed = []
        for name in listed:
            if isinstance(name, str) and _is_mask_name(name):
                (output_dir / name).unlink(missing_ok=True)
        previous.unlink()
    output_dir.mkdir(parents=True, exist_ok=True)


def _check_reports(items: list, processor, supports_text_free: bool) -> list:
    """Check every report before any prediction; raise one error that lists all refused reports."""
    checked, refused = [], []
    for item in items:
        try:
            checked.append(check_report(item.report, processor, supports_text_free))
        except ReportError as error:
            refused.append(f"{item.name}: {error}")
    if refused:
        shown = "\n  ".join(refused[:10]) + (f"\n  ... and {len(refused) - 10} more" if len(refused) > 10 else "")
        raise ValueError(f"{len(refused)} report(s) cannot guide this model:\n  {shown}")
    return checked


def run(args) -> int:
    threshold = check_threshold(args.threshold)
    if args.batch_size < 1:
        raise ValueError(f"--batch_size must be at least 1, got {args.batch_size}.")
    output_dir = Path(args.output_dir)
    if args.images:
        images_dir = Path(args.images)
        items, skipped = _folder_items(images_dir, read_reports(args.reports)), []
        source = {"images": str(images_dir), "reports": str(args.reports)}
    else:
        images_dir = None
        items, skipped = _dataset_items(args.dataset, args.split, args.prompt_key, args.skip_invalid)
        source = {"dataset": str(args.dataset), "split": args.split, "prompt_key": args.prompt_key}
    if not items:
        raise ValueError("No images to segment.")
    _assign_mask_names(items)
    _check_output(output_dir, args.overwrite, images_dir)

    started = time.perf_counter()
    model, processor = load_model(args.model, device=args.device)
    load_seconds = time.perf_counter() - started
    checked = _check_reports(items, processor, bool(model.config.supports_text_free_inference))
    truncated = sum(report.truncated for report in checked)
    if truncated:
        print(f"tmca-predict: {truncated} report(s) are longer than the model's {processor.max_text_length} tokens "
              f"and were cut (report_truncated in {SUMMARY_FILE}).", file=sys.stderr)
    _prepare_output(output_dir)

    results, failed, model_seconds = [], [], 0.0
    with tqdm(total=len(items), desc="tmca-predict", unit="image") as progress:
        for start in range(0, len(items), args.batch_size):
            batch, loaded = [], []
            for item, report in zip(items[start : start + args.batch_size], checked[start : start + args.batch_size]):
                try:
                    loaded.append(read_image(item.source, name=item.name))
                    batch.append((item, report))
                except ImageReadError as error:
                    failed.append({"file": item.name, "error": str(error)})
            if batch:
                tick = time.perf_counter()
                predictions = predict(model, processor, [image.pixels for image in loaded],
                                      [report.text for _, report in batch], threshold, args.laterality)
                model_seconds += time.perf_counter() - tick
                for (item, report), image, prediction in zip(batch, loaded, predictions):
                    _write_mask(output_dir / item.mask_name, prediction.mask)
                    height, width = image.size
                    results.append({
                        "file": item.name, "mask": item.mask_name, "report": item.report,
                        "text_free": report.text is None, "report_truncated": report.truncated,
                        "height": height, "width": width, "lesion_pixels": prediction.lesion_pixels,
                        "area_fraction": round(prediction.area_fraction, 6),
                        "consistency": prediction.consistency,
                    })
            progress.update(len(items[start : start + args.batch_size]))

    total_seconds = time.perf_counter() - started
    summary = {
        "model": str(args.model),
        "source": source,
        "threshold": threshold,
        "laterality": args.laterality or processor.report_laterality,
        "model_laterality": processor.report_laterality,
        "device": str(model.device),
        "mask_naming": MASK_NAMING,
        "images": results,
        "failed": failed,
        "skipped": [str(problem) for problem in skipped],
        "totals": {
            "images": len(results),
            "failed": len(failed),
            "skipped": len(skipped),
            "with_lesion": sum(result["lesion_pixels"] > 0 for result in results),
            "lesion_pixels": sum(result["lesion_pixels"] for result in results),
            "mean_area_fraction": round(sum(r["area_fraction"] for r in results) / len(results), 6) if results else None,
        },
        "timing": {
            "load_model_s": round(load_seconds, 3),
            "model_s": round(model_seconds, 3),
            "total_s": round(total_seconds, 3),
            "model_ms_per_image": round(1000 * model_seconds / len(results), 1) if results else None,
        },
    }
    (output_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"tmca-predict: {len(results)} mask(s) and {SUMMARY_FILE} written to {output_dir} "
          f"({total_seconds:.1f} s).", file=sys.stderr)
    if failed:
        listing = "\n  ".join(f"{entry['file']}: {entry['error']}" for entry in failed)
        print(f"tmca-predict: {len(failed)} image(s) could not be read:\n  {listing}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tmca-predict",
        description="Segment images guided by their reports with a TMCA model; one mask PNG per image + summary.json.",
        epilog="Reports: UTF-8 CSV with columns image,report (also file/filename/img_name and text/prompt/Description), "
        "JSON {file: report} or [{image:, report:}, ...], or a folder of <image>.txt files. An empty report asks for "
        "text-free inference.",
    )
    released = RELEASED_MODEL.is_dir()
    parser.add_argument(
        "--model", required=not released, default=str(RELEASED_MODEL) if released else None,
        help="a save_pretrained folder or a Hub id of a TMCA model"
        + (f" (default: the released {RELEASED_MODEL.name})" if released else ""),
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", help="folder of images (PNG, JPEG, 16-bit PNG, TIFF, DICOM, ...)")
    source.add_argument("--dataset", help="dataset folder (LViT, flat, medvlsm, saved, parquet) or Hub dataset id")
    parser.add_argument("--reports", help="CSV or JSON file, or folder of .txt files: one report per image (with --images)")
    parser.add_argument("--split", default="validation", help="dataset split (with --dataset; default: validation)")
    parser.add_argument("--prompt_key", default="p6", help="medvlsm prompt used as report (with --dataset)")
    parser.add_argument("--skip_invalid", action="store_true", help="leave out and list invalid examples (with --dataset)")
    parser.add_argument("--output_dir", required=True, help="folder for the masks and summary.json")
    parser.add_argument("--threshold", type=float, default=0.5, help="lesion probability threshold (default 0.5)")
    parser.add_argument(
        "--laterality", choices=["patient", "image"], default=None,
        help="whose left and right the reports name: 'patient' (as clinicians write) or 'image'; they are mapped to "
        "the model's convention (default: the model's own, no change)",
    )
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --output_dir")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.images and not args.reports:
        parser.error("--images needs --reports (a CSV or JSON file, or a folder of .txt files, one report per image).")
    if args.dataset and args.reports:
        parser.error("--reports goes with --images; a --dataset carries its own reports.")
    if args.images and args.skip_invalid:
        parser.error("--skip_invalid goes with --dataset; a folder's unreadable images are listed under 'failed'.")
    try:
        return run(args)
    except (ValueError, TypeError, OSError) as error:
        print(f"tmca-predict: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
