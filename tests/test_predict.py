"""tmca-predict and the image decoding it shares with the Space (tmca_hf/inference.py): folders of images with a CSV
or JSON of reports, dataset splits, overwrite refusal, unreadable images, and every image format the app accepts."""

import io
import json
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, save_tiny_model, tiny_config, tiny_processor
from PIL import Image

from tmca_hf import TmcaForImageSegmentation
from tmca_hf.image_checks import fit_image_statistics
from tmca_hf.modeling.imaging_tmca import ImageReadError, read_image
from tmca_hf.predict import main


SAMPLES = REPO_ROOT / "samples"


# ------------------------------------------------------------------------------- image files (also used by test_space)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but that holds almost no pixel data (a decompression-bomb stand-in)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def png_bytes() -> bytes:
    """A valid 64x64 gray PNG (noise, so that cutting its end truncates the pixel data)."""
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_dicom(path: Path, pixels=None, photometric="MONOCHROME2", slope=1.0, intercept=0.0) -> Path:
    """A 16-bit DICOM file (with preamble); `pixels=None` writes one without pixel data."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "CT"
    if pixels is not None:
        dataset.Rows, dataset.Columns = pixels.shape
        dataset.SamplesPerPixel = 1
        dataset.PhotometricInterpretation = photometric
        dataset.BitsAllocated = dataset.BitsStored = 16
        dataset.HighBit = 15
        dataset.PixelRepresentation = 0
        dataset.RescaleSlope = str(slope)
        dataset.RescaleIntercept = str(intercept)
        dataset.PixelData = pixels.astype(np.uint16).tobytes()
    dataset.save_as(path, enforce_file_format=True)
    return path


def gradient(height: int, width: int, peak: int = 255) -> np.ndarray:
    return (np.add.outer(np.arange(height), np.arange(width)) * peak // (height + width - 2)).astype(np.int64)


def write_format_zoo(folder: Path) -> dict:
    """One file per format the app must accept, {name: (height, width)}."""
    folder.mkdir(parents=True, exist_ok=True)
    gray = gradient(40, 48).astype(np.uint8)
    rgb = np.stack([gray, gray[::-1], np.full_like(gray, 90)], axis=-1)
    Image.fromarray(gray).save(folder / "gray8.png")
    Image.fromarray(rgb).save(folder / "rgb.jpg")
    Image.fromarray(gradient(36, 52, 60000).astype(np.uint16)).save(folder / "gray16.png")
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg")
    palette = Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    palette.save(folder / "palette.png", transparency=0)
    Image.fromarray(np.dstack([rgb, np.full_like(gray, 128)])).save(folder / "rgba.png")
    Image.fromarray(gray).convert("LA").save(folder / "gray_alpha.png")
    write_dicom(folder / "ct.dcm", gradient(44, 40, 4000), slope=0.5, intercept=-1000)
    sizes = {"gray8.png": (40, 48), "rgb.jpg": (40, 48), "gray16.png": (36, 52), "cmyk.jpg": (40, 48)}
    sizes.update({"palette.png": (40, 48), "rgba.png": (40, 48), "gray_alpha.png": (40, 48), "ct.dcm": (44, 40)})
    return sizes


# ------------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny random model that also segments without a report (text_dropout > 0)."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-tmca"), text_dropout=0.2)


@pytest.fixture(scope="module")
def text_only_model_dir(tmp_path_factory) -> Path:
    """A tiny random model that needs a report for every image."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-tmca-text"))


@pytest.fixture
def image_folder(tmp_path) -> tuple:
    """Three images of three formats and a CSV with their reports (one without extension, one empty)."""
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(gradient(40, 48).astype(np.uint8)).save(images / "case_a.png")
    Image.fromarray(gradient(36, 52, 60000).astype(np.uint16)).save(images / "case_b.png")
    write_dicom(images / "case_c.dcm", gradient(44, 40, 4000), photometric="MONOCHROME1")
    reports = tmp_path / "reports.csv"
    reports.write_text(
        "image,report\ncase_a.png,bilateral pulmonary infection\ncase_b,one infected area in the left lung\ncase_c.dcm,\n"
    )
    return images, reports


