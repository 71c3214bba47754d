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

`--images` is one image file, or a folder: its images are every file under it (subfolders included, hidden ones
left out), named by their path relative to it. A report names its image by that relative path (`left/a.png`), by the path without its image extension
(`left/a`), or by a file name, with or without its image extension, found once in the tree (`a.png`, `a`; for a path
whose folder is not there, at the top of the folder); a name that fits several images, or two reports that name one
image, are refused; in a reports folder, a `.txt` file that names no image (a stray README.txt) is skipped with a
warning and listed in summary.json (`unmatched_reports`), and so are the files there that are not `.txt`
(`ignored_files`). Every image with a supported extension (PNG, JPEG, BMP, TIFF, GIF, WebP, DICOM
.dcm/.dicom) needs a report, and every report needs its image; files named by a report are read whatever their
extension (DICOM without one). An empty report means text-free inference, allowed only for models that support it
(`config.supports_text_free_inference`). `--dataset` reads any layout `tmca_hf.data.load_tmca_dataset` reads (LViT,
flat, medvlsm, saved, parquet, Hub); with `--skip_invalid` its invalid examples are left out and listed.

Output, only inside `OUT`: one mask PNG per image, the original size, 0 (background) / 255 (lesion), named by
`MASK_NAMING` (also recorded in summary.json); `OUT/summary.json` with the per-image file, mask, report, size, lesion
pixels, area fraction and report-image consistency (0-1, how well the report matches the image; null without a
report), the laterality convention used, the skipped examples, the images whose report may not match (`low_consistency`:
consistency below 0.5, the Space's warning) and those segmented without a report (`text_free`), the totals and the
timing; the same lists close the run on stderr. An existing non-empty `OUT` is only written
to with `--overwrite` (which first removes the masks a previous run listed in its summary.json).

Exit status: 0 when every image was segmented, 1 when some images could not be read (they are listed on stderr and in
summary.json under "failed"; the others are written), 2 for a usage error (nothing is written).
"""

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional

from tqdm.auto import tqdm

from . import fit_checks
from .inference import (
    RELEASED_MODEL,
    ReportError,
    check_report,
    check_threshold,
    load_model,
    mask_to_image,
    predict,
)
from .modeling.imaging_tmca import ImageReadError, read_image
from .prediction_inputs import MASK_NAMING, assign_mask_names, dataset_items, folder_items, is_mask_name, read_reports


SUMMARY_FILE = "summary.json"


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
            if isinstance(name, str) and is_mask_name(name):
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
    unmatched_reports, ignored_files = [], {}
    if args.images:
        images = Path(args.images)
        matched = folder_items(images, read_reports(args.reports))
        items, skipped = matched.items, []
        unmatched_reports, ignored_files = matched.unmatched_reports, matched.ignored_files
        images_dir = None if images.is_file() else images  # a folder whose subfolders are read as images
        source = {"images": str(images), "reports": str(args.reports)}
    else:
        images_dir = None
        items, skipped = dataset_items(args.dataset, args.split, args.prompt_key, args.skip_invalid)
        source = {"dataset": str(args.dataset), "split": args.split, "prompt_key": args.prompt_key}
    if not items:
        raise ValueError("No images to segment.")
    assign_mask_names(items)
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
                        "ood_score": prediction.ood_score, "unfamiliar": prediction.unfamiliar,
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
        "unmatched_reports": unmatched_reports,
        "ignored_files": ignored_files,
        "low_consistency": [
            {"file": result["file"], "consistency": result["consistency"]} for result in flagged_consistency(results)
        ],
        "consistency_warning_below": fit_checks.CONSISTENCY_WARNING,
        "unfamiliar_images": [
            {"file": result["file"], "ood_score": result["ood_score"]} for result in results if result["unfamiliar"]
        ],
        "ood_threshold": model.config.ood_threshold,
        "text_free": [result["file"] for result in results if result["text_free"]],
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
    print_closing_summary(summary)
    if failed:
        listing = "\n  ".join(f"{entry['file']}: {entry['error']}" for entry in failed)
        print(f"tmca-predict: {len(failed)} image(s) could not be read:\n  {listing}", file=sys.stderr)
        return 1
    return 0


def flagged_consistency(results: list) -> list:
    """The results whose report may not fit the image (`fit_checks.report_may_not_fit`), lowest consistency first."""
    low = [result for result in results if fit_checks.report_may_not_fit(result["consistency"])]
    return sorted(low, key=lambda result: result["consistency"])


def print_closing_summary(summary: dict) -> None:
    """What needs a look, named, on stderr: images unlike the training images, reports that may not match their
    image, text-free predictions, report files that named no image and files left unused (all of them in
    summary.json too)."""
    def named(entries) -> str:
        entries = list(entries)
        return ", ".join(entries[:10]) + (f" and {len(entries) - 10} more" if len(entries) > 10 else "")

    lines = []
    if summary["unfamiliar_images"]:
        lines.append(f"{len(summary['unfamiliar_images'])} image(s) unlike the images the model was trained on "
                     f"(ood_score above {summary['ood_threshold']:.1f}; their masks may mean nothing): "
                     + named(f"{entry['file']} ({entry['ood_score']:.1f})" for entry in summary["unfamiliar_images"]))
    if summary["low_consistency"]:
        lines.append(f"{len(summary['low_consistency'])} image(s) whose report may not match (consistency below "
                     f"{fit_checks.CONSISTENCY_WARNING}; check the report and --laterality): "
                     + named(f"{entry['file']} ({entry['consistency']:.2f})" for entry in summary["low_consistency"]))
    if summary["text_free"]:
        lines.append(f"{len(summary['text_free'])} image(s) segmented without a report (text-free, less reliable): "
                     + named(summary["text_free"]))
    if summary["unmatched_reports"]:
        lines.append(f"{len(summary['unmatched_reports'])} report file(s) named no image and were skipped: "
                     + named(summary["unmatched_reports"]))
    unused = [f"{folder}: {name}" for folder, names in summary["ignored_files"].items() for name in names]
    if unused:
        lines.append(f"{len(unused)} file(s) ignored (neither an image nor a .txt report): {named(unused)}")
    for line in lines:
        print(f"tmca-predict: {line}", file=sys.stderr)


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
    source.add_argument("--images", help="an image file, or a folder of images (PNG, JPEG, 16-bit PNG, TIFF, DICOM, ...)")
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
