"""`tmca-data`: convert, push and describe datasets from the command line.
"""

import argparse
import sys
from pathlib import Path

from ..dataset_publishing import push_tmca_dataset, save_tmca_dataset
from ..modeling.imaging_tmca import MASK_THRESHOLD, threshold_mask
from .loading import LAYOUTS, load_tmca_dataset, skipped_message


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
        from ..report_folders import describe_folder, read_split_ids

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


if __name__ == "__main__":
    sys.exit(main())
