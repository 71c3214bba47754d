"""Reports for TMCA: left and right between conventions, and reports written from lesion masks.

This module ships next to the processor as remote code, so it imports only torch, PIL and the standard library.

Left and right
--------------
In the QaTa-COV19 reports (the LViT annotations) "left lung" means the left of the *image*: of the 520 unilateral
"left lung" masks of the train split, 517 (99.4 %) have most of their lesion pixels in the image's left half
(`tmca-data describe ... --compare REPORTS_DIR` prints this share). On a standard frontal (PA) chest X-ray the
image's left is the *patient's right*, and clinicians write the patient's side. Two conventions therefore exist:

- `"image"`: left/right as seen in the image (QaTa-COV19, hence `TRAINING_CONVENTION`);
- `"patient"`: the patient's own left/right (what a clinician writes).

[`swap_laterality`] maps one into the other (the map is its own inverse) and [`convert_laterality`] applies it when
two conventions differ. Only the whole words *left* and *right* change (case kept: Left -> Right, LEFT -> RIGHT;
"left-sided" -> "right-sided"); "left and right" (both sides) stays, and so do *bilateral*, *leftover* and
abbreviations such as "lt"/"rt". In a QaTa-style clause pair "<zones> left lung and <zones> right lung" the clauses
are put back in the order of the input (left first stays left first), so "all left lung and lower right lung" becomes
"lower left lung and all right lung", the wording the model was trained on, and swapping twice gives the input back.

Reports from masks
------------------
[`describe_mask`] writes a report from a binary mask (numpy array, torch tensor or PIL image; nonzero / above 127 is
lesion). Lesions are the 8-connected components of the mask, found by [`connected_components`] (row runs and a
union-find, no scipy). Components smaller than `MIN_COMPONENT_FRACTION` of the image (1/5000: 11 pixels at 224 x 224)
are noise and left out: on the QaTa-COV19 train split the only components below 170 pixels are 5 specks of 1-2
pixels, and with them left out the number of components equals the report's number of infected areas for all 5,713
masks.

`modality="chest_xray"` writes the QaTa-COV19 wording, e.g. "bilateral pulmonary infection, two infected areas,
lower left lung and lower right lung." (its vocabulary: unilateral/bilateral, "one" ... "six infected area(s)",
zones "upper", "middle", "lower" and "all", the left clause before the right one):

- side: a component belongs to the image's left half (x < W / 2) when more than 20 % of its pixels lie there, to the
  right half when more than 20 % lie there (a lesion across the midline belongs to both: "bilateral pulmonary
  infection, one infected area, ..."). Bilateral when both sides have lesion; sides are named in `convention`
  (default the training data's, "image").
- zones of a side, from the rows its lesion covers in that half (top row t, bottom row b, H the mask's height,
  the thresholds as fractions of H): the LViT annotators' zones are not anatomical thirds of the image, so the rule
  is the one that best reproduces their use on the train split (80 % of the sides right there, 74 % on the
  validation split, which the rule never saw; a depth-8 decision tree on the same measurements reaches 81 % in
  cross-validation on train, so the rest is the annotators' own judgement):

  - t < 0.28 H (the lesion reaches the upper lung):
    rows without lesion between t and b (a gap of at least 1 % of H) -> "upper lower" if b >= 0.46 H, else "upper";
    no gap -> "upper" if b < 0.42 H, else "all";
  - t >= 0.28 H: "middle" if b < 0.46 H; else "middle lower" if the lesion spans at least 0.40 H (b - t + 1), else
    "lower".

  "upper middle lower" and "upper middle", which the annotators wrote for 3 % and 1 % of the sides, are never
  written. An empty mask gives "no pulmonary infection." (not in the QaTa-COV19 vocabulary: every mask there has a
  lesion).

`modality="generic"` (endoscopy, dermoscopy, ...) follows the medvlsm prompt wording (Kvasir-SEG "p6"): "one small
lesion, located in center of the image", "two small, medium lesions, located in top left, right of the image":
count, the sizes present (each component's share of the image: small < 8.5 %, medium < 30 %, large; the thresholds
that separate medvlsm's size words on Kvasir-SEG) and the position of each component (largest first, repeats left
out): where the centre of its bounding box falls on a 3 x 3 grid of the image (left/center/right by thirds of the
width, top/center/bottom by thirds of the height). The noun is `target` ("lesion" by default, e.g. "polyp"). An
empty mask gives "no <target>". Against medvlsm's p6 prompts of the Kvasir-SEG train split (798): the count agrees
for 85 %, the size words for 96 %, the positions for 64 % (medvlsm's own grid is not in thirds).

Reports written this way bootstrap text for new data (to train or try TMCA); they describe only where the mask is,
and do not replace a clinician's report.

Measurement (`tmca-data describe /work/shared/data/qata_cov19/masks --output_dir OUT --split_file
/work/shared/data/qata_cov19/split.json --split train --compare /work/shared/data/qata_cov19/reports`): the command
prints the share of generated reports equal to the real ones, the share with laterality and count right, and the
left-half share above. As measured: train 3,990/5,713 = 69.8 % equal, 5,694/5,713 = 99.7 % with laterality and count
right (the count alone: 100 %); validation (`--split val`) 905/1,429 = 63.3 % and 1,423/1,429 = 99.6 %.
"""

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Union

