"""tmca_hf.modeling.imaging_tmca: the one reading of images, the unit-range rule and the mask rule, shipped with every saved
model; the same file reaches the model as the same tensor through the processor, the data readers, tmca-evaluate and
tmca-predict, and tmca-predict --dataset scores what tmca-evaluate scores."""

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, run_as_hub_user, save_tiny_model, tiny_processor
from PIL import Image
from transformers.dynamic_module_utils import get_imports

from tmca_hf import evaluation, inference, predict
from tmca_hf.data import load_tmca_dataset
from tmca_hf.metrics import SegmentationMetrics
from tmca_hf.modeling import imaging_tmca
from tmca_hf.modeling.imaging_tmca import ImageReadError, binary_mask, read_image, threshold_mask, to_unit_range


SAMPLES = REPO_ROOT / "samples"
QATA_IDS = ["covid_0060", "covid_0395"]  # gray 8-bit PNG chest X-rays with 0/255 PNG masks
KVASIR_ID = "cju0qx73cjw570799j4n5cjze"  # an RGB JPEG endoscopy frame with a JPEG (RGB, compressed) mask


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny-tmca"), text_dropout=0.2)


@pytest.fixture(scope="module")
def mixed_flat(tmp_path_factory) -> Path:
    """A flat dataset of four kinds of file: two QaTa PNGs, a Kvasir JPEG and a 16-bit PNG, all in `val`."""
    root = tmp_path_factory.mktemp("mixed")
    for folder in ("images", "masks", "reports"):
        (root / folder).mkdir()
    for id_ in QATA_IDS:
        for folder, suffix in (("images", ".png"), ("masks", ".png"), ("reports", ".txt")):
            (root / folder / f"{id_}{suffix}").symlink_to(SAMPLES / "qata_cov19" / folder / f"{id_}{suffix}")
    for folder in ("images", "masks"):
        (root / folder / f"{KVASIR_ID}.jpg").symlink_to(SAMPLES / "kvasir_seg" / folder / f"{KVASIR_ID}.jpg")
    (root / "reports" / f"{KVASIR_ID}.txt").write_text("one polyp in the upper left.")
    deep = (np.add.outer(np.arange(48), np.arange(40)) * 700 + 900).astype(np.uint16)
    Image.fromarray(deep).save(root / "images" / "deep16.png")
    mask = np.zeros((48, 40), np.uint8)
    mask[8:30, 5:25] = 255
    Image.fromarray(mask).save(root / "masks" / "deep16.png")
    (root / "reports" / "deep16.txt").write_text("a bright lesion in the middle.")
    ids = [*QATA_IDS, KVASIR_ID, "deep16"]
    (root / "split.json").write_text(json.dumps({"val": ids}))
    return root


def record_pixel_values(model, captured: list):
    """Record the pixel_values of every forward call of `model`; returns the model."""
    model.register_forward_pre_hook(
        lambda module, args, kwargs: captured.append(kwargs["pixel_values"].detach().cpu().clone()), with_kwargs=True
    )
    return model


# ------------------------------------------------------------------------------------------------- shipping


def test_imports_only_what_a_hub_user_has():
    """What transformers checks before it runs remote code: torch, numpy and PIL (transformers' own dependencies);
    pydicom only inside a try block, so a user without it loads the model and gets a clear error for DICOM alone."""
    assert set(get_imports(imaging_tmca.__file__)) <= {"io", "os", "dataclasses", "pathlib", "typing", "numpy",
                                                       "torch", "PIL"}  # fmt: skip


