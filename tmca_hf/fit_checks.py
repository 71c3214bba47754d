"""Does the report fit the image, and is the image one the model knows? The model's two checks in words.

`outputs.consistency` (the report-matching head, calibrated: below `CONSISTENCY_WARNING` the report may not fit) and
`outputs.ood_score` (above `config.ood_threshold` the image is not like the training images) are numbers; this module
says what they mean where users look (the Space's notes, tmca-predict's closing lines), with what was measured
for them when the model folder keeps it: `consistency_auroc.json` (written by `benchmarks/consistency_auroc.py`) and
`ood_auroc.json` (written by `benchmarks/ood_auroc.py`). A toolkit module: it does not travel with a model.
"""

import json
from pathlib import Path
from typing import Optional

import numpy as np

from .describer import describe_mask
from .report_folders import parse_qata_report


CONSISTENCY_AUROC_FILE = "consistency_auroc.json"  # the JSON line benchmarks/consistency_auroc.py prints
OOD_AUROC_FILE = "ood_auroc.json"  # the JSON line benchmarks/ood_auroc.py prints
CONSISTENCY_WARNING = 0.5  # below this calibrated consistency, the report may not fit the image


def write_record(folder, name: str, record: dict) -> Path:
    """Keep a benchmark's JSON line beside the model it measured (the folder's `name` file)."""
    path = Path(folder) / name
    path.write_text(json.dumps(record) + "\n", encoding="utf-8")
    return path


def report_may_not_fit(consistency: Optional[float]) -> bool:
    """The rule behind the report check: a consistency below `CONSISTENCY_WARNING` (read at call time)."""
    return consistency is not None and consistency < CONSISTENCY_WARNING


def _sides(report: str) -> tuple:
    parsed = parse_qata_report(report)
    return () if parsed is None else parsed.sides


def lesion_sides(mask: np.ndarray, convention: str) -> tuple:
    """The lung sides ("left", "right", named in `convention`) a chest X-ray mask has lesion on, by the describer's
    rule (`tmca_hf.describer`)."""
    return _sides(describe_mask(mask, convention=convention))


def ood_aurocs(record: dict) -> dict:
    """{kind of other image: AUROC} from the line benchmarks/ood_auroc.py prints (ood_auroc.json)."""
    return {kind: entry["auroc"] for kind, entry in record.items() if isinstance(entry, dict) and "auroc" in entry}


def _lungs(sides: tuple) -> str:
    return "both lungs" if len(sides) == 2 else f"the {sides[0]} lung"


def report_fit_note(report: Optional[str], consistency: Optional[float], text_free_mask: Optional[np.ndarray],
                    convention: str, record: Optional[dict] = None) -> Optional[str]:
    """
    A note when the report may not fit the image (`consistency` below `CONSISTENCY_WARNING`), else None. Where the
    report names sides (QaTa-COV19 wording, in `convention`) and the model's prediction *without* the report
    (`text_free_mask`) lies elsewhere, the note says both; `record` (consistency_auroc.json) adds how well the score
    was measured to tell reports apart.
    """
    if report is None or not report_may_not_fit(consistency):
        return None
    named = _sides(report)
    found = () if text_free_mask is None else lesion_sides(text_free_mask, convention)
    if named and found and set(named) != set(found):
        why = f": it names {_lungs(named)}, the lesion found without it is in {_lungs(found)}"
    else:
        why = ": check its findings and the side convention it is written in"
    note = f"The report may not fit this image (report-matching score {consistency:.2f}, below {CONSISTENCY_WARNING}){why}."
    if record:
        note += (f" This score tells an image's own report from another image's with AUROC {record['auroc_a']:.2f} and "
                 f"from its own report with left and right swapped with AUROC {record['auroc_b']:.2f} "
                 f"({int(record['num_images']):,} {record.get('split', 'validation')} images).")
    return note


def image_fit_note(ood_score: Optional[float], threshold: Optional[float], kind: str = "images",
                   record: Optional[dict] = None) -> Optional[str]:
    """
    A note when the image is not like the training images (`ood_score` above `threshold`), else None. `kind` names
    the training images ("chest X-rays"); `record` (ood_auroc.json) adds how well the score was measured to set
    other images apart.
    """
    if ood_score is None or threshold is None or ood_score <= threshold:
        return None
    note = (f"This image does not look like the {kind} this model was trained on (image score {ood_score:.1f}, above "
            f"{threshold:.1f}): its mask may mean nothing.")
    if record:
        others = ood_aurocs(record)
        inside = record.get("in_distribution", {})
        note += (" The score sets other images apart from the validation images with AUROC "
                 + ", ".join(f"{auroc:.3f} ({name.replace('_', ' ')})" for name, auroc in others.items())
                 + (f"; it flags {100 * inside['flagged_share']:.1f} % of the validation images"
                    if "flagged_share" in inside else "") + ".")
    return note


__all__ = [
    "CONSISTENCY_AUROC_FILE", "CONSISTENCY_WARNING", "OOD_AUROC_FILE", "image_fit_note", "lesion_sides", "ood_aurocs", "report_fit_note",
    "report_may_not_fit", "write_record",
]
