"""Reports for a folder of masks (`tmca-data describe`), and how they agree with the reports a dataset has.

The reports come from `tmca_hf.describer.describe_mask`; this module reads folders and split files, writes one
report file per mask (nothing outside the folder named), and compares QaTa-COV19-style reports field by field.
"""

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Union

import torch
from PIL import Image

from .describer import NUMBER_WORDS, as_binary_mask, describe_mask
from .modeling.laterality_tmca import TRAINING_CONVENTION


MASK_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
DISCLAIMER = (
    "Reports written from masks bootstrap text for new data; they describe where the mask lies and do not replace "
    "a clinician's report."
)

# ------------------------------------------------------------------------------------------------ QaTa-style reports

_QATA = re.compile(
    r"^\s*(?P<laterality>unilateral|bilateral) pulmonary infection,\s*(?P<count>\w+) infected areas?,\s*"
    r"(?P<places>.*?)\.?\s*$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class QataReport:
    """A QaTa-COV19-style report read back: laterality ("unilateral"/"bilateral"), count, {side: zones}."""

    laterality: str
    count: Optional[int]
    zones: dict = field(default_factory=dict)

    @property
    def sides(self) -> tuple:
        return tuple(side for side in ("left", "right") if side in self.zones)

    @property
    def laterality_key(self) -> str:
        """The laterality with the side of a unilateral report: "bilateral", "unilateral left" or "unilateral right"."""
        return self.laterality if self.laterality == "bilateral" else f"unilateral {' '.join(self.sides)}".strip()


def parse_qata_report(report: str) -> Optional[QataReport]:
    """A QaTa-COV19-style report's laterality, count and zones per side; None when it is not in that form."""
    match = _QATA.match(report or "")
    if match is None:
        return None
    word = match.group("count").lower()
    count = NUMBER_WORDS.index(word) if word in NUMBER_WORDS else (int(word) if word.isdigit() else None)
    zones = {}
    for clause in re.split(r"\s+and\s+", match.group("places")):
        found = re.fullmatch(r"\s*(?P<zones>.*?)\s*\b(?P<side>left|right) lung\s*", clause, re.IGNORECASE)
        if found:
            zones[found.group("side").lower()] = found.group("zones").lower()
    return QataReport(match.group("laterality").lower(), count, zones)


# ------------------------------------------------------------------------------------------------ folders


def mask_id(filename: str) -> str:
    """File name -> example id: the stem without a `mask_` prefix (QaTa-COV19 names), as `tmca_hf.data` reads it."""
    stem = os.path.splitext(os.path.basename(filename))[0]
    return stem[len("mask_") :] if stem.startswith("mask_") else stem


def list_masks(masks_dir: Union[str, os.PathLike], ids: Optional[Iterable[str]] = None) -> dict:
    """id -> mask file of a folder (image suffixes, not recursive), limited to `ids` when given. Raises ValueError
    for an id with several files, an id that is not a plain file name, and ids asked for but not found."""
    masks_dir = Path(masks_dir)
    if not masks_dir.is_dir():
        raise ValueError(f"MASKS_DIR {masks_dir} is not a folder.")
    found, problems = {}, []
    for path in sorted(masks_dir.iterdir()):
        if not path.is_file() or path.suffix.lower() not in MASK_SUFFIXES:
            continue
        key = mask_id(path.name)
        if key in found:
            problems.append(f"{path.name}: id {key!r} also names {found[key].name}")
        elif key in ("", ".", "..") or key != Path(key).name:
            problems.append(f"{path.name}: id {key!r} is not usable as a file name")
        else:
            found[key] = path
    if ids is not None:
        wanted = list(dict.fromkeys(ids))
        problems += [f"{key}: listed in the split but no mask in {masks_dir}" for key in wanted if key not in found]
        found = {key: found[key] for key in wanted if key in found}
    if problems:
        raise ValueError(
            f"{len(problems)} problem(s) with the masks in {masks_dir}:\n"
            + "\n".join(f"  {problem}" for problem in problems)
        )
    if not found:
        raise ValueError(f"No mask files ({', '.join(MASK_SUFFIXES)}) in {masks_dir}.")
    return found


def read_split_ids(split_file: Union[str, os.PathLike], split: str) -> list:
    """The ids of one split of a `split.json` ({split: [ids]})."""
    try:
        splits = json.loads(Path(split_file).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"Cannot read the split file {split_file}: {error}") from None
    if not isinstance(splits, dict) or split not in splits or not isinstance(splits[split], list):
        names = sorted(splits) if isinstance(splits, dict) else []
        raise ValueError(f"The split file {split_file} has no list {split!r} (it has {names}).")
    return [str(key) for key in splits[split]]


def _default_read_mask(path: Path) -> torch.Tensor:
    with Image.open(path) as image:
        image.load()
        return as_binary_mask(image)


@dataclass
class DescribeResult:
    """What [`describe_folder`] did: id -> generated report, the files written, and the comparison if asked."""

    reports: dict
    written: list
    output_dir: Path
    agreement: Optional[dict] = None

    def summary(self) -> str:
        lines = [
            f"{len(self.reports)} masks described; {len(self.written)} reports written to {self.output_dir / 'reports'}"
        ]
        empty = sum(1 for text in self.reports.values() if text.startswith("no "))
        if empty:
            lines.append(f"{empty} empty masks (no lesion)")
        if self.agreement is not None:
            lines.append(format_agreement(self.agreement))
        lines.append(DISCLAIMER)
        return "\n".join(lines)


def describe_folder(
    masks_dir: Union[str, os.PathLike],
    output_dir: Union[str, os.PathLike],
    modality: str = "chest_xray",
    convention: str = TRAINING_CONVENTION,
    target: str = "lesion",
    ids: Optional[Iterable[str]] = None,
    overwrite: bool = False,
    compare_dir: Union[str, os.PathLike, None] = None,
    read_mask: Optional[Callable] = None,
    min_area: Optional[int] = None,
) -> DescribeResult:
    """
    Write `output_dir/reports/<id>.txt` for each mask of `masks_dir` (or of `ids`), nothing outside
    `output_dir/reports`. Every mask is read and described before anything is written; an existing report file is
    refused (ValueError, nothing written) unless `overwrite`. `read_mask(path)` -> mask (default: PIL, lesion above
    127). With `compare_dir`, the reports are compared with `compare_dir/<id>.txt` ([`report_agreement`]).
    """
    masks = list_masks(masks_dir, ids)
    read_mask = read_mask or _default_read_mask
    reports, problems, lesions = {}, [], {}
    for key, path in masks.items():
        try:
            binary = as_binary_mask(read_mask(path))
        except (ValueError, OSError) as error:
            problems.append(f"{path.name}: {error}")
            continue
        reports[key] = describe_mask(binary, modality, convention, target, min_area)
        if compare_dir is not None:
            lesions[key] = _left_share(binary)
    if problems:
        raise ValueError(
            f"{len(problems)} unusable mask(s), nothing written:\n" + "\n".join(f"  {problem}" for problem in problems)
        )
    agreement = None
    if compare_dir is not None:
        agreement = report_agreement(reports, _read_reports(compare_dir, reports), lesions)
    output_dir = Path(output_dir)
    folder = (output_dir / "reports").resolve()
    targets = {}
    for key in reports:
        path = (folder / f"{key}.txt").resolve()
        if path.parent != folder:
            raise ValueError(f"id {key!r} would write outside {folder}")
        targets[key] = path
    existing = [path for path in targets.values() if path.exists()]
    if existing and not overwrite:
        shown = ", ".join(path.name for path in existing[:5]) + (", ..." if len(existing) > 5 else "")
        raise ValueError(
            f"{len(existing)} report(s) already exist in {folder} ({shown}); pass --overwrite (overwrite=True) to "
            f"replace them. Nothing was written."
        )
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for key, path in targets.items():
        path.write_text(reports[key] + "\n", encoding="utf-8")
        written.append(path)
    return DescribeResult(reports, written, output_dir, agreement)


def _read_reports(reports_dir: Union[str, os.PathLike], keys: Iterable[str]) -> dict:
    reports_dir = Path(reports_dir)
    if not reports_dir.is_dir():
        raise ValueError(f"The reports folder {reports_dir} to compare with is not a folder.")
    found = {}
    for key in keys:
        path = reports_dir / f"{key}.txt"
        if path.is_file():
            found[key] = path.read_text(encoding="utf-8").strip()
    return found


def _left_share(mask: torch.Tensor) -> Optional[float]:
    """The share of the lesion pixels in the image's left half (x < W / 2); None for an empty mask."""
    total = int(mask.sum())
    if total == 0:
        return None
    width = mask.shape[1]
    left = int(mask[:, : width // 2].sum()) + (int(mask[:, width // 2].sum()) / 2 if width % 2 else 0)
    return left / total


def report_agreement(generated: dict, reference: dict, left_shares: Optional[dict] = None) -> dict:
    """
    How generated reports agree with reference ones (ids in both): `exact` (same text, surrounding blanks aside),
    `laterality_and_count` (same bilateral / unilateral-and-side and same number of areas), `laterality`, `count`,
    `zones` (same zone words on every side), as shares of `compared`; reference reports that are not QaTa-style count
    as disagreeing on all but `exact`. With `left_shares` (id -> share of the lesion in the image's left half),
    `left_lung_in_left_half` / `right_lung_in_right_half`: of the unilateral "left lung" ("right lung") reference
    reports, the share whose mask has most of its lesion in the image's left (right) half, with the counts.
    """
    keys = [key for key in generated if key in reference]
    tally = dict.fromkeys(("exact", "laterality_and_count", "laterality", "count", "zones"), 0)
    for key in keys:
        tally["exact"] += generated[key].strip() == reference[key].strip()
        ours, theirs = parse_qata_report(generated[key]), parse_qata_report(reference[key])
        if ours is None or theirs is None:
            continue
        same_side, same_count = ours.laterality_key == theirs.laterality_key, ours.count == theirs.count
        tally["laterality"] += same_side
        tally["count"] += same_count
        tally["laterality_and_count"] += same_side and same_count
        tally["zones"] += ours.zones == theirs.zones
    result = {"compared": len(keys), "missing_reference": len(generated) - len(keys)}
    result.update({name: value / len(keys) if keys else float("nan") for name, value in tally.items()})
    result["counts"] = dict(tally)
    if left_shares is not None:
        for side, name in (("left", "left_lung_in_left_half"), ("right", "right_lung_in_right_half")):
            shares = []
            for key in keys:
                parsed = parse_qata_report(reference[key])
                if parsed and parsed.laterality == "unilateral" and parsed.sides == (side,):
                    share = left_shares.get(key)
                    if share is not None:
                        shares.append(share > 0.5 if side == "left" else share < 0.5)
            result[name] = {
                "share": sum(shares) / len(shares) if shares else float("nan"),
                "of": len(shares),
                "agree": sum(shares),
            }
    return result


def format_agreement(agreement: dict) -> str:
    """The comparison as printed by `tmca-data describe --compare`."""
    counts, n = agreement["counts"], agreement["compared"]
    lines = [f"compared with {n} reference reports ({agreement['missing_reference']} masks without one):"]
    for name, label in (
        ("exact", "generated report equals the reference"),
        ("laterality_and_count", "laterality and count right"),
        ("laterality", "laterality right"),
        ("count", "count right"),
        ("zones", "zones right on every side"),
    ):
        lines.append(f"  {label}: {counts[name]}/{n} = {agreement[name]:.1%}")
    for name, label in (
        ("left_lung_in_left_half", 'unilateral "left lung" references with most lesion in the image\'s left half'),
        ("right_lung_in_right_half", 'unilateral "right lung" references with most lesion in the image\'s right half'),
    ):
        if name in agreement:
            item = agreement[name]
            lines.append(f"  {label}: {item['agree']}/{item['of']} = {item['share']:.1%}")
    return "\n".join(lines)


__all__ = [
    "DescribeResult",
    "QataReport",
    "describe_folder",
    "format_agreement",
    "list_masks",
    "parse_qata_report",
    "read_split_ids",
    "report_agreement",
]
