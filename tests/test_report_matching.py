"""Does the report fit the image? The report-matching head behind `outputs.consistency` (issue 16, item 2)."""

import math

import numpy as np
import pytest
import torch
from conftest import TINY_IMAGE_SIZE, tiny_config, tiny_processor
from PIL import Image

from tmca_hf import TmcaConfig, TmcaForImageSegmentation
from tmca_hf.modeling.modeling_tmca import TmcaReportMatching
from tmca_hf.report_matching import (
    fit_report_matching,
    matching_logits,
    negative_reports,
    report_vectors,
    text_free_lesion_features,
    wrong_count,
)


SIZE = TINY_IMAGE_SIZE
LEFT = "unilateral pulmonary infection, one infected area, lower left lung."
RIGHT = "unilateral pulmonary infection, one infected area, lower right lung."
BOTH = "bilateral pulmonary infection, two infected areas, lower left lung and lower right lung."


def build(**overrides):
    torch.manual_seed(0)
    return TmcaForImageSegmentation(tiny_config(text_dropout=0.2, **overrides)).eval()


def encoded(texts, processor):
    batch = processor.encode_reports(texts)
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


# ---------------------------------------------------------------------------------------------------- negatives


def test_wrong_count_changes_the_count_and_its_noun():
    assert wrong_count(LEFT) == "unilateral pulmonary infection, two infected areas, lower left lung."
    assert wrong_count(BOTH) == "bilateral pulmonary infection, one infected area, lower left lung and lower right lung."
    assert wrong_count("Three infected areas, all right lung.") == "two infected areas, all right lung."
    assert wrong_count("no finding.") is None


def test_negatives_never_repeat_the_images_own_findings():
    reports = [LEFT, RIGHT, BOTH, LEFT]
    negatives = negative_reports(reports, seed=0)
    assert all(other.lower() != own.lower() for own, other in zip(reports, negatives["other"]))
    assert negatives["swapped"][:2] == [RIGHT, LEFT]
    assert negatives["swapped"][2] is None, "swapping both sides leaves the findings as they were: not a negative"
    assert negatives["count"][0] == wrong_count(LEFT)


# ---------------------------------------------------------------------------------------------------- the head


def test_lesion_features_by_value():
    logits = torch.full((1, 1, 60, 40), -30.0)
    logits[0, 0, :10, :10] = 30.0  # exactly the first cell of the 6 x 4 grid (top row, the image's far left)
    logits[0, 0, 50:, 30:] = 30.0  # and the last (bottom row, the image's far right)
    features = TmcaReportMatching.lesion_features(logits)
    assert features.shape == (1, 48)
    cells, shares = features[0, :24], features[0, 24:]
    expected = torch.zeros(24)
    expected[0] = expected[23] = 1.0
    assert torch.allclose(cells, expected, atol=1e-6)
    assert torch.allclose(shares, expected / 2, atol=1e-6)  # each cell holds half of the lesion


def test_a_head_needs_a_text_free_prediction():
    with pytest.raises(ValueError, match="text_dropout > 0"):
        TmcaConfig(**{**tiny_config().to_dict(), "report_matching_hidden_size": 8, "text_dropout": 0.0})
    with pytest.raises(ValueError, match="positive width"):
        tiny_config(text_dropout=0.2, report_matching_hidden_size=0)


def test_forward_consistency_is_the_calibrated_head_logit_on_the_text_free_lesion():
    processor = tiny_processor()
    pixels = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    texts = encoded([LEFT, RIGHT, BOTH], processor)
    plain = build()
    with_head = build(report_matching_hidden_size=8, consistency_calibration=[2.0, -0.5])
    with_head.load_state_dict(plain.state_dict(), strict=False)
    torch.nn.init.normal_(with_head.report_matching.classifier[-1].weight, std=1.0)
    outputs, reference = with_head(pixel_values=pixels, **texts), plain(pixel_values=pixels, **texts)
    assert torch.equal(outputs.logits, reference.logits), "the head never changes the segmentation"

    features = with_head.backbone(pixels).feature_maps
    null = with_head.encode_text(None, None, 3, pixels.device)
    text_free_logits = with_head(pixel_values=pixels).logits
    assert torch.allclose(with_head._segment(features, null, (SIZE, SIZE))[0], text_free_logits)
    lesion = TmcaReportMatching.lesion_features(text_free_logits)
    vector = with_head.encode_text(texts["input_ids"], texts["attention_mask"], 3, pixels.device).vector
    logit = with_head.report_matching(lesion, vector)
    assert torch.allclose(outputs.consistency, torch.sigmoid(2.0 * logit - 0.5), atol=1e-6)
    assert outputs.consistency.std() > 0
    assert not any(parameter.requires_grad for parameter in with_head.report_matching.parameters())


def test_the_head_travels_with_save_pretrained(tmp_path):
    model = build(report_matching_hidden_size=8)
    torch.nn.init.normal_(model.report_matching.classifier[-1].weight, std=1.0)
    model.report_matching.feature_mean.fill_(0.25)
    model.save_pretrained(tmp_path)
    loaded = TmcaForImageSegmentation.from_pretrained(tmp_path).eval()
    assert loaded.config.report_matching_hidden_size == 8
    assert torch.equal(loaded.report_matching.feature_mean, model.report_matching.feature_mean)
    pixels = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    texts = encoded([LEFT, RIGHT], tiny_processor())
    assert torch.allclose(loaded(pixel_values=pixels, **texts).consistency, model(pixel_values=pixels, **texts).consistency)


# ---------------------------------------------------------------------------------------------------- the fit


def _side_images(sides, seed=0):
    """Gray 64 x 64 images, bright on the named side of the image (the tiny model is random: the head learns what
    its text-free prediction does with them)."""
    rng = np.random.default_rng(seed)
    images = []
    for side in sides:
        pixels = rng.integers(0, 40, (SIZE, SIZE)).astype(np.uint8)
        if side == "left":
            pixels[:, : SIZE // 2] += 200
        else:
            pixels[:, SIZE // 2 :] += 200
        images.append(Image.fromarray(pixels))
    return images


def test_the_fit_learns_which_report_goes_with_which_image_and_clears_an_old_calibration():
    sides = ["left", "right"] * 12
    images = _side_images(sides)
    reports = [LEFT if side == "left" else RIGHT for side in sides]
    model, processor = build(consistency_calibration=[3.0, 1.0]), tiny_processor()
    fitted = fit_report_matching(model, processor, images, reports, hidden_size=16, epochs=60, batch_size=8, seed=0)
    assert fitted["images"] == 24 and model.config.report_matching_hidden_size == 16
    assert model.config.consistency_calibration is None

    held_out = _side_images(["left", "right"] * 4, seed=1)
    own = [LEFT, RIGHT] * 4
    swapped = [RIGHT, LEFT] * 4
    lesions = text_free_lesion_features(model, processor, held_out)
    vectors = report_vectors(model, processor, own + swapped)
    own_logits = matching_logits(model.report_matching, lesions, own, vectors)
    swapped_logits = matching_logits(model.report_matching, lesions, swapped, vectors)
    assert bool((own_logits > swapped_logits).all()), (own_logits, swapped_logits)

    outputs = model(**processor(images=held_out, text=own, return_tensors="pt"))
    assert torch.allclose(outputs.consistency, torch.sigmoid(own_logits), atol=1e-5)
    assert math.isclose(float(outputs.consistency.mean()), float(torch.sigmoid(own_logits).mean()), abs_tol=1e-5)
