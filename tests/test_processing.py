"""TmcaImageProcessor and TmcaProcessor: the image kinds users bring, masks, post-processing and clear errors."""

import numpy as np
import pytest
import torch
from conftest import TINY_IMAGE_SIZE, tiny_processor
from PIL import Image

from tmca_hf import TmcaImageProcessor, TmcaProcessor


SIZE = TINY_IMAGE_SIZE


@pytest.fixture(scope="module")
def processor():
    return tiny_processor()


def gray(height=90, width=70, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (height, width), dtype=np.uint8)


@pytest.mark.parametrize(
    "image",
    [
        Image.fromarray(gray()),
        Image.fromarray(gray()).convert("RGB"),
        Image.fromarray(gray()).convert("RGBA"),
        Image.fromarray(gray()).convert("P"),
        Image.fromarray(gray()).convert("CMYK"),
        Image.fromarray(gray()).convert("LA"),
        Image.fromarray((gray().astype(np.uint16) * 257)),
        gray(),
        np.stack([gray()] * 3, axis=-1),
        torch.from_numpy(gray())[None],
    ],
    ids=["L", "RGB", "RGBA", "P", "CMYK", "LA", "16-bit", "numpy-2d", "numpy-hwc", "torch-chw"],
)
def test_every_image_kind_becomes_three_normalised_channels(processor, image):
    pixel_values = processor(images=image, text="left lung")["pixel_values"]
    assert pixel_values.shape == (1, 3, SIZE, SIZE) and pixel_values.dtype == torch.float32
    reference = processor(images=Image.fromarray(gray()), text="left lung")["pixel_values"]
    assert torch.allclose(pixel_values, reference, atol=0.05), "the same picture should give the same input"


def test_sixteen_bit_images_use_their_own_range():
    image_processor = TmcaImageProcessor(size={"height": 32, "width": 32}, do_normalize=False)
    dark = np.full((32, 32), 1000, dtype=np.uint16)
    dark[:16] = 3000
    values = image_processor(dark)["pixel_values"]
    assert values.min().item() == 0.0 and values.max().item() == 1.0


def test_masks_resize_with_nearest_and_binarise(processor):
    mask = np.zeros((90, 70), dtype=np.uint8)
    mask[10:50, 20:40] = 255
    labels = processor(images=gray(), text="x", segmentation_maps=mask)["labels"]
    assert labels.shape == (1, SIZE, SIZE)
    assert set(torch.unique(labels).tolist()) == {0.0, 1.0}
    ones = processor(images=gray(), text="x", segmentation_maps=(mask > 0).astype(np.uint8))["labels"]
    assert torch.equal(labels, ones)


def test_text_is_padded_and_cut_to_max_text_length(processor):
    batch = processor(images=[gray(), gray()], text=["left lung", "word " * 100])
    assert batch["input_ids"].shape == (2, 16) and batch["attention_mask"][1].all()
    assert batch["attention_mask"][0].sum() < 16


def test_post_process_returns_masks_at_original_sizes(processor):
    logits = torch.full((2, 1, SIZE, SIZE), -5.0)
    logits[0, :, : SIZE // 2] = 5.0
    masks = processor.post_process_semantic_segmentation(logits, target_sizes=[(90, 70), (30, 40)], threshold=0.5)
    assert [tuple(m.shape) for m in masks] == [(90, 70), (30, 40)]
    assert masks[0][:40].all() and not masks[0][50:].any() and not masks[1].any()
    assert masks[0].dtype == torch.long


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(images=np.zeros((5, 8, 8, 2), dtype=np.uint8)), ValueError, "expected \\(H, W\\), \\(H, W, C\\)"),
        (dict(images=np.zeros((8, 8, 2), dtype=np.uint8)), ValueError, "C = 1 \\(gray\\), 3 \\(RGB\\)"),
        (dict(images=gray(), segmentation_maps=np.zeros((40, 40), np.uint8)), ValueError, "expected the mask to have its image's size"),
        (dict(images=gray(), segmentation_maps=np.full((90, 70), 7, np.uint8)), ValueError, "values 0/1 or 0/255"),
        (dict(images=gray(), text=[3]), TypeError, "expected a string"),
        (dict(images=gray(), text=""), ValueError, "text=None"),
        (dict(images=[gray(), gray()], text=["only one"]), ValueError, "one report per image"),
        (dict(images={"not": "an image"}), TypeError, "expected a PIL image"),
        (dict(images=None), ValueError, "needs images"),
    ],
)
def test_bad_input_gives_clear_errors(processor, kwargs, error, message):
    kwargs.setdefault("text", "left lung")
    with pytest.raises(error, match=message):
        processor(**kwargs)


def test_corrupt_and_truncated_image_files_name_the_file(processor, tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"this is not a png")
    with pytest.raises(ValueError, match="Cannot read image 0 from .*corrupt.png"):
        processor(images=str(corrupt), text="left lung")
    truncated = tmp_path / "truncated.png"
    Image.fromarray(gray()).save(tmp_path / "whole.png")
    truncated.write_bytes((tmp_path / "whole.png").read_bytes()[:200])
    with pytest.raises(ValueError, match="truncated.png"):
        processor(images=str(truncated), text="left lung")
    assert processor(images=str(tmp_path / "whole.png"), text="x")["pixel_values"].shape == (1, 3, SIZE, SIZE)


def test_absent_report_is_refused_by_a_model_that_needs_one(processor):
    from conftest import tiny_config

    from tmca_hf import TmcaForImageSegmentation

    model = TmcaForImageSegmentation(tiny_config()).eval()
    with pytest.raises(ValueError, match="needs a report"):
        model(**processor(images=gray(), text=None))


def test_keyword_overrides_merge_over_the_processor_defaults(processor):
    image, reports = Image.new("L", (64, 64)), ["left lung", "bilateral pulmonary infection, two infected areas"]
    default = processor(images=[image, image], text=reports)["input_ids"]
    assert default.shape[1] == processor.max_text_length
    assert processor(images=[image, image], text=reports, padding="longest")["input_ids"].shape[1] < default.shape[1]
    assert processor(images=[image, image], text=reports, max_length=5)["input_ids"].shape[1] == 5
    assert processor(images=[image, image], text=reports, text_kwargs={"max_length": 6})["input_ids"].shape[1] == 6


def test_laterality_maps_a_patient_side_report_to_the_models_convention(processor, tmp_path):
    image = Image.new("L", (64, 64))
    assert processor.report_laterality == "image"  # QaTa-COV19's reports name the image's side
    as_patient = processor(images=image, text="lower left lung.", laterality="patient")["input_ids"]
    assert torch.equal(as_patient, processor(images=image, text="lower right lung.")["input_ids"])
    assert torch.equal(processor(images=image, text="lower left lung.", laterality="image")["input_ids"],
                       processor(images=image, text="lower left lung.")["input_ids"])
    processor.save_pretrained(tmp_path)
    assert TmcaProcessor.from_pretrained(tmp_path).report_laterality == "image"
    with pytest.raises(ValueError, match="report_laterality must be one of"):
        TmcaProcessor(processor.image_processor, processor.tokenizer, report_laterality="left")
