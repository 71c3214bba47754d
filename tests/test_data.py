"""Tests for tmca_hf.data: layout readers, checks, saved/parquet/Hub inputs, CLI, samples, real data. Saving and
pushing: test_dataset_publishing.py; the collator and RandomZoom: test_training_data.py."""

import json
import warnings
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from tmca_hf import data
from tmca_hf.data import DatasetValidationError, detect_layout, load_tmca_dataset, normalize_split_name


REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLES = REPO_ROOT / "samples"
SIZE = 16

datasets.disable_progress_bars()


# ------------------------------------------------------------------------------------------------ fixtures


def lesion(index: int, size: int = SIZE) -> np.ndarray:
    """A 0/255 mask with a square lesion whose place depends on `index`."""
    mask = np.zeros((size, size), np.uint8)
    corner = index % (size // 2)
    mask[corner : corner + size // 3, corner : corner + size // 3] = 255
    return mask


def gray_image(index: int, size: int = SIZE) -> np.ndarray:
    return ((np.arange(size * size).reshape(size, size) * (index + 3)) % 251).astype(np.uint8)


def save_image(path: Path, array: np.ndarray, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)


def make_flat(root: Path, ids=None) -> Path:
    """images/, masks/, reports/, split.json with train (3) and val (2) examples."""
    ids = ids or {"train": ["a0", "a1", "a2"], "val": ["b0", "b1"]}
    for index, id_ in enumerate(sum(ids.values(), [])):
        save_image(root / "images" / f"{id_}.png", gray_image(index))
        save_image(root / "masks" / f"{id_}.png", lesion(index))
        (root / "reports").mkdir(exist_ok=True)
        (root / "reports" / f"{id_}.txt").write_text(f"report {id_}, lower left lung.\n")
    (root / "split.json").write_text(json.dumps(ids))
    return root


def write_xlsx(path: Path, rows) -> None:
    import openpyxl

    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["Image", "Description"])
    for row in rows:
        sheet.append(list(row))
    book.save(path)


def make_lvit(root: Path) -> Path:
    """LViT: Train_Folder/{img,labelcol,Train_text.xlsx}, Val_Folder/..., QaTa-style `mask_` prefixes."""
    for folder, names in (("Train_Folder", ["covid_1", "covid_2"]), ("Val_Folder", ["covid_3"])):
        for index, name in enumerate(names):
            save_image(root / folder / "img" / f"{name}.png", gray_image(index))
            save_image(root / folder / "labelcol" / f"mask_{name}.png", lesion(index))
        split = folder.split("_")[0]
        write_xlsx(root / folder / f"{split}_text.xlsx", [(f"mask_{name}.png", f"text of {name}") for name in names])
    return root


def make_guidedecoder(root: Path) -> Path:
    """GuideDecoder: Train/{Images,GTs}, prompt/train.csv with columns Image, Description."""
    (root / "prompt").mkdir(parents=True)
    lines = ["Image,Description"]
    for index, name in enumerate(["covid_7", "covid_8"]):
        save_image(root / "Train" / "Images" / f"{name}.png", gray_image(index))
        save_image(root / "Train" / "GTs" / f"mask_{name}.png", lesion(index))
        lines.append(f'mask_{name}.png,"csv text {name}, right lung."')
    (root / "prompt" / "train.csv").write_text("\n".join(lines) + "\n")
    return root


def make_medvlsm(root: Path) -> Path:
    """medvlsm: RGB JPEG images, JPEG masks (compression noise), anns/train.json and anns/val.json."""
    for split, names in (("train", ["k0", "k1"]), ("val", ["k2"])):
        records = []
        for index, name in enumerate(names):
            save_image(root / "images" / f"{name}.jpg", np.stack([gray_image(index, 32)] * 3, -1), quality=90)
            save_image(root / "masks" / f"{name}.jpg", lesion(index, 32), quality=75)
            prompts = {"p0": "", **{f"p{k}": f"p{k} of {name}" for k in range(1, 7)}}
            prompts.update({f"p{k}": [f"first p{k} of {name}", f"second p{k} of {name}"] for k in (7, 8, 9)})
            records.append({"img_name": f"{name}.jpg", "mask_name": f"{name}.jpg", "prompts": prompts})
        (root / "anns").mkdir(exist_ok=True)
        (root / "anns" / f"{split}.json").write_text(json.dumps(records))
    return root


def values(image: Image.Image) -> set:
    return set(np.unique(np.asarray(image)).tolist())


# ------------------------------------------------------------------------------------------------ readers


def test_split_names_follow_the_datasets_convention():
    names = ("Train_Folder", "Val", "valid", "VALIDATION", "Dev", "Test_Folder", "testA")
    expected = ["train", "validation", "validation", "validation", "validation", "test", "testa"]
    assert [normalize_split_name(name) for name in names] == expected


def test_flat_reader(tmp_path):
    root = make_flat(tmp_path / "flat")
    dd = load_tmca_dataset(root)
    assert list(dd) == ["train", "validation"] and dd["train"].features == data.FEATURES
    assert dd["train"]["id"] == ["a0", "a1", "a2"] and dd["validation"]["id"] == ["b0", "b1"]
    row = dd["train"][1]
    assert row["text"] == "report a1, lower left lung."
    assert row["mask"].mode == "L" and values(row["mask"]) == {0, 255}
    assert np.array_equal(np.asarray(row["mask"]), lesion(1))
    assert np.array_equal(np.asarray(row["image"]), gray_image(1))
    raw = dd["train"].cast_column("image", datasets.Image(decode=False))[0]["image"]["bytes"]
    assert raw == (root / "images" / "a0.png").read_bytes()  # images are stored as they are, not re-encoded
    assert dd.invalid_examples == []
    assert list(load_tmca_dataset(root, splits=["val"])) == ["validation"]
    with pytest.raises(ValueError, match=r"\['test'\] not found .* has \['train', 'validation'\]"):
        load_tmca_dataset(root, splits=["test"])


def test_lvit_xlsx_reader_pairs_mask_prefixes(tmp_path):
    dd = load_tmca_dataset(make_lvit(tmp_path / "lvit"))
    assert {split: ds["id"] for split, ds in dd.items()} == {
        "train": ["covid_1", "covid_2"],
        "validation": ["covid_3"],
    }
    assert dd["train"]["text"] == ["text of covid_1", "text of covid_2"]
    assert np.array_equal(np.asarray(dd["validation"][0]["mask"]), lesion(0))


def test_guidedecoder_csv_reader(tmp_path):
    dd = load_tmca_dataset(make_guidedecoder(tmp_path / "gd"))
    assert list(dd) == ["train"]
    assert dd["train"]["text"] == ["csv text covid_7, right lung.", "csv text covid_8, right lung."]


def test_medvlsm_reader_thresholds_jpeg_masks_and_picks_prompts(tmp_path):
    root = make_medvlsm(tmp_path / "medvlsm")
    jpeg_mask = np.asarray(Image.open(root / "masks" / "k0.jpg"))
    assert len(np.unique(jpeg_mask)) > 2  # the fixture really has compression noise
    dd = load_tmca_dataset(root)
    assert {split: len(ds) for split, ds in dd.items()} == {"train": 2, "validation": 1}
    assert dd["train"]["text"] == ["p6 of k0", "p6 of k1"]
    mask = dd["train"][0]["mask"]
    assert mask.mode == "L" and values(mask) == {0, 255}
    assert (np.asarray(mask) == lesion(0, 32)).mean() > 0.98
    assert load_tmca_dataset(root, prompt_key="p8")["train"]["text"][0] == "first p8 of k0"
    with pytest.raises(ValueError, match="prompt_key='p12' is not in the prompts"):
        load_tmca_dataset(root, prompt_key="p12")
    with pytest.raises(DatasetValidationError, match="empty prompt p0"):
        load_tmca_dataset(root, prompt_key="p0")


def test_auto_detection_and_its_errors(tmp_path):
    assert detect_layout(make_flat(tmp_path / "flat")) == "flat"
    assert detect_layout(make_lvit(tmp_path / "lvit")) == "lvit"
    assert detect_layout(make_guidedecoder(tmp_path / "gd")) == "lvit"
    assert detect_layout(make_medvlsm(tmp_path / "medvlsm")) == "medvlsm"
    (tmp_path / "other" / "pictures").mkdir(parents=True)
    with pytest.raises(ValueError, match="matches no known dataset layout") as error:
        load_tmca_dataset(tmp_path / "other")
    for expected in ("lvit:", "labelcol", "flat:", "split.json", "medvlsm:", "anns/<split>.json", "parquet:", "hub:"):
        assert expected in str(error.value)
    both = make_medvlsm(make_flat(tmp_path / "both"))
    with pytest.raises(ValueError, match="several layouts .*flat, medvlsm"):
        detect_layout(both)
    (tmp_path / "flat" / "split.json").unlink()
    with pytest.raises(ValueError, match="no split.json"):
        load_tmca_dataset(tmp_path / "flat")
    with pytest.raises(FileNotFoundError, match="neither an existing folder nor a Hub dataset id"):
        load_tmca_dataset(tmp_path / "missing" / "folder")
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['prompt_keys'\\]"):
        load_tmca_dataset(tmp_path / "lvit", prompt_keys="p6")
    with pytest.raises(ValueError, match="text_column applies to saved"):
        load_tmca_dataset(tmp_path / "lvit", text_column="Description")


# ------------------------------------------------------------------------------------------------ checks


def broken_flat(root: Path) -> Path:
    """A flat dataset with one valid example per split and every kind of bad example in train."""
    ids = ["ok", "no_mask", "no_report", "small_mask", "soft_mask", "corrupt", "empty_report", "class_map"]
    make_flat(root, {"train": ids, "val": ["fine"]})
    (root / "masks" / "no_mask.png").unlink()
    (root / "reports" / "no_report.txt").unlink()
    save_image(root / "masks" / "small_mask.png", lesion(0, SIZE // 2))
    save_image(root / "masks" / "soft_mask.png", gray_image(0))  # a gray picture given as a mask
    png = (root / "images" / "corrupt.png").read_bytes()
    (root / "images" / "corrupt.png").write_bytes(png[: len(png) // 2])
    (root / "reports" / "empty_report.txt").write_text("  \n")
    save_image(root / "masks" / "class_map.png", lesion(0) // 127)  # values 0 and 2: a class-index map
    return root


EXPECTED_PROBLEMS = {
    "no_mask": "no mask in masks/",
    "no_report": "no report reports/no_report.txt",
    "small_mask": "mask is 8x8 but the image is 16x16",
    "soft_mask": "mask is not binary",
    "corrupt": "unreadable image",
    "empty_report": "empty report",
    "class_map": "none above mask_threshold=127",
}


def test_invalid_examples_raise_one_error_listing_each(tmp_path):
    root = broken_flat(tmp_path / "broken")
    with pytest.raises(DatasetValidationError) as error:
        load_tmca_dataset(root)
    assert isinstance(error.value, ValueError)
    problems = {Path(problem.path).stem: problem.reason for problem in error.value.problems}
    assert set(problems) == set(EXPECTED_PROBLEMS)
    for id_, reason in EXPECTED_PROBLEMS.items():
        assert reason in problems[id_]
    for problem in error.value.problems:  # the message lists every file and why
        assert f"[train] images/{Path(problem.path).name}: {problem.reason}" in str(error.value)
    assert str(error.value).startswith("7 invalid example(s)") and "skip_invalid=True" in str(error.value)


def test_skip_invalid_skips_counts_and_warns(tmp_path):
    root = broken_flat(tmp_path / "broken")
    with pytest.warns(UserWarning, match="Skipped 7 invalid example"):
        dd = load_tmca_dataset(root, skip_invalid=True)
    assert dd["train"]["id"] == ["ok"] and dd["validation"]["id"] == ["fine"]
    assert len(dd.invalid_examples) == 7 and all(problem.split == "train" for problem in dd.invalid_examples)


def test_lvit_problems_are_listed_too(tmp_path):
    root = make_lvit(tmp_path / "lvit")
    train = root / "Train_Folder"
    write_xlsx(train / "Train_text.xlsx", [("mask_covid_1.png", "one"), ("mask_covid_1.png", "another")])
    save_image(train / "labelcol" / "mask_covid_9.png", lesion(0))  # a mask without its image
    (root / "Val_Folder" / "labelcol" / "mask_covid_3.png").write_bytes(b"not a png")
    with pytest.raises(DatasetValidationError) as error:
        load_tmca_dataset(root)
    problems = sorted(str(problem) for problem in error.value.problems)
    assert problems[:3] == [
        "[train] Train_Folder/img/covid_1.png: 2 different reports in the text table",
        "[train] Train_Folder/img/covid_2.png: no report in the text table",
        "[train] Train_Folder/labelcol/mask_covid_9.png: mask without an image",
    ]
    assert problems[3].startswith("[validation] Val_Folder/img/covid_3.png: unreadable mask") and len(problems) == 4


def test_flat_id_in_two_splits_is_a_leak(tmp_path):
    root = make_flat(tmp_path / "flat")
    (root / "split.json").write_text(json.dumps({"train": ["a0", "a1"], "val": ["a1"]}))
    with pytest.raises(DatasetValidationError, match=r"\[validation\] images/a1.png: also listed in split 'train'"):
        load_tmca_dataset(root)


def palette_mask(indices: np.ndarray) -> Image.Image:
    image = Image.fromarray(indices.astype(np.uint8), mode="P")
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)  # index 1 is drawn red
    return image


@pytest.mark.parametrize(
    "mask, kept",
    [
        pytest.param(Image.fromarray(lesion(0) // 255), True, id="0/1 label mask"),
        pytest.param(Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)), True, id="empty mask"),
        pytest.param(Image.fromarray(np.where(lesion(0) > 0, 230, 0).astype(np.uint8)), True, id="0/230"),
        pytest.param(Image.fromarray(lesion(0).astype(np.uint16) * 257), True, id="16-bit 0/65535"),
        pytest.param(palette_mask(lesion(0) // 255), True, id="palette indices 0/1"),
        pytest.param(Image.fromarray(np.where(lesion(0) > 0, 200, 0).astype(np.uint8)), False, id="0/200 mid-gray"),
        pytest.param(Image.fromarray(np.stack([lesion(0), 0 * lesion(0), 0 * lesion(0)], -1)), False, id="red lesion"),
    ],
)
def test_binary_mask_rule(tmp_path, mask, kept):
    root = make_flat(tmp_path / "flat", {"train": ["x"]})
    mask.save(root / "masks" / "x.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dd = load_tmca_dataset(root, skip_invalid=True)
    assert len(dd["train"]) == int(kept)
    if kept:
        expected = lesion(0) if np.asarray(mask).max() > 0 else np.zeros((SIZE, SIZE), np.uint8)
        assert dd["train"][0]["mask"].mode == "L"
        assert np.array_equal(np.asarray(dd["train"][0]["mask"]), expected)
    else:
        assert "mask is not binary" in dd.invalid_examples[0].reason


# ------------------------------------------------------------------------------------------------ saved datasets


def test_saved_dataset_with_other_column_names(tmp_path):
    dd = load_tmca_dataset(make_flat(tmp_path / "flat"))
    renamed = dd.rename_column("text", "report").remove_columns("id")
    renamed.save_to_disk(str(tmp_path / "renamed"))
    loaded = load_tmca_dataset(tmp_path / "renamed", text_column="report")
    assert loaded["train"]["text"] == dd["train"]["text"]
    assert loaded["train"]["id"] == ["train-000000", "train-000001", "train-000002"]
    with pytest.raises(ValueError, match=r"columns \['image', 'mask', 'report'\]; missing \['text'\]"):
        load_tmca_dataset(tmp_path / "renamed")
    dd.remove_columns("mask").save_to_disk(str(tmp_path / "no_mask"))
    with pytest.raises(ValueError, match=r"missing \['mask'\]"):
        load_tmca_dataset(tmp_path / "no_mask")


def test_saved_dataset_masks_are_checked_and_normalised(tmp_path):
    ids = [f"m{i}" for i in range(3)]
    masks = [Image.fromarray(lesion(i) // 255) for i in range(3)]  # 0/1 masks, as many Hub datasets have
    masks[2] = Image.fromarray(gray_image(2))
    table = {
        "image": [Image.fromarray(gray_image(i)) for i in range(3)],
        "mask": masks,
        "caption": ["one", "two", "three"],
        "id": ids,
    }
    features = datasets.Features({**data.FEATURES, "caption": datasets.Value("string")})
    del features["text"]
    hub_like = datasets.DatasetDict({"validation": datasets.Dataset.from_dict(table, features=features)})
    hub_like.save_to_disk(str(tmp_path / "hub_like"))
    with pytest.raises(DatasetValidationError, match=r"row 2 \(id m2\): mask is not binary"):
        load_tmca_dataset(tmp_path / "hub_like", text_column="caption")
    with pytest.warns(UserWarning):
        loaded = load_tmca_dataset(tmp_path / "hub_like", text_column="caption", skip_invalid=True)
    assert loaded["validation"]["id"] == ["m0", "m1"] and values(loaded["validation"][1]["mask"]) == {0, 255}


# ------------------------------------------------------------------------------------------------ command line


def test_cli_convert(tmp_path, capsys):
    root = make_flat(tmp_path / "flat")
    assert data.main(["convert", str(root), str(tmp_path / "out"), "--format", "parquet"]) == 0
    printed = capsys.readouterr().out
    assert "train: 3 examples" in printed and "validation: 2 examples" in printed
    assert data.main(["convert", str(root), str(tmp_path / "out")]) == 1
    assert "pass overwrite=True (--overwrite)" in capsys.readouterr().err
    assert data.main(["convert", str(root), str(tmp_path / "out"), "--overwrite", "--splits", "train"]) == 0
    assert list(load_tmca_dataset(tmp_path / "out")) == ["train"]
    broken = broken_flat(tmp_path / "broken")
    assert data.main(["convert", str(broken), str(tmp_path / "out2")]) == 1
    assert "7 invalid example(s)" in capsys.readouterr().err
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert data.main(["convert", str(broken), str(tmp_path / "out2"), "--skip_invalid"]) == 0
    printed = capsys.readouterr().out
    assert "skipped 7 invalid example(s) (--skip_invalid):" in printed
    assert "[train] images/soft_mask.png: mask is not binary" in printed


def test_cli_push(tmp_path, monkeypatch, capsys):
    pushed = {}
    def fake_push(dataset_dict, repo_id, private):
        pushed.update(repo=repo_id, private=private, n=len(dataset_dict["train"]))

    monkeypatch.setattr(data.cli, "push_tmca_dataset", fake_push)
    assert data.main(["push", str(make_flat(tmp_path / "flat")), "someone/flat", "--private"]) == 0
    assert pushed == {"repo": "someone/flat", "private": True, "n": 3}


# ------------------------------------------------------------------------------------------------ samples, real data


def test_samples_load_with_expected_counts():
    qata = load_tmca_dataset(SAMPLES / "qata_cov19")
    assert {split: len(ds) for split, ds in qata.items()} == {"train": 40, "validation": 16}
    assert len(set(qata["train"]["text"])) >= 30  # a variety of reports
    kvasir = load_tmca_dataset(SAMPLES / "kvasir_seg")
    assert {split: len(ds) for split, ds in kvasir.items()} == {"train": 6, "validation": 4}
    for name in ("qata_cov19", "kvasir_seg"):
        assert "Research use only" in (SAMPLES / name / "README.md").read_text()
    total = sum(path.stat().st_size for path in SAMPLES.rglob("*") if path.is_file())
    assert total < 3 * 2**20


def test_real_data_is_required_under_ci(tmp_path, monkeypatch):
    """Issue 8 item 16: without ../shared/data the real-data tests skip with a reason, but fail under CI=true."""
    from conftest import require_shared_data

    missing = tmp_path / "shared" / "data"
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="real data not found at .*shared/data"):
        require_shared_data(missing)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true, so the real-data tests must run"):
        require_shared_data(missing)
    assert require_shared_data(tmp_path) == tmp_path  # present: used, CI or not


def link_subset(source: Path, target: Path, names_by_folder: dict) -> Path:
    """A folder of symlinks to a few real files, so the tests read a handful of ids, not thousands."""
    for folder, names in names_by_folder.items():
        (target / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            (target / folder / name).symlink_to(source / folder / name)
    return target


def test_real_qata_is_flat(shared_data, tmp_path):
    source = shared_data / "qata_cov19"
    assert detect_layout(source) == "flat"
    split_ids = json.loads((source / "split.json").read_text())
    chosen = {"train": sorted(split_ids["train"])[:3], "val": sorted(split_ids["val"])[:2]}
    ids = sum(chosen.values(), [])
    root = link_subset(source, tmp_path / "qata", {
        "images": [f"{i}.png" for i in ids], "masks": [f"{i}.png" for i in ids], "reports": [f"{i}.txt" for i in ids],
    })
    (root / "split.json").write_text(json.dumps(chosen))
    dd = load_tmca_dataset(root)
    assert dd["train"]["id"] == chosen["train"] and dd["validation"]["id"] == chosen["val"]
    row = dd["train"][0]
    assert row["image"].size == (224, 224) and values(row["mask"]) == {0, 255} and "lung" in row["text"]


def test_real_kvasir_is_medvlsm(shared_data, tmp_path):
    source = shared_data / "kvasir_seg"
    assert detect_layout(source) == "medvlsm"
    records = json.loads((source / "anns" / "val.json").read_text())[:3]
    root = link_subset(source, tmp_path / "kvasir", {
        "images": [r["img_name"] for r in records], "masks": [r["mask_name"] for r in records],
    })
    (root / "anns").mkdir()
    (root / "anns" / "val.json").write_text(json.dumps(records))
    dd = load_tmca_dataset(root)
    assert dd["validation"]["text"] == [r["prompts"]["p6"] for r in records]
    assert all(values(row["mask"]) == {0, 255} and row["image"].mode == "RGB" for row in dd["validation"])
