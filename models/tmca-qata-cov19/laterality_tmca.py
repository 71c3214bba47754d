"""Left and right in a report, between the two conventions a report can be written in.

It ships with every saved model (the processor converts a report to the model's convention), so it imports only
the standard library.

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
"""

import re


CONVENTIONS = ("image", "patient")
TRAINING_CONVENTION = "image"  # QaTa-COV19 / LViT reports: "left" is the image's left

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


def check_convention(convention: str, name: str) -> str:
    if convention not in CONVENTIONS:
        raise ValueError(f"{name}={convention!r}; expected one of {CONVENTIONS}.")
    return convention


def convert_laterality(report: str, source: str, target: str = TRAINING_CONVENTION) -> str:
    """A report written in the `source` convention ("image" or "patient") rewritten in the `target` one."""
    check_convention(source, "source")
    check_convention(target, "target")
    return report if source == target else swap_laterality(report)


__all__ = ["CONVENTIONS", "TRAINING_CONVENTION", "check_convention", "convert_laterality", "swap_laterality"]