import torch
from PIL import Image


CONVENTIONS = ("image", "patient")
TRAINING_CONVENTION = "image"  # QaTa-COV19 / LViT reports: "left" is the image's left
MODALITIES = ("chest_xray", "generic")
MIN_COMPONENT_FRACTION = 1 / 5000  # components below this share of the image are noise (11 px at 224 x 224)
SIDE_FRACTION = 0.2  # a component belongs to a half holding more than this share of its pixels

# Zone rule for chest X-rays (fractions of the mask's height), see the module docstring.
UPPER_TOP = 0.28  # a side whose lesion starts above this reaches the upper lung
UPPER_ONLY_BOTTOM = 0.42  # ... and is "upper" only when it ends above this (no gap)
LOWER_BOTTOM = 0.46  # a lesion ending above this (and starting below UPPER_TOP) is "middle"
MIDDLE_LOWER_SPAN = 0.40  # a lesion below UPPER_TOP spanning this much height is "middle lower"
GAP_FRACTION = 0.01  # rows without lesion (this share of the height) between two lesions of a side

# Generic template (medvlsm's Kvasir-SEG wording).
SIZE_WORDS = ((0.085, "small"), (0.30, "medium"), (math.inf, "large"))

NUMBER_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty"
).split()
MASK_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
DISCLAIMER = (
    "Reports written from masks bootstrap text for new data; they describe where the mask lies and do not replace "
    "a clinician's report."
)


# ------------------------------------------------------------------------------------------------ left and right

_SIDE_WORDS = re.compile(
    r"\b(?:(?P<pair_a>left|right)(?P<pair_and>\s+and\s+)(?P<pair_b>left|right)|(?P<word>left|right))\b",
    re.IGNORECASE,
)
_ZONES = r"(?:(?:all|upper|middle|lower)\s+)*"
_CLAUSE_PAIR = re.compile(
    rf"\b(?P<first>{_ZONES}(?P<side1>left|right)\s+lung)(?P<between>\s+and\s+)"
    rf"(?P<second>{_ZONES}(?P<side2>left|right)\s+lung)\b",
    re.IGNORECASE,
)


def _other_side(word: str) -> str:
    other = "right" if word.lower() == "left" else "left"
    if word.isupper():
        return other.upper()
    return other.capitalize() if word[0].isupper() else other


def _swap_words(match: re.Match) -> str:
    if match.group("word") is not None:
        return _other_side(match.group("word"))
    first, second = match.group("pair_a"), match.group("pair_b")
    if first.lower() != second.lower():
        return match.group(0)  # "left and right" names both sides: it stays as it is
    return _other_side(first) + match.group("pair_and") + _other_side(second)


