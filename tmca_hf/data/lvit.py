"""The LViT / GuideDecoder layout: `<Split>_Folder/img`, `<Split>_Folder/labelcol` and a text table per split
(`<Split>_text.xlsx` or .csv); the GuideDecoder variant `<Split>/Images`, `<Split>/GTs`, `prompt/<split>.csv`.
"""

import re
from pathlib import Path

from .checks import (
    Example,
    child,
    example_key,
    image_files,
    normalize_split_name,
    pair_files,
    report_text,
)


SPLIT_FOLDER = r"(train|val|valid|validation|dev|test)(_folder)?"  # LViT/GuideDecoder split folder names




def lvit_split_folders(root: Path) -> dict:
    """split -> (split folder, image folder, mask folder): LViT `Train_Folder/img`, GuideDecoder `Train/Images`."""
    found = {}
    for folder in sorted(root.iterdir()):
        if not folder.is_dir() or not re.fullmatch(SPLIT_FOLDER, folder.name.lower()):
            continue
        image_dir, mask_dir = child(folder, "img", "images"), child(folder, "labelcol", "gts", "masks")
        if image_dir is not None and mask_dir is not None:
            found[normalize_split_name(folder.name)] = (folder, image_dir, mask_dir)
    return found


def _read_text_table(path: Path) -> dict:
    """An LViT/GuideDecoder text table (xlsx or csv) with columns Image, Description -> {id: [descriptions]}."""
    import pandas as pd

    try:
        table = pd.read_excel(path, dtype=str) if path.suffix.lower() == ".xlsx" else pd.read_csv(path, dtype=str)
    except Exception as error:  # pandas/openpyxl raise many types for malformed files
        raise ValueError(f"Cannot read the text table {path}: {error}") from None
    columns = {str(column).strip().lower(): column for column in table.columns}
    if "image" not in columns or "description" not in columns:
        raise ValueError(
            f"The text table {path} has columns {list(table.columns)}; expected 'Image' (file name) and "
            f"'Description' (report)."
        )
    texts = {}
    for name, text in zip(table[columns["image"]], table[columns["description"]]):
        if isinstance(name, str) and name.strip():
            texts.setdefault(example_key(name.strip()), []).append(text)
    return texts


def _lvit_text_tables(root: Path, split: str, folder: Path) -> list:
    """The tables holding a split's reports: in the split folder, GuideDecoder's prompt/<split>.csv, or the root."""
    own = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in (".xlsx", ".csv"))
    if own:
        return own
    prompt_dir = child(root, "prompt", "prompts")
    if prompt_dir is not None:
        raw = folder.name.lower().removesuffix("_folder")
        guide = [p for p in prompt_dir.iterdir() if p.suffix.lower() == ".csv" and p.stem.lower() in (raw, split)]
        if guide:
            return guide
    shared = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in (".xlsx", ".csv"))
    if shared:
        return shared
    raise ValueError(
        f"No text table for {folder}: expected {folder.name}/{folder.name.split('_')[0]}_text.xlsx (LViT), "
        f"prompt/{split}.csv (GuideDecoder) or a table with columns Image, Description in {root}."
    )


def read_lvit(root: Path) -> dict:
    """LViT / GuideDecoder layout -> {split: [Example]}."""
    examples = {}
    for split, (folder, image_dir, mask_dir) in lvit_split_folders(root).items():
        texts = {}
        for table in _lvit_text_tables(root, split, folder):
            for key, values in _read_text_table(table).items():
                texts.setdefault(key, []).extend(values)
        images, masks = image_files(image_dir), image_files(mask_dir)
        split_examples = []
        for key in sorted(images):
            values = texts.get(key, [])
            reports = {text for text in map(report_text, values) if text is not None}
            text = next(iter(reports)) if len(reports) == 1 else None
            problem = (
                None if text is not None
                else f"{len(reports)} different reports in the text table" if reports
                else "empty report" if values
                else "no report in the text table"
            )
            split_examples.append(pair_files(split, root, key, images, masks, mask_dir, text, problem))
        for key in sorted(set(masks) - set(images)):
            where = str(masks[key][0].relative_to(root))
            split_examples.append(Example(split, key, where=where, problems=["mask without an image"]))
        examples[split] = split_examples
    return examples
