"""Reports written from lesion masks (`tmca-data describe`): text for new data to train or try TMCA on.

A toolkit module: it does not travel with a model. Left and right follow the conventions of
`tmca_hf.modeling.laterality_tmca` (the module that does travel, for the processor).

Reports from masks
------------------
[`describe_mask`] writes a report from a binary mask (numpy array, torch tensor or PIL image; nonzero / above 127 is
lesion). Lesions are the 8-connected components of the mask, found by [`connected_components`]
(`scipy.ndimage.label`). Components smaller than `MIN_COMPONENT_FRACTION` of the image (1/5000: 11 pixels at 224 x 224)
are noise and left out: on the QaTa-COV19 train split the only components below 170 pixels are 5 specks of 1-2
pixels, and with them left out the number of components equals the report's number of infected areas for all 5,713
masks.

`modality="chest_xray"` writes the QaTa-COV19 wording, e.g. "bilateral pulmonary infection, two infected areas,
lower left lung and lower right lung." (its vocabulary: unilateral/bilateral, "one" ... "six infected area(s)",
zones "upper", "middle", "lower" and "all", the left clause before the right one; [`qata_report`] words the sentence,
for the describer and for anyone writing such a report by hand, e.g. the Space's report picker):

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

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from .modeling.laterality_tmca import TRAINING_CONVENTION, check_convention, convert_laterality


MODALITIES = ("chest_xray", "generic")
MIN_COMPONENT_FRACTION = 1 / 5000  # components below this share of the image are noise (11 px at 224 x 224)
SIDE_FRACTION = 0.2  # a component belongs to a half holding more than this share of its pixels

# Zone rule for chest X-rays (fractions of the mask's height), see the module docstring.
UPPER_TOP = 0.28  # a side whose lesion starts above this reaches the upper lung
UPPER_ONLY_BOTTOM = 0.42  # ... and is "upper" only when it ends above this (no gap)
LOWER_BOTTOM = 0.46  # a lesion ending above this (and starting below UPPER_TOP) is "middle"
MIDDLE_LOWER_SPAN = 0.40  # a lesion below UPPER_TOP spanning this much height is "middle lower"
GAP_FRACTION = 0.01  # rows without lesion (this share of the height) between two lesions of a side

# The zone words a chest X-ray report names a side with (QaTa-COV19's; the zone rule writes each of them).
CHEST_XRAY_ZONES = ("upper", "middle", "lower", "middle lower", "upper lower", "all")
SIDES = ("left", "right")

# Generic template (medvlsm's Kvasir-SEG wording).
SIZE_WORDS = ((0.085, "small"), (0.30, "medium"), (math.inf, "large"))

NUMBER_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty"
).split()


# ------------------------------------------------------------------------------------------------ masks


def as_binary_mask(mask) -> torch.Tensor:
    """
    An (H, W) bool tensor from a mask: a torch tensor, a numpy array (or anything with `__array__`) or a PIL image,
    2-D or with equal channels. Bool masks are taken as they are; values of at most 1 are lesion when nonzero; other
    values (0/255 masks) are lesion above 127. Mask *files* with JPEG noise, 16-bit or palette values: threshold
    them first (`tmca_hf.modeling.imaging_tmca.threshold_mask`, as `tmca-data describe` does).
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
    """One connected lesion: its pixels, an (H, W) bool array the size of the mask."""

    pixels: np.ndarray

    @property
    def area(self) -> int:
        return int(self.pixels.sum())

    @property
    def bbox(self) -> tuple:
        """(top, left, bottom, right), inclusive pixel coordinates."""
        rows, columns = np.flatnonzero(self.pixels.any(1)), np.flatnonzero(self.pixels.any(0))
        return int(rows[0]), int(columns[0]), int(rows[-1]), int(columns[-1])

    @property
    def centroid(self) -> tuple:
        """(y, x) of the pixel centres, in pixels."""
        ys, xs = np.nonzero(self.pixels)
        return float(ys.mean()), float(xs.mean())

    def pixels_in_columns(self, low: float, high: float) -> int:
        """How many of its pixels have a column x with low <= x < high."""
        return int(self.pixels[:, math.ceil(low) : math.ceil(high)].sum())

    def rows_in_columns(self, low: float, high: float) -> set:
        """The rows in which it has pixels with low <= x < high."""
        return set(np.flatnonzero(self.pixels[:, math.ceil(low) : math.ceil(high)].any(1)).tolist())