def _run(model_dir, images, reports, output, *extra) -> int:
    return main(["--model", str(model_dir), "--images", str(images), "--reports", str(reports),
                 "--output_dir", str(output), "--batch_size", "2", *extra])


# --------------------------------------------------------------------------------------------------------- tests


def test_predict_folder_writes_masks_and_summary(model_dir, image_folder, tmp_path, capsys):
    images, reports = image_folder
    output = tmp_path / "out"
    assert _run(model_dir, images, reports, output) == 0
    summary = json.loads((output / "summary.json").read_text())
    entries = {entry["file"]: entry for entry in summary["images"]}
    assert sorted(entries) == ["case_a.png", "case_b.png", "case_c.dcm"]
    assert sorted(path.name for path in output.iterdir()) == ["case_a.png", "case_b.png", "case_c.png", "summary.json"]
    for name, size in {"case_a.png": (40, 48), "case_b.png": (36, 52), "case_c.dcm": (44, 40)}.items():
        entry = entries[name]
        mask = np.asarray(Image.open(output / entry["mask"]))
        assert mask.shape == size == (entry["height"], entry["width"])
        assert set(np.unique(mask)) <= {0, 255}
        assert entry["lesion_pixels"] == int((mask == 255).sum())
        assert entry["area_fraction"] == pytest.approx(entry["lesion_pixels"] / mask.size, abs=1e-6)
    assert entries["case_b.png"]["report"] == "one infected area in the left lung"
    assert entries["case_c.dcm"]["text_free"] and not entries["case_a.png"]["text_free"]
    assert 0 <= entries["case_a.png"]["consistency"] <= 1 and entries["case_c.dcm"]["consistency"] is None
    assert summary["laterality"] == summary["model_laterality"] == "image"
    totals = summary["totals"]
    assert totals["images"] == 3 and totals["failed"] == 0 and summary["failed"] == []
    assert totals["lesion_pixels"] == sum(entry["lesion_pixels"] for entry in entries.values())
    assert summary["threshold"] == 0.5 and summary["timing"]["total_s"] >= summary["timing"]["model_s"] > 0
    assert "tmca-predict" in capsys.readouterr().err  # the progress bar and the closing line


@pytest.mark.parametrize("layout", ["mapping", "records"])
def test_predict_reads_json_reports(model_dir, image_folder, tmp_path, layout):
    images, _ = image_folder
    reports = {"case_a.png": "left lung", "case_b.png": "right lung", "case_c.dcm": "both lungs"}
    if layout == "records":
        reports = [{"Image": name, "Description": text} for name, text in reports.items()]  # LViT's column names
    path = tmp_path / "reports.json"
    path.write_text(json.dumps(reports))
    assert _run(model_dir, images, path, tmp_path / "out") == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert {entry["file"]: entry["report"] for entry in summary["images"]}["case_b.png"] == "right lung"


def test_predict_refuses_to_overwrite(model_dir, image_folder, tmp_path, capsys):
    images, reports = image_folder
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("not ours")
    assert _run(model_dir, images, reports, output) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert sorted(path.name for path in output.iterdir()) == ["keep.txt"]

    assert _run(model_dir, images, reports, output, "--overwrite") == 0
    # A second run with fewer images removes the masks the first run listed, and nothing else.
    (images / "case_b.png").unlink()
    reports.write_text("image,report\ncase_a.png,left lung\ncase_c.dcm,right lung\n")
    assert _run(model_dir, images, reports, output, "--overwrite") == 0
    assert sorted(path.name for path in output.iterdir()) == ["case_a.png", "case_c.png", "keep.txt", "summary.json"]