def test_saved_folder_ships_the_module_and_loads_without_tmca_hf(model_dir, tmp_path):
    """save_pretrained copies imaging_tmca.py; a fresh process (own HF_HOME, never importing tmca_hf) loads the
    processor from remote code, decodes a 16-bit PNG file like the package does and refuses a NaN TIFF."""
    assert (model_dir / "imaging_tmca.py").read_text() == Path(imaging_tmca.__file__).read_text()
    deep = (np.add.outer(np.arange(48), np.arange(40)) * 700 + 900).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep16.png")
    nan = np.ones((40, 40), np.float32)
    nan[3, 4] = np.nan
    Image.fromarray(nan, mode="F").save(tmp_path / "nan.tif")
    torch.save(tiny_processor()(images=str(tmp_path / "deep16.png"))["pixel_values"], tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import sys, torch
        from transformers import AutoProcessor
        processor = AutoProcessor.from_pretrained({str(model_dir)!r}, trust_remote_code=True)
        values = processor(images={str(tmp_path / "deep16.png")!r})["pixel_values"]
        torch.testing.assert_close(values, torch.load({str(tmp_path / "expected.pt")!r}), rtol=0, atol=0)
        try:
            processor(images={str(tmp_path / "nan.tif")!r})
            raise SystemExit("a NaN image was accepted")
        except ValueError as error:
            assert "nan.tif" in str(error) and "NaN" in str(error), error
        assert not any(name.startswith("tmca_hf") for name in sys.modules), "tmca_hf was imported"
        print("SHIPPED", [name for name in sys.modules if name.endswith(".imaging_tmca")])
        """
    )
    result = run_as_hub_user(script, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SHIPPED ['transformers_modules." in result.stdout


def test_dicom_without_pydicom_is_a_clear_error(tmp_path, monkeypatch):
    from test_predict import gradient, write_dicom

    path = write_dicom(tmp_path / "ct.dcm", gradient(40, 40, 4000))
    monkeypatch.setitem(sys.modules, "pydicom", None)  # `import pydicom` now raises ImportError
    with pytest.raises(ImageReadError, match=r"ct.dcm is a DICOM file; reading DICOM needs pydicom"):
        read_image(path)


# ------------------------------------------------------------------------------------------------- the rules


def test_unit_range_rule():
    ramp = torch.arange(0, 256, dtype=torch.uint8).reshape(16, 16)
    assert torch.equal(to_unit_range(ramp, "x"), ramp.float() / 255)  # 8-bit: / 255, not stretched
    assert torch.equal(to_unit_range(torch.full((4, 4), 0.25), "x"), torch.full((4, 4), 0.25))  # [0, 1] floats kept
    deep = torch.tensor([[1000, 3000]], dtype=torch.int32)
    assert to_unit_range(deep, "x").tolist() == [[0.0, 1.0]]  # deeper integers: own min and max
    assert to_unit_range(torch.tensor([[-1.0, 3.0]]), "x").tolist() == [[0.0, 1.0]]  # floats outside [0, 1] too
    assert not to_unit_range(torch.full((4, 4), 7.0), "x").any()  # a flat image is 0, not NaN
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ImageReadError, match=r"image 3 has 1 NaN or infinite pixel value\(s\) of 2"):
            to_unit_range(torch.tensor([[0.5, bad]]), "image 3")


def test_nan_float_tiff_is_refused_where_images_are_read(tmp_path):
    """Issue 8 item 9: a float TIFF with NaN gave an empty mask; every reader now refuses it, naming the file."""
    pixels = np.linspace(0, 4, 64 * 64, dtype=np.float32).reshape(64, 64)
    pixels[10, 10] = np.nan
    Image.fromarray(pixels, mode="F").save(tmp_path / "scan.tif")
    with pytest.raises(ImageReadError, match=r"scan.tif has 1 NaN or infinite pixel value"):
        read_image(tmp_path / "scan.tif")
    with pytest.raises(ImageReadError, match=r"Cannot read image 0 from .*scan.tif.*NaN"):
        tiny_processor()(images=str(tmp_path / "scan.tif"))


@pytest.mark.parametrize(
    "mask, lesion_pixels",
    [
        (np.array([[0, 1], [1, 0]], np.uint8), 2),
        (np.array([[0, 255], [255, 255]], np.uint8), 3),
        (np.array([[False, True], [False, False]]), 1),
        (Image.fromarray(np.array([[0, 255], [0, 0]], np.uint8)).convert("RGB"), 1),  # gray drawn in RGB
        (np.stack([np.array([[0, 255], [0, 0]], np.uint8)] * 3, axis=-1), 1),  # equal channels
    ],
    ids=["0/1", "0/255", "bool", "PIL RGB", "HWC equal channels"],
)
def test_binary_mask_accepts_exact_masks(mask, lesion_pixels):
    result = binary_mask(mask, "mask")
    assert result.dtype == torch.bool and result.shape == (2, 2) and int(result.sum()) == lesion_pixels


@pytest.mark.parametrize(
    "mask, message",
    [
        (np.array([[0, 1], [255, 0]], np.uint8), r"mask is not binary: it has values \[0, 1, 255\]"),
        (np.array([[0, 128]], np.uint8), r"values \[0, 128\]; expected a binary mask with values 0/1 or 0/255"),
        (np.array([[0, 65535]], np.uint16), r"values \[0, 65535\]"),
        (np.stack([np.array([[0, 255]], np.uint8), np.zeros((1, 2), np.uint8), np.zeros((1, 2), np.uint8)], -1),
         r"3 channels that differ"),
    ],
    ids=["mixed 0/1/255", "gray", "16-bit", "red"],
)
def test_binary_mask_refuses_everything_else(mask, message):
    with pytest.raises(ValueError, match=message):
        binary_mask(mask, "mask")


def test_threshold_mask_brings_mask_files_to_the_rule():
    jpeg_like = np.array([[0, 3, 250, 255], [1, 0, 252, 240]], np.uint8)  # compression noise near 0 and 255
    assert threshold_mask(jpeg_like).tolist() == [[False, False, True, True], [False, False, True, True]]
    assert threshold_mask(np.array([[0.0, 1.0]], np.float32)).tolist() == [[False, True]]  # float 0/1
    assert threshold_mask(np.array([[0, 65535]], np.uint16)).tolist() == [[False, True]]  # 16-bit
    with pytest.raises(ValueError, match=r"mask is not binary: 50.0% of its pixels are mid-gray"):
        threshold_mask(np.array([[0, 128]], np.uint8))
    with pytest.raises(ValueError, match=r"none above mask_threshold=127"):
        threshold_mask(np.array([[0, 2]], np.uint8))  # a class-index map


# --------------------------------------------------------------------------------------- one file, one tensor


def test_same_file_same_tensor_on_every_path(model_dir, mixed_flat, tmp_path, monkeypatch):
    """The processor given the file, the data reader's row, tmca-evaluate, tmca-predict --dataset and
    tmca-predict --images all give the model the same pixel_values for each file."""
    ids = json.loads((mixed_flat / "split.json").read_text())["val"]
    files = [next((mixed_flat / "images").glob(f"{id_}.*")) for id_ in ids]
    processor = tiny_processor()
    by_path = [processor(images=str(path))["pixel_values"] for path in files]

    split = load_tmca_dataset(mixed_flat)["validation"]
    assert split["id"] == ids
    by_reader = [processor(images=row["image"])["pixel_values"] for row in split]

    by_evaluate, by_predict = [], []

    def recording_loader(captured: list):
        def load_model(*args, **kwargs):
            model, loaded_processor = inference.load_model(*args, **kwargs)
            return record_pixel_values(model, captured), loaded_processor

        return load_model

    monkeypatch.setattr(evaluation, "load_model", recording_loader(by_evaluate))
    assert evaluation.main(["--model", str(model_dir), "--dataset", str(mixed_flat), "--text_modes", "report",
                            "--batch_size", "1", "--device", "cpu"]) == 0  # fmt: skip

    monkeypatch.setattr(predict, "load_model", recording_loader(by_predict))
    assert predict.main(["--model", str(model_dir), "--dataset", str(mixed_flat), "--output_dir",
                         str(tmp_path / "by_dataset"), "--batch_size", "1", "--device", "cpu"]) == 0  # fmt: skip
    by_dataset = list(by_predict)
    by_predict.clear()
    assert predict.main(["--model", str(model_dir), "--images", str(mixed_flat / "images"), "--reports",
                         str(mixed_flat / "reports"), "--output_dir", str(tmp_path / "by_folder"),
                         "--batch_size", "1", "--device", "cpu"]) == 0  # fmt: skip
    by_folder = list(by_predict)  # the folder is read in sorted file order
    order = sorted(range(len(files)), key=lambda index: files[index].name)
    by_folder = [by_folder[order.index(index)] for index in range(len(files))]

    for index, path in enumerate(files):
        for name, values in (("reader", by_reader), ("evaluate", by_evaluate), ("predict --dataset", by_dataset),
                             ("predict --images", by_folder)):  # fmt: skip
            assert torch.equal(values[index], by_path[index]), f"{path.name}: {name} differs from the processor"
    assert not torch.equal(by_path[3], by_path[0])  # the 16-bit image kept its own content


def test_predict_dataset_agrees_with_evaluate(model_dir, tmp_path):
    """tmca-predict --dataset writes the masks tmca-evaluate scores: the same per-image counts and Dice."""
    samples = SAMPLES / "qata_cov19"
    assert evaluation.main(["--model", str(model_dir), "--dataset", str(samples), "--text_modes", "report",
                            "--batch_size", "4", "--device", "cpu", "--output_json",
                            str(tmp_path / "evaluation.json")]) == 0  # fmt: skip
    evaluated = json.loads((tmp_path / "evaluation.json").read_text())["results"]["report"]
    output = tmp_path / "masks"
    assert predict.main(["--model", str(model_dir), "--dataset", str(samples), "--batch_size", "4", "--device", "cpu",
                         "--output_dir", str(output)]) == 0  # fmt: skip
    summary = json.loads((output / "summary.json").read_text())
    mask_files = {entry["file"]: output / entry["mask"] for entry in summary["images"]}

    split = load_tmca_dataset(samples, splits=["validation"])["validation"]
    metrics = SegmentationMetrics(with_hd95=False)
    for row in split:
        predicted = np.asarray(Image.open(mask_files[row["id"]])) == 255
        metrics.update([torch.from_numpy(predicted)], [binary_mask(row["mask"], row["id"])], ids=[row["id"]])
    predicted_records = {record["id"]: record for record in metrics.per_image_records()}
    assert len(predicted_records) == evaluated["num_images"] == 16
    for record in evaluated["per_image"]:
        mine = predicted_records[record["id"]]
        assert (mine["tp"], mine["fp"], mine["fn"]) == (record["tp"], record["fp"], record["fn"]), record["id"]
    assert metrics.compute()["dice_per_image"] == pytest.approx(evaluated["dice_per_image"], abs=1e-12)
    assert len({round(record["dice"], 6) for record in evaluated["per_image"]}) > 2  # not a trivial all-0 agreement