def default_min_area(height: int, width: int) -> int:
    """The noise limit: components below `MIN_COMPONENT_FRACTION` of the image (at least 1 pixel) are left out."""
    return max(1, math.ceil(MIN_COMPONENT_FRACTION * height * width))


def connected_components(mask, connectivity: int = 8, min_area: Optional[int] = None) -> list:
    """
    The lesions of a mask as [`Component`]s (`scipy.ndimage.label`), largest first (ties: top to bottom, left to
    right).

    Args:
        mask: anything [`as_binary_mask`] reads.
        connectivity (`int`, defaults to 8): 8 (diagonal neighbours join) or 4.
        min_area (`int`, *optional*): components with fewer pixels are noise and left out; defaults to
            `default_min_area` (1/5000 of the image). 1 keeps everything.
    """
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity={connectivity}; expected 4 or 8.")
    mask = as_binary_mask(mask).numpy()
    min_area = default_min_area(*mask.shape) if min_area is None else int(min_area)
    structure = ndimage.generate_binary_structure(2, 2 if connectivity == 8 else 1)
    labels, count = ndimage.label(mask, structure=structure)
    components = [Component(labels == label) for label in range(1, count + 1)]
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


def qata_report(sides_zones: dict, count: int) -> str:
    """
    The QaTa-COV19 sentence for lesions on the named sides, e.g. `qata_report({"left": "lower"}, 1)` ->
    "unilateral pulmonary infection, one infected area, lower left lung." and `qata_report({"left": "lower",
    "right": "lower"}, 2)` -> "bilateral pulmonary infection, two infected areas, lower left lung and lower right
    lung." (the left clause first). Sides are named in the training data's convention (the image's).

    Args:
        sides_zones (`dict`): {"left" and/or "right": one of `CHEST_XRAY_ZONES`}.
        count (`int`): the number of infected areas, at least 1 (one lesion across the midline is bilateral).
    """
    if not sides_zones or set(sides_zones) - set(SIDES):
        raise ValueError(f"sides_zones={sides_zones!r}; expected a zone for 'left' and/or 'right'.")
    unknown = {side: zone for side, zone in sides_zones.items() if zone not in CHEST_XRAY_ZONES}
    if unknown:
        raise ValueError(f"unknown zone(s) {unknown}; expected one of {CHEST_XRAY_ZONES}.")
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise ValueError(f"count={count!r}; expected a whole number of infected areas, at least 1.")
    laterality = "bilateral" if len(sides_zones) == 2 else "unilateral"
    areas = f"{number_word(count)} infected area{'' if count == 1 else 's'}"
    places = " and ".join(f"{sides_zones[side]} {side} lung" for side in SIDES if side in sides_zones)
    return f"{laterality} pulmonary infection, {areas}, {places}."


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
    return qata_report({side: _side_zones(rows[side], height) for side in SIDES if rows[side]}, len(components))


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
    check_convention(convention, "convention")
    binary = as_binary_mask(mask)
    height, width = binary.shape
    components = connected_components(binary, min_area=min_area)
    if modality == "generic":
        return _generic_report(components, height, width, target)
    return convert_laterality(_chest_xray_report(components, height, width), TRAINING_CONVENTION, convention)


__all__ = [
    "Component",
    "as_binary_mask",
    "connected_components",
    "default_min_area",
    "describe_mask",
    "number_word",
    "qata_report",
]
