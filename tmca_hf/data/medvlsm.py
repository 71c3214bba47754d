"""The medvlsm layout: `images/`, `masks/` and `anns/<split>.json` records whose prompts p0..p9 hold the reports.
"""

import json
from pathlib import Path

from .checks import (
    Example,
    example_key,
    image_files,
    normalize_split_name,
    report_text,
)


def _prompt(prompts, prompt_key: str):
    """A medvlsm prompt: p0..p6 are strings; p7..p9 are lists of sentences, of which the first is used."""
    value = prompts.get(prompt_key) if isinstance(prompts, dict) else None
    if isinstance(value, list):
        value = value[0] if value else None
    return value if isinstance(value, str) else None


def read_medvlsm(root: Path, prompt_key: str) -> dict:
    """medvlsm layout (images/, masks/, anns/<split>.json) -> {split: [Example]}."""
    images, masks = image_files(root / "images"), image_files(root / "masks")
    image_names = {path.name: path for paths in images.values() for path in paths}
    mask_names = {path.name: path for paths in masks.values() for path in paths}
    examples = {}
    for ann_file in sorted((root / "anns").glob("*.json")):
        split = normalize_split_name(ann_file.stem)
        try:
            records = json.loads(ann_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"Cannot read {ann_file}: {error}") from None
        if not isinstance(records, list):
            raise ValueError(f"{ann_file} must hold a list of records (img_name, mask_name, prompts).")
        keys = sorted({key for record in records if isinstance(record, dict) for key in record.get("prompts") or {}})
        if records and prompt_key not in keys:
            raise ValueError(f"prompt_key={prompt_key!r} is not in the prompts of {ann_file}; found {keys}.")
        split_examples = []
        for index, record in enumerate(records):
            record = record if isinstance(record, dict) else {}
            image_name, mask_name = str(record.get("img_name", "")), str(record.get("mask_name", ""))
            key = example_key(mask_name or image_name) or f"record {index}"  # masks are unique, images may repeat
            example = Example(split, key, where=f"images/{image_name}")
            example.image, example.mask = image_names.get(image_name), mask_names.get(mask_name)
            example.text = report_text(_prompt(record.get("prompts"), prompt_key))
            if example.image is None:
                example.problems.append(f"no image file (anns/{ann_file.name} record {index})")
            if example.mask is None:
                example.problems.append(f"no mask masks/{mask_name}")
            if example.text is None:
                example.problems.append(f"empty prompt {prompt_key}")
            split_examples.append(example)
        examples[split] = split_examples
    return examples
