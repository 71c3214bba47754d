"""Rebuild the small real samples in this folder from the full data (../shared/data beside the checkout).

    python samples/build_samples.py [DATA_DIR]

Selection is deterministic: each split's ids in sorted order are shuffled with a fixed seed, and ids are taken in
that order, skipping one whose report is already taken until every distinct report has been used once, so the
sample covers as many different reports as possible.
"""

import json
import shutil
import sys
from pathlib import Path

import numpy as np


SEED = 0
SAMPLES = Path(__file__).resolve().parent
QATA_COUNTS = {"train": 40, "val": 16}
KVASIR_COUNTS = {"train": 6, "val": 4}


def pick(ids: list, report_of, count: int) -> list:
    """`count` ids from `ids`, seeded shuffle of the sorted ids, preferring reports not taken yet."""
    order = [ids[index] for index in np.random.default_rng(SEED).permutation(len(ids))]
    chosen, reports = [], set()
    for id_ in order:
        if report_of(id_) not in reports:
            chosen.append(id_)
            reports.add(report_of(id_))
        if len(chosen) == count:
            return sorted(chosen)
    return sorted(chosen + [id_ for id_ in order if id_ not in chosen][: count - len(chosen)])


def build_qata(source: Path, target: Path) -> None:
    split_ids = json.loads((source / "split.json").read_text())
    chosen = {}
    for split, count in QATA_COUNTS.items():
        ids = sorted(split_ids[split])
        chosen[split] = pick(ids, lambda id_: (source / "reports" / f"{id_}.txt").read_text(), count)
    for folder in ("images", "masks", "reports"):
        (target / folder).mkdir(parents=True, exist_ok=True)
    for id_ in sum(chosen.values(), []):
        shutil.copyfile(source / "images" / f"{id_}.png", target / "images" / f"{id_}.png")
        shutil.copyfile(source / "masks" / f"{id_}.png", target / "masks" / f"{id_}.png")
        shutil.copyfile(source / "reports" / f"{id_}.txt", target / "reports" / f"{id_}.txt")
    (target / "split.json").write_text(json.dumps(chosen, indent=1) + "\n")


def build_kvasir(source: Path, target: Path) -> None:
    for folder in ("images", "masks", "anns"):
        (target / folder).mkdir(parents=True, exist_ok=True)
    for split, count in KVASIR_COUNTS.items():
        records = json.loads((source / "anns" / f"{split}.json").read_text())
        records = {record["img_name"]: record for record in records}
        names = pick(sorted(records), lambda name, records=records: records[name]["prompts"]["p6"], count)
        for name in names:
            shutil.copyfile(source / "images" / name, target / "images" / name)
            mask_name = records[name]["mask_name"]
            shutil.copyfile(source / "masks" / mask_name, target / "masks" / mask_name)
        (target / "anns" / f"{split}.json").write_text(json.dumps([records[name] for name in names], indent=1) + "\n")


if __name__ == "__main__":
    data = Path(sys.argv[1]) if len(sys.argv) > 1 else SAMPLES.parents[1] / "shared" / "data"
    build_qata(data / "qata_cov19", SAMPLES / "qata_cov19")
    build_kvasir(data / "kvasir_seg", SAMPLES / "kvasir_seg")
