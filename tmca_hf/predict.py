"""`tmca-predict`: segment a folder of images with their reports (or a dataset split) and write one mask per image.

    tmca-predict --model PATH_OR_HUB_ID --images DIR --reports REPORTS.csv|REPORTS.json --output_dir OUT
    tmca-predict --model PATH_OR_HUB_ID --dataset SOURCE [--split validation] --output_dir OUT
                 [--threshold 0.5] [--batch_size 8] [--overwrite] [--device cpu|cuda]

Reports file (one report per image in `--images`):

- CSV with a header row: an image column (`image`, `file`, `filename`, `img_name` or LViT's `Image`) and a report
  column (`report`, `text`, `prompt` or LViT's `Description`). Column names are matched case-insensitively.
- JSON: `{"image.png": "report", ...}`, or a list of records with the same columns as the CSV,
  `[{"image": "image.png", "report": "..."}, ...]`.

Images are named by file name (an entry without the extension matches a unique file with that stem). Every image in
`--images` with a supported extension (PNG, JPEG, BMP, TIFF, GIF, WebP, DICOM .dcm/.dicom) needs a report, and every
report needs its image; files named in the reports file are read whatever their extension (DICOM without one). An
empty report means text-free inference, allowed only for models that support it (`config.supports_text_free_inference`).
`--dataset` reads any layout `tmca_hf.data.load_tmca_dataset` reads (LViT, flat, medvlsm, saved, parquet, Hub).

Output: `OUT/<image stem>.png` per image, the original size, 0 (background) / 255 (lesion); `OUT/summary.json` with the
per-image file, mask, report, size, lesion pixels and area fraction, the totals and the timing. An existing non-empty
`OUT` is only written to with `--overwrite` (which first removes the masks a previous run listed in its summary.json).

Exit status: 0 when every image was segmented, 1 when some images could not be read (they are listed on stderr and in
summary.json under "failed"; the others are written), 2 for a usage error (nothing is written).
"""

import argparse
import csv
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from tqdm.auto import tqdm

from .imaging_tmca import IMAGE_SUFFIXES, ImageReadError, read_image
from .inference import ReportError, check_report, check_threshold, load_model, mask_to_image, predict


IMAGE_COLUMNS = ("image", "file", "filename", "img_name")
REPORT_COLUMNS = ("report", "text", "prompt", "description")
SUMMARY_FILE = "summary.json"


@dataclass
class _Item:
    """One image to segment: its name (as the summary and messages show it), where its bytes are, and its report."""

    name: str
    source: Union[Path, bytes]
    report: str
    mask_name: str = ""


# ---------------------------------------------------------------------------------------------- reports file


def _column(fieldnames, candidates, what: str, path: Path) -> str:
    by_lower = {name.strip().lower(): name for name in fieldnames or []}
    for candidate in candidates:
        if candidate in by_lower:
            return by_lower[candidate]
    raise ValueError(
        f"{path} has no {what} column: found {list(fieldnames or [])}, expected one of {list(candidates)} "
        f"(case-insensitive)."
    )


def _records_to_pairs(records: list, path: Path) -> list:
    if not records:
        return []
    fieldnames = list(records[0].keys())
    image_column = _column(fieldnames, IMAGE_COLUMNS, "image", path)
    report_column = _column(fieldnames, REPORT_COLUMNS, "report", path)
    pairs = []
    for row, record in enumerate(records, start=1):
        if not isinstance(record, dict) or not record.get(image_column):
            raise ValueError(f"{path}, record {row}: expected an {image_column!r} value (the image file name).")
        pairs.append((str(record[image_column]).strip(), record.get(report_column)))
    return pairs


