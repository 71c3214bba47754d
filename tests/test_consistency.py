"""Report-image consistency score (issue 10, item 1): `outputs.consistency` and `config.consistency_calibration`."""

import math

import pytest
import torch
from conftest import TINY_IMAGE_SIZE, tiny_config, tiny_processor

from tmca_hf import TmcaConfig, TmcaForImageSegmentation
from tmca_hf.modeling.modeling_tmca import TmcaLevelAlignment, report_consistency


SIZE = TINY_IMAGE_SIZE
FLIP = {"left": "right", "right": "left"}


def build(**overrides):
    torch.manual_seed(0)
    return TmcaForImageSegmentation(tiny_config(**overrides)).eval()


def report_inputs(sides, processor=None):
    processor = processor or tiny_processor()
    texts = [f"unilateral pulmonary infection, one infected area, {side} lung." for side in sides]
    encoded = processor.tokenizer(texts, padding="max_length", max_length=16, truncation=True, return_tensors="pt")
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


def images(batch_size, seed=0):
    return torch.randn(batch_size, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------ in the outputs


def test_consistency_with_a_report_is_one_value_per_image_in_0_1():
    model = build()
    output = model(pixel_values=images(3), **report_inputs(["left", "right", "left"]))
    assert output.consistency.shape == (3,)
    assert output.consistency.dtype == torch.float32
    assert ((output.consistency >= 0) & (output.consistency <= 1)).all()
    assert not output.consistency.requires_grad
    assert list(output.keys())[-1] == "consistency"  # last field: tuple outputs keep their order


def test_no_consistency_without_a_report_or_without_alignment_levels():
    text_free = build(text_dropout=0.2)
    assert text_free(pixel_values=images(2)).consistency is None
    no_levels = build(alignment_levels=[], use_target_enhancement=False)
    assert no_levels(pixel_values=images(2), **report_inputs(["left", "right"])).consistency is None
    image_only = build(use_text=False, alignment_levels=[], use_target_enhancement=False)
    assert image_only(pixel_values=images(2)).consistency is None


def test_consistency_changes_neither_logits_nor_losses():
    batch = {"pixel_values": images(2), **report_inputs(["left", "right"])}
    labels = torch.zeros(2, SIZE, SIZE)
    labels[:, 8:24, 8:20] = 1
    plain, calibrated = build(), build(consistency_calibration=[7.0, -2.0])
    out_plain, out_calibrated = plain(**batch, labels=labels), calibrated(**batch, labels=labels)
    assert torch.equal(out_plain.logits, out_calibrated.logits)
    assert torch.equal(out_plain.loss, out_calibrated.loss)
    assert not torch.allclose(out_plain.consistency, out_calibrated.consistency)


# ------------------------------------------------------------------------------------------------ known values


def _level(pixel_embeddings, text_embedding, stride=4):
    batch_size, _, height, width = pixel_embeddings.shape
    return TmcaLevelAlignment(
        stride, pixel_embeddings, text_embedding.expand(batch_size, -1), torch.zeros(batch_size, 1, height, width)
    )


def test_hand_checked_value_of_the_score():
    # Level 1: left pixels e1, right pixels e2; the report u = e1. Logits ln 3 on the left half (p = 3/4) and 0 on the
    # right (p = 1/2): the predicted target embedding is (3/4 e1 + 1/2 e2) normalised, cos = 0.75 / sqrt(0.8125).
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    first = torch.stack([e1, e2], -1)[:, None, :].expand(2, 2, 2)[None]  # (1, 2, h=2, w=2): column 0 e1, column 1 e2
    # Level 2 (another size): every pixel e1, the report u = e2: cos = 0.
    second = e1[None, :, None, None].expand(1, 2, 1, 1)
    logits = torch.zeros(1, 1, 4, 4)
    logits[..., :2] = math.log(3)
    alignments = [_level(first, e1[None]), _level(second, e2[None])]
    mean_cosine = (0.75 / math.sqrt(0.75**2 + 0.5**2) + 0.0) / 2  # 0.41603, consistency 0.70801
    raw = report_consistency(logits, alignments)
    assert raw.item() == pytest.approx((mean_cosine + 1) / 2, abs=1e-5)
    calibrated = report_consistency(logits, alignments, [4.0, -2.0])
    assert calibrated.item() == pytest.approx(1 / (1 + math.exp(-(4.0 * mean_cosine - 2.0))), abs=1e-5)  # 0.41681


def test_calibrated_score_is_the_logistic_of_the_raw_mean_cosine():
    batch = {"pixel_values": images(3), **report_inputs(["left", "right", "left"])}
    raw = build()(**batch).consistency
    slope, intercept = 12.5, -3.25
    calibrated = build(consistency_calibration=[slope, intercept])(**batch).consistency
    mean_cosine = 2 * raw - 1
    assert torch.allclose(calibrated, torch.sigmoid(slope * mean_cosine + intercept), atol=1e-6)


# ------------------------------------------------------------------------------------------------ config


def test_calibration_round_trips_through_save_pretrained(tmp_path):
    model = build(consistency_calibration=(12.5, -3.25))
    assert model.config.consistency_calibration == [12.5, -3.25]
    model.save_pretrained(tmp_path)
    loaded = TmcaForImageSegmentation.from_pretrained(tmp_path).eval()
    assert loaded.config.consistency_calibration == [12.5, -3.25]
    batch = {"pixel_values": images(2), **report_inputs(["left", "right"])}
    assert torch.equal(loaded(**batch).consistency, model(**batch).consistency)
    assert TmcaConfig.from_pretrained(tmp_path).consistency_calibration == [12.5, -3.25]


def test_no_calibration_by_default_and_through_save_pretrained(tmp_path):
    config = tiny_config()
    assert config.consistency_calibration is None
    config.save_pretrained(tmp_path)
    assert TmcaConfig.from_pretrained(tmp_path).consistency_calibration is None


@pytest.mark.parametrize(
    "bad", [[1.0], [1.0, 2.0, 3.0], [float("nan"), 0.0], [1.0, float("inf")], ["1", 0.0], [True, 0.0], 3.0, "1,2"]
)
def test_invalid_calibration_is_refused(bad):
    with pytest.raises(ValueError, match="consistency_calibration"):
        tiny_config(consistency_calibration=bad)


# ------------------------------------------------------------------------------------------------ after training


def lateral_task(batch_size, seed):
    """Gray-noise images with one bright lesion, on the image's left for even indices and right for odd ones."""
    generator = torch.Generator().manual_seed(seed)
    pixel_values = 0.1 * torch.randn(batch_size, 3, SIZE, SIZE, generator=generator)
    labels = torch.zeros(batch_size, SIZE, SIZE)
    sides = []
    for index in range(batch_size):
        side = "left" if index % 2 == 0 else "right"
        top = int(torch.randint(8, 40, (1,), generator=generator))
        left = int(torch.randint(4, 16, (1,), generator=generator)) + (0 if side == "left" else SIZE // 2)
        labels[index, top : top + 16, left : left + 12] = 1
        pixel_values[index, :, top : top + 16, left : left + 12] += 1.0
        sides.append(side)
    return pixel_values, labels, sides


def test_matching_report_scores_above_the_left_right_swapped_one_after_training():
    torch.manual_seed(0)
    model = TmcaForImageSegmentation(tiny_config(alignment_position=True, alignment_weight=1.0)).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    processor = tiny_processor()
    pixel_values, labels, sides = lateral_task(16, seed=0)
    reports = report_inputs(sides, processor)
    for _ in range(60):  # about 3 s on one CPU thread
        loss = model(pixel_values=pixel_values, labels=labels, **reports).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    model.eval()
    pixel_values, _, sides = lateral_task(16, seed=1)  # new images
    with torch.no_grad():
        own = model(pixel_values=pixel_values, **report_inputs(sides, processor)).consistency
        flipped = report_inputs([FLIP[side] for side in sides], processor)
        swapped = model(pixel_values=pixel_values, **flipped).consistency
    assert (own > swapped).all(), (own, swapped)
    assert own.mean() - swapped.mean() > 0.05