def test_predict_lists_unreadable_images(model_dir, image_folder, tmp_path, capsys):
    images, reports = image_folder
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    Image.new("L", (1, 1)).save(images / "tiny.png")
    with open(reports, "a") as file:
        file.write("broken.png,left lung\ntiny.png,left lung\n")
    output = tmp_path / "out"
    assert _run(model_dir, images, reports, output) == 1
    err = capsys.readouterr().err
    assert "2 image(s) could not be read" in err and "broken.png" in err and "tiny.png" in err
    summary = json.loads((output / "summary.json").read_text())
    failed = {entry["file"]: entry["error"] for entry in summary["failed"]}
    assert "not an image file" in failed["broken.png"] and "1x1 pixels" in failed["tiny.png"]
    assert summary["totals"]["images"] == 3 and (output / "case_a.png").is_file()


def test_predict_needs_a_report_for_every_image(model_dir, image_folder, tmp_path, capsys):
    images, reports = image_folder
    Image.new("L", (64, 64)).save(images / "no_report.png")
    assert _run(model_dir, images, reports, tmp_path / "out") == 2
    assert "have no report: no_report.png" in capsys.readouterr().err
    (images / "no_report.png").unlink()

    reports.write_text(reports.read_text() + "ghost.png,left lung\n")
    assert _run(model_dir, images, reports, tmp_path / "out") == 2
    assert "not in" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_predict_refuses_reports_the_model_cannot_use(text_only_model_dir, image_folder, tmp_path, capsys):
    images, reports = image_folder  # case_c.dcm has an empty report; this model needs text
    reports.write_text(reports.read_text().replace("case_a.png,bilateral pulmonary infection", "case_a.png,🙂🙂"))
    assert _run(text_only_model_dir, images, reports, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "2 report(s) cannot guide this model" in err
    assert "case_a.png: The report has no word" in err and "case_c.dcm: The report is empty" in err


def test_predict_refuses_images_folder_as_output(model_dir, image_folder, capsys):
    images, reports = image_folder
    assert _run(model_dir, images, reports, images, "--overwrite") == 2
    assert "is in the images folder" in capsys.readouterr().err
    assert _run(model_dir, images, reports, images / "masks") == 2  # its subfolders are read as images
    assert "is in the images folder" in capsys.readouterr().err and not (images / "masks").exists()


def _flat_dataset(root: Path, ids: list) -> Path:
    """A flat (QaTa-COV19 style) dataset: the first id in train, the others in val."""
    for folder in ("images", "masks", "reports"):
        (root / folder).mkdir(parents=True)
    for index, example_id in enumerate(ids):
        Image.fromarray(gradient(48 + index, 56).astype(np.uint8)).save(root / "images" / f"{example_id}.png")
        mask = np.zeros((48 + index, 56), np.uint8)
        mask[10:20, 10:30] = 255
        Image.fromarray(mask).save(root / "masks" / f"{example_id}.png")
        (root / "reports" / f"{example_id}.txt").write_text("unilateral pulmonary infection, lower right lung.")
    (root / "split.json").write_text(json.dumps({"train": ids[:1], "val": ids[1:]}))
    return root


def test_predict_dataset_split(model_dir, tmp_path):
    """--dataset reads a layout through tmca_hf.data (here the flat one, QaTa-COV19 style) and names masks by id."""
    root = _flat_dataset(tmp_path / "flat", ["covid_1", "covid_2", "covid_3"])
    output = tmp_path / "out"
    assert main(["--model", str(model_dir), "--dataset", str(root), "--split", "val", "--output_dir", str(output)]) == 0
    summary = json.loads((output / "summary.json").read_text())
    assert [entry["file"] for entry in summary["images"]] == ["covid_2", "covid_3"]
    assert np.asarray(Image.open(output / "covid_3.png")).shape == (50, 56)
    assert summary["source"]["split"] == "val"


def _saved_dataset(folder: Path, ids: list) -> Path:
    """A dataset saved with save_to_disk whose ids are any strings (paths, '..', duplicates of stems)."""
    import datasets

    from tmca_hf.data import FEATURES

    mask = np.zeros((40, 48), np.uint8)
    mask[5:20, 5:30] = 255
    rows = {
        "image": [Image.fromarray(gradient(40, 48).astype(np.uint8)) for _ in ids],
        "mask": [Image.fromarray(mask) for _ in ids],
        "text": ["left lower lung"] * len(ids),
        "id": ids,
    }
    datasets.DatasetDict({"validation": datasets.Dataset.from_dict(rows, features=FEATURES)}).save_to_disk(str(folder))
    return folder


def test_predict_writes_only_inside_output_dir_with_unique_recorded_names(model_dir, tmp_path):
    """Issue 8 item 1: ids that are paths never write outside --output_dir, never overwrite, never collide."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.png").write_bytes(b"not to be touched")
    ids = ["../escaped", "escaped", str(outside / "victim"), "victim", "sub/x", "other/x", "Case", "case", "img.v2"]
    source = _saved_dataset(tmp_path / "dataset", ids)
    work = tmp_path / "work"
    work.mkdir()
    output = work / "out"
    assert main(["--model", str(model_dir), "--dataset", str(source), "--output_dir", str(output)]) == 0
    assert (outside / "victim.png").read_bytes() == b"not to be touched" and sorted(work.iterdir()) == [output]
    summary = json.loads((output / "summary.json").read_text())
    names = {entry["file"]: entry["mask"] for entry in summary["images"]}
    assert sorted(names) == sorted(ids) and "SHA-256" in summary["mask_naming"]
    assert sorted(path.name for path in output.iterdir()) == sorted([*names.values(), "summary.json"])
    assert len({name.lower() for name in names.values()}) == len(ids)  # unique, even on case-insensitive disks
    assert names["escaped"] == "escaped.png" and names["victim"] == "victim.png" and names["img.v2"] == "img.v2.png"
    assert names["../escaped"].startswith("_escaped-") and names["sub/x"].startswith("sub_x-")
    assert names["Case"] != names["case"] and names["Case"].startswith("Case-")

    again = tmp_path / "again"
    assert main(["--model", str(model_dir), "--dataset", str(source), "--output_dir", str(again)]) == 0
    assert {e["file"]: e["mask"] for e in json.loads((again / "summary.json").read_text())["images"]} == names


def test_predict_overwrite_touches_nothing_outside(model_dir, image_folder, tmp_path):
    """--overwrite removes only the masks a summary lists by a name the tool gives, and never writes through links."""
    images, reports = image_folder
    output = tmp_path / "out"
    output.mkdir()
    (tmp_path / "precious.png").write_bytes(b"keep")
    (output / "case_a.png").symlink_to(tmp_path / "precious.png")
    (output / "summary.json").write_text(json.dumps({"images": [{"mask": "../precious.png"}, {"mask": "/etc/hosts"}]}))
    assert _run(model_dir, images, reports, output, "--overwrite") == 0
    assert (tmp_path / "precious.png").read_bytes() == b"keep"
    assert not (output / "case_a.png").is_symlink() and Image.open(output / "case_a.png").size == (48, 40)


def test_predict_matches_reports_by_relative_path(model_dir, tmp_path, capsys):
    """Issue 8 item 2: left/a.png and right/a.png keep their own reports; names that fit one image twice are refused."""
    images = tmp_path / "images"
    for side in ("left", "right"):
        (images / side).mkdir(parents=True)
        Image.fromarray(gradient(40, 48).astype(np.uint8)).save(images / side / "a.png")
    reports = tmp_path / "reports.csv"
    reports.write_text("image,report\nleft/a.png,left lung\nright/a.png,right lung\n")
    assert _run(model_dir, images, reports, tmp_path / "out") == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert {entry["file"]: entry["report"] for entry in summary["images"]} == {"left/a.png": "left lung",
                                                                              "right/a.png": "right lung"}
    assert len({entry["mask"] for entry in summary["images"]}) == 2

    reports.write_text("image,report\na.png,somewhere\n")  # fits both images
    assert _run(model_dir, images, reports, tmp_path / "out2") == 2
    assert "fits 2 images" in capsys.readouterr().err and not (tmp_path / "out2").exists()

    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(gradient(40, 48).astype(np.uint8)).save(flat / "a.png")
    reports.write_text("image,report\nleft/a.png,left lung\nright/a.png,right lung\n")
    assert _run(model_dir, flat, reports, tmp_path / "out3") == 2
    assert "The reports for 'left/a.png' and 'right/a.png' both name" in capsys.readouterr().err


@pytest.mark.parametrize(
    "write, message",
    [
        (lambda path: path.write_text("image,report\ncase_a.png,left lung\ncase_b.png,right, lower lung\n"),
         r"reports.csv, line 3: 3 value\(s\) where the header has 2 columns .* quote a report that contains commas"),
        (lambda path: path.write_text("image,report\ncase_a.png,left lung\n", encoding="utf-16"),
         r"reports.csv, line 1: the file is UTF-16 .* save it as UTF-8"),
        (lambda path: path.write_text("image,report\ncase_a.png,left lung\ncase_b.png,épanchement\n", encoding="latin-1"),
         r"reports.csv, line 3: byte 0xe9 is not UTF-8 .* save it as UTF-8"),
    ],
    ids=["extra-column", "utf-16", "latin-1"],
)
def test_predict_reports_errors_name_file_line_and_fix(model_dir, image_folder, tmp_path, capsys, write, message):
    """Issue 8 item 3: a bad CSV is one clear line (file, line, what to do), never a traceback or a codec error."""
    images, reports = image_folder
    write(reports)
    assert _run(model_dir, images, reports, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.startswith("tmca-predict: error: ") and err.count("\n") == 1
    assert re.search(message, err), err


def test_predict_reads_a_folder_of_text_reports(model_dir, tmp_path):
    """Issue 8 item 4: --reports takes a folder of <image>.txt reports, the layout of samples/qata_cov19/reports."""
    samples = SAMPLES / "qata_cov19"
    ids = ["covid_0060", "covid_0395", "covid_0878"]
    for folder, suffix in (("images", ".png"), ("reports", ".txt")):
        (tmp_path / folder).mkdir()
        for id_ in ids:
            (tmp_path / folder / f"{id_}{suffix}").symlink_to(samples / folder / f"{id_}{suffix}")
    assert _run(model_dir, tmp_path / "images", tmp_path / "reports", tmp_path / "out") == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    reports = {entry["file"]: entry["report"] for entry in summary["images"]}
    assert reports == {f"{id_}.png": (samples / "reports" / f"{id_}.txt").read_text().strip() for id_ in ids}
    for id_ in ids:  # reports beside their images: a.txt names a.png, not itself
        (tmp_path / "images" / f"{id_}.txt").symlink_to(samples / "reports" / f"{id_}.txt")
    assert _run(model_dir, tmp_path / "images", tmp_path / "images", tmp_path / "beside") == 0
    summary = json.loads((tmp_path / "beside" / "summary.json").read_text())
    assert {entry["file"]: entry["report"] for entry in summary["images"]} == reports


def test_predict_dataset_skip_invalid(model_dir, tmp_path, capsys):
    """Issue 8 item 7: the flag the error suggests exists, and what it skips is said and recorded."""
    root = _flat_dataset(tmp_path / "flat", ["covid_1", "covid_2", "covid_3"])
    Image.fromarray(gradient(49, 56).astype(np.uint8)).save(root / "masks" / "covid_2.png")  # a gray picture
    argv = ["--model", str(model_dir), "--dataset", str(root), "--split", "val", "--output_dir", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "1 invalid example(s)" in err and "--skip_invalid" in err and "Traceback" not in err
    assert main([*argv, "--skip_invalid"]) == 0
    err = capsys.readouterr().err
    assert "skipped 1 invalid example(s) (--skip_invalid):\n  [validation] images/covid_2.png: mask is not binary" in err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [entry["file"] for entry in summary["images"]] == ["covid_3"] and summary["totals"]["skipped"] == 1
    assert summary["skipped"][0].startswith("[validation] images/covid_2.png: mask is not binary")


def test_read_image_formats(tmp_path):
    """Every format is decoded to gray or RGB; 16-bit keeps its depth; DICOM gets slope/intercept and MONOCHROME1."""
    sizes = write_format_zoo(tmp_path)
    for name, size in sizes.items():
        pixels = read_image(tmp_path / name).pixels
        assert pixels.shape[:2] == size, name
        assert pixels.ndim == 2 or pixels.shape[-1] == 3, name
    assert read_image(tmp_path / "gray16.png").pixels.dtype == np.uint16
    assert read_image(tmp_path / "gray16.png").pixels.max() > 255
    raw = gradient(44, 40, 4000)
    np.testing.assert_allclose(read_image(tmp_path / "ct.dcm").pixels, raw * 0.5 - 1000)
    write_dicom(tmp_path / "inverted.dcm", raw, photometric="MONOCHROME1")
    inverted = read_image(tmp_path / "inverted.dcm").pixels
    np.testing.assert_allclose(inverted, raw.max() + raw.min() - raw)  # bright = dense, as in MONOCHROME2
    (tmp_path / "no_suffix").write_bytes((tmp_path / "ct.dcm").read_bytes())
    assert read_image(tmp_path / "no_suffix").pixels.shape == (44, 40)  # found by the DICM magic, not the name
    assert read_image((tmp_path / "rgb.jpg").read_bytes(), name="rgb.jpg").pixels.shape == (40, 48, 3)


@pytest.mark.parametrize(
    "content, message",
    [
        (lambda path: path.write_text("just some text"), "not an image file"),
        (lambda path: path.write_bytes(png_header_only(7000, 7000)), "the limit is 36 MP"),
        (lambda path: path.write_bytes(png_header_only(20000, 20000)), "far too large to decode"),
        (lambda path: Image.new("L", (1, 1)).save(path, format="PNG"), "expected at least 32 pixels"),
        (lambda path: path.write_bytes(png_bytes()[:-40]), "damaged or truncated"),
        (lambda path: write_dicom(path), "DICOM file without pixel data"),
    ],
    ids=["text", "too-large", "bomb", "1x1", "truncated", "dicom-without-pixels"],
)
def test_read_image_refuses_bad_files(tmp_path, content, message):
    path = tmp_path / "upload.png"
    content(path)
    with pytest.raises(ImageReadError, match=message):
        read_image(path)


def test_predict_missing_model_is_a_clear_error(image_folder, tmp_path, capsys):
    images, reports = image_folder
    assert _run(tmp_path / "no-such-model", images, reports, tmp_path / "out") == 2
    assert "No TMCA model at" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_predict_maps_patient_side_reports_to_the_models_convention(model_dir, image_folder, tmp_path):
    images, reports = image_folder
    as_given, as_patient = tmp_path / "image", tmp_path / "patient"
    assert _run(model_dir, images, reports, as_given) == 0
    assert _run(model_dir, images, reports, as_patient, "--laterality", "patient") == 0
    summaries = [json.loads((folder / "summary.json").read_text()) for folder in (as_given, as_patient)]
    assert summaries[1]["laterality"] == "patient" and summaries[1]["model_laterality"] == "image"
    scores = [{entry["file"]: entry["consistency"] for entry in summary["images"]} for summary in summaries]
    assert scores[0]["case_a.png"] == scores[1]["case_a.png"], "a bilateral report reads the same on both sides"
    assert scores[0]["case_b.png"] != scores[1]["case_b.png"], "'left lung' became 'right lung'"


def test_predict_skips_report_files_that_name_no_image_and_lists_what_it_ignored(model_dir, tmp_path, capsys):
    """Issue 15 item 9: a stray README.txt in a reports folder no longer aborts the batch."""
    samples = SAMPLES / "qata_cov19"
    for folder in ("images", "reports"):
        (tmp_path / folder).mkdir()
    for id_ in ("covid_0060", "covid_0395"):
        (tmp_path / "images" / f"{id_}.png").symlink_to(samples / "images" / f"{id_}.png")
        (tmp_path / "reports" / f"{id_}.txt").symlink_to(samples / "reports" / f"{id_}.txt")
    (tmp_path / "reports" / "README.txt").write_text("Reports written by Dr. X, 2026.")
    (tmp_path / "reports" / "notes.md").write_text("not a report")
    (tmp_path / "images" / "index.csv").write_text("not an image")
    assert _run(model_dir, tmp_path / "images", tmp_path / "reports", tmp_path / "out") == 0
    err = capsys.readouterr().err
    assert "skipped 1 report file(s)" in err and "README.txt" in err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [entry["file"] for entry in summary["images"]] == ["covid_0060.png", "covid_0395.png"]
    assert summary["unmatched_reports"] == ["README.txt"]
    assert summary["ignored_files"] == {"reports": ["notes.md"], "images": ["index.csv"]}
    assert "1 report file(s) named no image and were skipped: README.txt" in err
    assert "2 file(s) ignored" in err and "reports: notes.md" in err and "images: index.csv" in err
    (tmp_path / "reports" / "covid_9999.txt").write_text("lower left lung.")  # a CSV/JSON row would be refused
    csv = tmp_path / "reports.csv"
    csv.write_text("image,report\ncovid_0060.png,a\ncovid_0395.png,b\ncovid_9999.png,c\n")
    assert _run(model_dir, tmp_path / "images", csv, tmp_path / "out2") == 2
    assert "1 report(s) name images that are not in" in capsys.readouterr().err


def test_predict_takes_a_single_image_file(model_dir, image_folder, tmp_path):
    images, reports = image_folder
    assert _run(model_dir, images / "case_b.png", reports, images / "out") == 0  # beside the image is fine here
    summary = json.loads((images / "out" / "summary.json").read_text())
    assert [entry["file"] for entry in summary["images"]] == ["case_b.png"]
    assert summary["images"][0]["report"] == "one infected area in the left lung"
    assert _run(model_dir, images / "nothing.png", reports, tmp_path / "none") == 2


def test_predict_closes_with_the_images_that_need_a_look(model_dir, image_folder, tmp_path, capsys, monkeypatch):
    """Low-consistency (below the Space's warning) and text-free predictions are named at the end, not only in
    summary.json."""
    import tmca_hf.fit_checks as fit_checks

    images, reports = image_folder
    monkeypatch.setattr(fit_checks, "CONSISTENCY_WARNING", 1.01)  # every report "may not match": all are named
    assert _run(model_dir, images, reports, tmp_path / "out") == 0
    err = capsys.readouterr().err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["text_free"] == ["case_c.dcm"]
    assert "1 image(s) segmented without a report (text-free, less reliable): case_c.dcm" in err
    flagged = summary["low_consistency"]
    assert [entry["file"] for entry in flagged] == sorted(["case_a.png", "case_b.png"], key=lambda name: next(
        e["consistency"] for e in summary["images"] if e["file"] == name))
    assert "2 image(s) whose report may not match (consistency below 1.01" in err
    assert all(f"{entry['file']} ({entry['consistency']:.2f})" in err for entry in flagged)


@pytest.mark.parametrize("threshold, flagged", [(1e-9, ["case_a.png", "case_b.png", "case_c.dcm"]), (1e9, [])])
def test_predict_names_the_images_unlike_the_training_images(tmp_path, image_folder, capsys, threshold, flagged):
    """Images whose ood_score is above config.ood_threshold are listed in summary.json and at the end."""
    torch.manual_seed(0)
    model, processor = TmcaForImageSegmentation(tiny_config(text_dropout=0.2)).eval(), tiny_processor()
    fit_image_statistics(model, processor, [Image.fromarray(gradient(32 + 4 * i, 40).astype(np.uint8)) for i in range(4)])
    model.config.ood_threshold = threshold
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    model = tmp_path / "model"
    images, reports = image_folder
    assert _run(model, images, reports, tmp_path / "out") == 0
    err = capsys.readouterr().err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["ood_threshold"] == threshold
    assert all(entry["ood_score"] > 0 for entry in summary["images"])
    assert sorted(entry["file"] for entry in summary["unfamiliar_images"]) == flagged
    assert [entry["unfamiliar"] for entry in summary["images"]] == [bool(flagged)] * 3
    assert ("3 image(s) unlike the images the model was trained on" in err) == bool(flagged)
