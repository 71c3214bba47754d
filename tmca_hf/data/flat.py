"""The flat layout: `images/<id>.png`, `masks/<id>.png`, `reports/<id>.txt` and `split.json`.
"""

import json
from pathlib import Path

from .checks import (
    image_files,
    normalize_split_name,
    pair_files,
    report_text,
)


def read_flat(root: Path) -> dict:
    """Flat layout (images/, masks/, reports/, split.json) -> {split: [Example]}."""
    split_file = root / "split.json"
    if not split_file.is_file():
        raise ValueError(f"{root} has images/, masks/ and reports/ but no split.json ({{split: [ids]}}).")
    try:
        split_ids = json.loads(split_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"Cannot read {split_file}: {error}") from None
    if not isinstance(split_ids, dict) or not all(isinstance(ids, list) for ids in split_ids.values()):
        raise ValueError(f"{split_file} must hold {{split name: [ids]}}, got {type(split_ids).__name__}.")
    images, masks = image_files(root / "images"), image_files(root / "masks")
    seen, examples = {}, {}
    for raw_split, ids in split_ids.items():
        split = normalize_split_name(raw_split)
        split_examples = []
        for key in map(str, ids):
            text, problem = _read_report(root / "reports" / f"{key}.txt")
            example = pair_files(split, root, key, images, masks, root / "masks", text, problem)
            if key in seen:
                example.problems.append(f"also listed in split {seen[key]!r} of split.json")
            seen.setdefault(key, split)
            split_examples.append(example)
        examples[split] = split_examples
    return examples


def _read_report(path: Path):
    """A report file -> (stripped text or None, problem or None)."""
    try:
        text = report_text(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, f"no report {path.parent.name}/{path.name}"
    except (OSError, UnicodeDecodeError) as error:
        return None, f"unreadable report ({error})"
    return text, None if text is not None else "empty report"