def swap_laterality(report: str) -> str:
    """
    Swap left and right in a report: whole words only, case kept ("Left" -> "Right", "LEFT" -> "RIGHT",
    "left-sided" -> "right-sided"), "bilateral" untouched, "left and right" (both sides) kept as it is. A QaTa-style
    pair of clauses "<zones> left lung and <zones> right lung" keeps the order of its sides (left first stays left
    first), so "lower left lung and all right lung" becomes "all left lung and lower right lung". The map is its own
    inverse: `swap_laterality(swap_laterality(report)) == report`.
    """
    if not isinstance(report, str):
        raise TypeError(f"report must be a string, got {type(report).__name__}.")
    first_sides = iter([match.group("side1").lower() for match in _CLAUSE_PAIR.finditer(report)])
    swapped = _SIDE_WORDS.sub(_swap_words, report)

    def keep_order(match: re.Match) -> str:  # the swap keeps every clause pair, in the same order
        if match.group("side1").lower() == next(first_sides):
            return match.group(0)
        return match.group("second") + match.group("between") + match.group("first")

    return _CLAUSE_PAIR.sub(keep_order, swapped)


def _check_convention(convention: str, name: str) -> str:
    if convention not in CONVENTIONS:
        raise ValueError(f"{name}={convention!r}; expected one of {CONVENTIONS}.")
    return convention


def convert_laterality(report: str, source: str, target: str = TRAINING_CONVENTION) -> str:
    """A report written in the `source` convention ("image" or "patient") rewritten in the `target` one."""
    _check_convention(source, "source")
    _check_convention(target, "target")
    return report if source == target else swap_laterality(report)


# ------------------------------------------------------------------------------------------------ masks


def as_binary_mask(mask) -> torch.Tensor:
    """
    An (H, W) bool tensor from a mask: a torch tensor, a numpy array (or anything with `__array__`) or a PIL image,
    2-D or with equal channels. Bool masks are taken as they are; values of at most 1 are lesion when nonzero; other
    values (0/255 masks) are lesion above 127. Mask *files* with JPEG noise, 16-bit or palette values: threshold
    them first (`tmca_hf.imaging_tmca.threshold_mask`, as `tmca-data describe` does).
    """
    if isinstance(mask, Image.Image):
        if mask.mode != "L":
            mask = mask.convert("L")  # "1" -> 0/255, colour by luma
        values = torch.frombuffer(bytearray(mask.tobytes()), dtype=torch.uint8)
        values = values.reshape(mask.height, mask.width)
    elif isinstance(mask, torch.Tensor):
        values = mask.detach().cpu()
    elif hasattr(mask, "__array__"):
        values = torch.as_tensor(mask.__array__())
    else:
        raise TypeError(f"mask is a {type(mask).__name__}; expected a numpy array, a torch tensor or a PIL image.")
    if values.ndim == 3:
        channels_last = values.shape[-1] in (1, 3, 4) and values.shape[0] not in (1, 3, 4)
        values = values.movedim(-1, 0) if channels_last else values
        values = values[0]
    if values.ndim != 2:
        raise ValueError(f"mask has shape {tuple(values.shape)}; expected (H, W) or (H, W, C).")
    if values.dtype == torch.bool:
        return values.clone()
    if values.numel() and float(values.max()) <= 1:
        return values > 0
    return values > 127