def read_reports(path: Union[str, Path]) -> dict:
    """A CSV or JSON reports file (see the module docstring) as `{image name: report}`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Reports file {path} not found.")
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as file:
            pairs = _records_to_pairs(list(csv.DictReader(file)), path)
    elif path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON ({error}).") from None
        if isinstance(data, dict):
            pairs = list(data.items())
        elif isinstance(data, list):
            pairs = _records_to_pairs(data, path)
        else:
            raise ValueError(f"{path} holds a JSON {type(data).__name__}; expected {{file: report}} or a list of records.")
    else:
        raise ValueError(f"Reports file {path} must be .csv or .json (see tmca-predict --help).")
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


def _folder_items(images_dir: Path, reports: dict) -> list:
    """Match the images of a folder with their reports; every image needs a report and every report an image."""
    if not images_dir.is_dir():
        raise NotADirectoryError(f"--images {images_dir} is not a folder.")
    files = {path.name: path for path in images_dir.iterdir() if path.is_file() and not path.name.startswith(".")}
    stems = {}
    for name in files:
        stems.setdefault(Path(name).stem, []).append(name)
    matched, unknown = {}, []
    for key, report in reports.items():
        name = key if key in files else Path(key).name
        if name not in files and len(stems.get(name, [])) == 1:
            name = stems[name][0]
        if name in files:
            matched[name] = report
        else:
            unknown.append(key)
    if unknown:
        shown = ", ".join(unknown[:10]) + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
        raise FileNotFoundError(f"{len(unknown)} report(s) name images that are not in {images_dir}: {shown}.")
    missing = sorted(name for name in files if name.lower().endswith(IMAGE_SUFFIXES) and name not in matched)
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise ValueError(
            f"{len(missing)} image(s) in {images_dir} have no report: {shown}. Add them to the reports file (an empty "
            f"report asks for text-free inference) or move them out of the folder."
        )
    return [_Item(name, files[name], matched[name]) for name in sorted(matched)]


def _dataset_items(source: str, split: str, prompt_key: str) -> list:
    import datasets

    from .data import load_tmca_dataset, normalize_split_name

    split = normalize_split_name(split)
    dataset = load_tmca_dataset(source, splits=[split], prompt_key=prompt_key)[split]
    dataset = dataset.cast_column("image", datasets.Image(decode=False)).select_columns(["image", "text", "id"])
    items = []
    for example in dataset:
        image = example["image"]
        data = image["bytes"] if image.get("bytes") is not None else Path(image["path"]).read_bytes()
        items.append(_Item(example["id"], data, (example["text"] or "").strip()))
    return items


def _assign_mask_names(items: list) -> None:
    """`<stem>.png`, or `<file name>.png` for images whose stems collide (a.png and a.jpg)."""
    stems = {}
    for item in items:
        stems.setdefault(Path(item.name).stem, []).append(item)
    for stem, group in stems.items():
        for item in group:
            item.mask_name = f"{stem if len(group) == 1 else item.name}.png"


# ----------------------------------------------------------------------------------------------------- output


def _check_output(output_dir: Path, overwrite: bool, images_dir: Optional[Path]) -> None:
    """Refuse an output folder that is the images folder, a file, or not empty (without --overwrite)."""
    if images_dir is not None and output_dir.resolve() == images_dir.resolve():
        raise ValueError(f"--output_dir {output_dir} is the images folder; choose another folder for the masks.")
    if output_dir.exists() and not output_dir.is_dir():
        raise NotADirectoryError(f"--output_dir {output_dir} is a file; expected a folder.")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(
            f"--output_dir {output_dir} exists and is not empty; pass --overwrite to replace its masks and "
            f"{SUMMARY_FILE}, or choose another folder."
        )


def _prepare_output(output_dir: Path) -> None:
    """Create the folder; remove the masks a previous run listed in its summary.json (and that summary)."""
    previous = output_dir / SUMMARY_FILE
    if previous.is_file():
        try:
            listed = [entry["mask"] for entry in json.loads(previous.read_text()).get("images", [])]
        except (ValueError, KeyError, TypeError, AttributeError):
            listed = []
        for name in listed:
            (output_dir / Path(name).name).unlink(missing_ok=True)
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
        items = _folder_items(images_dir, read_reports(args.reports))
        source = {"images": str(images_dir), "reports": str(args.reports)}
    else:
        images_dir = None
        items = _dataset_items(args.dataset, args.split, args.prompt_key)
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
                                      [report.text for _, report in batch], threshold)
                model_seconds += time.perf_counter() - tick
                for (item, report), image, prediction in zip(batch, loaded, predictions):
                    mask_to_image(prediction.mask).save(output_dir / item.mask_name)
                    height, width = image.size
                    results.append({
                        "file": item.name, "mask": item.mask_name, "report": item.report,
                        "text_free": report.text is None, "report_truncated": report.truncated,
                        "height": height, "width": width, "lesion_pixels": prediction.lesion_pixels,
                        "area_fraction": round(prediction.area_fraction, 6),
                    })
            progress.update(len(items[start : start + args.batch_size]))

    total_seconds = time.perf_counter() - started
    summary = {
        "model": str(args.model),
        "source": source,
        "threshold": threshold,
        "device": str(model.device),
        "images": results,
        "failed": failed,
        "totals": {
            "images": len(results),
            "failed": len(failed),
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
        epilog="Reports file: CSV with columns image,report (also file/filename/img_name and text/prompt/Description), "
        "or JSON {file: report} or [{image:, report:}, ...]. An empty report asks for text-free inference.",
    )
    parser.add_argument("--model", required=True, help="a save_pretrained folder or a Hub id of a TMCA model")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", help="folder of images (PNG, JPEG, 16-bit PNG, TIFF, DICOM, ...)")
    source.add_argument("--dataset", help="dataset folder (LViT, flat, medvlsm, saved, parquet) or Hub dataset id")
    parser.add_argument("--reports", help="CSV or JSON with one report per image (with --images)")
    parser.add_argument("--split", default="validation", help="dataset split (with --dataset; default: validation)")
    parser.add_argument("--prompt_key", default="p6", help="medvlsm prompt used as report (with --dataset)")
    parser.add_argument("--output_dir", required=True, help="folder for the masks and summary.json")
    parser.add_argument("--threshold", type=float, default=0.5, help="lesion probability threshold (default 0.5)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --output_dir")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.images and not args.reports:
        parser.error("--images needs --reports (a CSV or JSON file with one report per image).")
    if args.dataset and args.reports:
        parser.error("--reports goes with --images; a --dataset carries its own reports.")
    try:
        return run(args)
    except (ValueError, TypeError, OSError) as error:
        print(f"tmca-predict: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