@dataclass
class Component:
    """One connected lesion: its row runs `(row, start, stop)` (columns `start <= x < stop`) and the mask's size."""

    runs: list
    height: int
    width: int

    @property
    def area(self) -> int:
        return sum(stop - start for _, start, stop in self.runs)

    @property
    def bbox(self) -> tuple:
        """(top, left, bottom, right), inclusive pixel coordinates."""
        rows = [row for row, _, _ in self.runs]
        return min(rows), min(start for _, start, _ in self.runs), max(rows), max(stop for _, _, stop in self.runs) - 1

    @property
    def centroid(self) -> tuple:
        """(y, x) of the pixel centres, in pixels."""
        area = self.area
        y = sum(row * (stop - start) for row, start, stop in self.runs) / area
        x = sum((start + stop - 1) * (stop - start) / 2 for _, start, stop in self.runs) / area
        return y, x

    def pixels_in_columns(self, low: float, high: float) -> int:
        """How many of its pixels have a column x with low <= x < high."""
        lo, hi = math.ceil(low), math.ceil(high)
        return sum(max(0, min(stop, hi) - max(start, lo)) for _, start, stop in self.runs)

    def rows_in_columns(self, low: float, high: float) -> set:
        """The rows in which it has pixels with low <= x < high."""
        lo, hi = math.ceil(low), math.ceil(high)
        return {row for row, start, stop in self.runs if min(stop, hi) > max(start, lo)}


def _row_runs(mask: torch.Tensor) -> list:
    """[(row, start, stop)] of the lesion runs, row by row, left to right."""
    height, width = mask.shape
    padded = torch.zeros((height, width + 2), dtype=torch.int8)
    padded[:, 1:-1] = mask
    steps = padded[:, 1:] - padded[:, :-1]
    starts = (steps == 1).nonzero().tolist()
    stops = (steps == -1).nonzero().tolist()
    return [(row, start, stop) for (row, start), (_, stop) in zip(starts, stops)]


def default_min_area(height: int, width: int) -> int:
    """The noise limit: components below `MIN_COMPONENT_FRACTION` of the image (at least 1 pixel) are left out."""
    return max(1, math.ceil(MIN_COMPONENT_FRACTION * height * width))


def connected_components(mask, connectivity: int = 8, min_area: Optional[int] = None) -> list:
    """
    The lesions of a mask as [`Component`]s, largest first (ties: top to bottom, left to right).

    Args:
        mask: anything [`as_binary_mask`] reads.
        connectivity (`int`, defaults to 8): 8 (diagonal neighbours join) or 4.
        min_area (`int`, *optional*): components with fewer pixels are noise and left out; defaults to
            `default_min_area` (1/5000 of the image). 1 keeps everything.
    """
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity={connectivity}; expected 4 or 8.")
    mask = as_binary_mask(mask)
    height, width = mask.shape
    min_area = default_min_area(height, width) if min_area is None else int(min_area)
    runs = _row_runs(mask)
    parent = list(range(len(runs)))

    def find(index: int) -> int:
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    reach = 1 if connectivity == 8 else 0
    previous, current, current_row = [], [], None  # run indices of the row above and of this row
    for index, (row, start, stop) in enumerate(runs):
        if row != current_row:
            previous = current if current_row == row - 1 else []
            current, current_row, pointer = [], row, 0
        while pointer < len(previous) and runs[previous[pointer]][2] + reach <= start:
            pointer += 1  # runs above that end before this one starts can touch no later run of this row either
        look = pointer
        while look < len(previous) and runs[previous[look]][1] < stop + reach:
            parent[find(previous[look])] = find(index)
            look += 1
        current.append(index)
    groups = {}
    for index, run in enumerate(runs):
        groups.setdefault(find(index), []).append(run)
    components = [Component(sorted(group), height, width) for group in groups.values()]
    components = [component for component in components if component.area >= min_area]
    components.sort(key=lambda c: (-c.area, c.bbox[0], c.bbox[1]))
    return components


# ------------------------------------------------------------------------------------------------ describing


def number_word(count: int) -> str:
    return NUMBER_WORDS[count] if 0 <= count < len(NUMBER_WORDS) else str(count)


def _side_zones(rows: set, height: int) -> str:
    """The QaTa-COV19 zone words of one side from the rows its lesion covers there (see the module docstring)."""
    ordered = sorted(rows)
    top, bottom = ordered[0], ordered[-1]
    gap = max((b - a - 1 for a, b in zip(ordered, ordered[1:])), default=0)
    if top < UPPER_TOP * height:
        if gap >= max(1, round(GAP_FRACTION * height)):
            return "upper lower" if bottom >= LOWER_BOTTOM * height else "upper"
        return "upper" if bottom < UPPER_ONLY_BOTTOM * height else "all"
    if bottom < LOWER_BOTTOM * height:
        return "middle"
    return "middle lower" if bottom - top + 1 >= MIDDLE_LOWER_SPAN * height else "lower"


def _chest_xray_report(components: list, height: int, width: int) -> str:
    if not components:
        return "no pulmonary infection."
    middle = width / 2
    rows = {"left": set(), "right": set()}
    for component in components:
        left_share = component.pixels_in_columns(0, middle) / component.area
        if left_share > SIDE_FRACTION:
            rows["left"] |= component.rows_in_columns(0, middle)
        if 1 - left_share > SIDE_FRACTION:
            rows["right"] |= component.rows_in_columns(middle, width)
    sides = [side for side in ("left", "right") if rows[side]]
    count = len(components)
    laterality = "bilateral" if len(sides) == 2 else "unilateral"
    areas = f"{number_word(count)} infected area{'' if count == 1 else 's'}"
    places = " and ".join(f"{_side_zones(rows[side], height)} {side} lung" for side in sides)
    return f"{laterality} pulmonary infection, {areas}, {places}."


def _grid_position(y: float, x: float, height: int, width: int) -> str:
    row = "top" if y < height / 3 else ("bottom" if y >= 2 * height / 3 else "")
    column = "left" if x < width / 3 else ("right" if x >= 2 * width / 3 else "")
    return " ".join(word for word in (row, column) if word) or "center"


def _generic_report(components: list, height: int, width: int, target: str) -> str:
    if not components:
        return f"no {target}"
    count = len(components)
    shares = [component.area / (height * width) for component in components]
    sizes = [word for limit, word in SIZE_WORDS if any(_size_word(s) == word for s in shares)]
    positions = []
    for component in components:
        top, left, bottom, right = component.bbox
        position = _grid_position((top + bottom + 1) / 2, (left + right + 1) / 2, height, width)
        if position not in positions:
            positions.append(position)
    noun = target if count == 1 else f"{target}s"
    return f"{number_word(count)} {', '.join(sizes)} {noun}, located in {', '.join(positions)} of the image"


def _size_word(share: float) -> str:
    return next(word for limit, word in SIZE_WORDS if share < limit)


def describe_mask(
    mask,
    modality: str = "chest_xray",
    convention: str = TRAINING_CONVENTION,
    target: str = "lesion",
    min_area: Optional[int] = None,
) -> str:
    """
    A report written from a binary mask (see the module docstring for the wording and the rules).

    Args:
        mask: a numpy array, torch tensor or PIL image ([`as_binary_mask`]).
        modality (`str`, defaults to "chest_xray"): "chest_xray" (QaTa-COV19 wording) or "generic" (medvlsm
            wording from size, count and position).
        convention (`str`, defaults to "image", the training data's): which side "left" names in a chest X-ray
            report, "image" or "patient" (the patient's left is the image's right on a frontal film). The generic
            template always names positions in the image.
        target (`str`, defaults to "lesion"): the noun of the generic template ("polyp", ...).
        min_area (`int`, *optional*): the noise limit in pixels (default 1/5000 of the image).
    """
    if modality not in MODALITIES:
        raise ValueError(f"modality={modality!r}; expected one of {MODALITIES}.")
    _check_convention(convention, "convention")
    binary = as_binary_mask(mask)
    height, width = binary.shape
    components = connected_components(binary, min_area=min_area)
    if modality == "generic":
        return _generic_report(components, height, width, target)
    return convert_laterality(_chest_xray_report(components, height, width), TRAINING_CONVENTION, convention)


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
    "CONVENTIONS",
    "Component",
    "DescribeResult",
    "QataReport",
    "TRAINING_CONVENTION",
    "as_binary_mask",
    "connected_components",
    "convert_laterality",
    "describe_folder",
    "describe_mask",
    "format_agreement",
    "parse_qata_report",
    "report_agreement",
    "swap_laterality",
]
