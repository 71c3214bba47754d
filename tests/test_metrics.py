"""Tests for tmca_hf.metrics against values counted by hand on tiny masks."""

import json

import numpy as np
import pytest
import torch

from tmca_hf.metrics import EMPTY_MASK_POLICY, SegmentationMetrics, hd95


def masks(*arrays):
    """Stacks 2-D lists/arrays into a (B, H, W) uint8 tensor."""
    return torch.tensor(np.stack([np.asarray(a) for a in arrays]), dtype=torch.uint8)


def pixels(shape, coordinates):
    """A zero (H, W) mask with ones at the given (row, column) coordinates."""
    mask = torch.zeros(shape, dtype=torch.uint8)
    for row, column in coordinates:
        mask[row, column] = 1
    return mask


# Prediction: the top two rows of a 4x4 image; target: the left two columns.
TOP_ROWS = [[1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]]
LEFT_COLUMNS = [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]]


def test_partial_overlap_dice_iou_and_hd95():
    metrics = SegmentationMetrics()
    metrics.update(masks(TOP_ROWS), masks(LEFT_COLUMNS), ids=["a"])
    (record,) = metrics.per_image_records()
    # tp = the 2x2 top-left block = 4; fp = top rows, right columns = 4; fn = bottom rows, left columns = 4;
    # tn = 16 - 12 = 4
    assert (record["tp"], record["fp"], record["fn"], record["tn"]) == (4, 4, 4, 4)
    # Dice = 2*4 / (8 + 8) = 0.5; IoU = 4 / (4 + 4 + 4) = 1/3
    assert record["dice"] == pytest.approx(0.5)
    assert record["iou"] == pytest.approx(1 / 3)
    # Both shapes are two pixels thick, so every pixel is a boundary pixel. A prediction pixel in column c is
    # max(0, c - 1) from the target: per row [0, 0, 1, 2], so the 8 distances sorted are [0,0,0,0,1,1,2,2]; the
    # 95th percentile sits at position 0.95 * 7 = 6.65, between two 2s -> 2. The other direction is the same.
    assert record["hd95"] == pytest.approx(2.0)
    assert record["hd95_status"] == "ok"
    assert record["id"] == "a"


def test_hd95_single_pixels_3_4_5_triangle():
    # One pixel at (0, 0), the other at (3, 4): distance sqrt(3^2 + 4^2) = 5 in both directions.
    prediction = pixels((5, 5), [(0, 0)]).float()
    target = pixels((5, 5), [(3, 4)]).float()
    assert hd95(prediction, target) == pytest.approx(5.0)


def test_hd95_interpolates_the_95th_percentile():
    # Target: one pixel at (0, 0). Prediction: (0, 0) and (0, 10). Distances prediction -> target are [0, 10];
    # the 95th percentile by linear interpolation is 0 + 0.95 * (10 - 0) = 9.5 (the plain Hausdorff would be 10).
    # Target -> prediction is [0]. HD95 = max(9.5, 0) = 9.5.
    prediction = pixels((12, 20), [(0, 0), (0, 10)]).float()
    target = pixels((12, 20), [(0, 0)]).float()
    assert hd95(prediction, target) == pytest.approx(9.5)


def test_hd95_ignores_one_outlier_in_21_boundary_pixels():
    # Target: row 0, columns 0..19 (a one-pixel line: 20 boundary pixels). Prediction: the same line plus an
    # outlier pixel at (10, 0), 10 rows away. Distances prediction -> target: twenty 0s and one 10; position
    # 0.95 * 20 = 19 lands exactly on the last 0 -> 0. Target -> prediction: all 0. HD95 = 0 (Hausdorff = 10).
    line = [(0, column) for column in range(20)]
    prediction = pixels((12, 20), line + [(10, 0)]).float()
    target = pixels((12, 20), line).float()
    assert hd95(prediction, target) == pytest.approx(0.0)


def test_empty_masks_follow_the_policy():
    metrics = SegmentationMetrics()
    empty = torch.zeros(4, 4, dtype=torch.uint8)
    three = pixels((4, 4), [(0, 0), (0, 1), (0, 2)])
    five = pixels((4, 4), [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1)])
    four = pixels((4, 4), [(3, 0), (3, 1), (3, 2), (3, 3)])
    metrics.update(
        torch.stack([empty, three, empty, four]),  # predictions
        torch.stack([empty, empty, five, four]),  # targets
        ids=["both_empty", "only_target_empty", "only_prediction_empty", "perfect"],
    )
    records = {r["id"]: r for r in metrics.per_image_records()}
    assert (records["both_empty"]["dice"], records["both_empty"]["iou"]) == (1.0, 1.0)
    assert (records["only_target_empty"]["dice"], records["only_target_empty"]["iou"]) == (0.0, 0.0)
    assert (records["only_prediction_empty"]["dice"], records["only_prediction_empty"]["iou"]) == (0.0, 0.0)
    assert [records[k]["hd95"] for k in records] == [None, None, None, 0.0]
    assert [records[k]["hd95_status"] for k in records] == ["both_empty", "target_empty", "prediction_empty", "ok"]

    result = metrics.compute()
    # per-image Dice = (1 + 0 + 0 + 1) / 4 = 0.5, and IoU the same
    assert result["dice_per_image"] == pytest.approx(0.5)
    assert result["iou_per_image"] == pytest.approx(0.5)
    # pooled: tp = 4 (perfect), fp = 3 (only_target_empty), fn = 5 (only_prediction_empty)
    # Dice = 2*4 / (8 + 3 + 5) = 0.5; IoU = 4 / (4 + 3 + 5) = 1/3
    assert result["dice_pooled"] == pytest.approx(0.5)
    assert result["iou_pooled"] == pytest.approx(1 / 3)
    # HD95 only on "perfect" (identical masks -> 0); the three others are excluded, not scored as 0
    assert (result["hd95"], result["hd95_images"], result["hd95_excluded"]) == (0.0, 1, 3)
    assert (result["num_empty_targets"], result["num_empty_predictions"], result["num_images"]) == (2, 2, 4)
    assert result["empty_policy"] == EMPTY_MASK_POLICY


def test_all_empty_split():
    metrics = SegmentationMetrics()
    metrics.update(torch.zeros(2, 3, 3), torch.zeros(2, 3, 3))
    result = metrics.compute()
    # nothing to find and nothing found: every Dice/IoU is 1 by the policy; HD95 has no image to average
    assert (result["dice_per_image"], result["dice_pooled"], result["iou_pooled"]) == (1.0, 1.0, 1.0)
    assert (result["hd95"], result["hd95_images"], result["hd95_excluded"]) == (None, 0, 2)


def test_pooled_and_per_image_differ():
    # Image A (4x4): a perfect 4-pixel prediction -> Dice 1, IoU 1.
    # Image B (6x6, another update call and size): a 12-pixel target, nothing predicted -> Dice 0, IoU 0.
    metrics = SegmentationMetrics()
    a = pixels((4, 4), [(0, 0), (0, 1), (1, 0), (1, 1)])
    metrics.update(a[None], a[None])
    b_target = torch.zeros(6, 6, dtype=torch.uint8)
    b_target[:2] = 1  # 2 rows x 6 columns = 12 pixels
    metrics.update(torch.zeros(1, 6, 6), b_target[None])
    result = metrics.compute()
    # per-image: (1 + 0) / 2 = 0.5 for both Dice and IoU
    assert result["dice_per_image"] == pytest.approx(0.5)
    assert result["iou_per_image"] == pytest.approx(0.5)
    # pooled: tp = 4, fp = 0, fn = 12 -> Dice = 8 / (8 + 0 + 12) = 0.4; IoU = 4 / (4 + 0 + 12) = 0.25
    assert result["dice_pooled"] == pytest.approx(0.4)
    assert result["iou_pooled"] == pytest.approx(0.25)


def test_several_updates_equal_one_update():
    generator = torch.Generator().manual_seed(0)
    predictions = (torch.rand(7, 9, 11, generator=generator) > 0.6).long()
    targets = (torch.rand(7, 9, 11, generator=generator) > 0.5).long()
    targets[3] = 0  # one empty target among them
    ids = [f"image{i}" for i in range(7)]

    at_once = SegmentationMetrics()
    at_once.update(predictions, targets, ids=ids)
    in_parts = SegmentationMetrics()
    for start, stop in [(0, 2), (2, 3), (3, 7)]:
        in_parts.update(predictions[start:stop], targets[start:stop], ids=ids[start:stop])

    assert len(in_parts) == len(at_once) == 7
    assert in_parts.compute() == at_once.compute()
    assert in_parts.per_image_records() == at_once.per_image_records()
    assert at_once.compute()["hd95_excluded"] == 1


def test_input_types_give_the_same_result():
    prediction, target = masks(TOP_ROWS), masks(LEFT_COLUMNS)
    reference = SegmentationMetrics()
    reference.update(prediction, target)
    for as_input in [
        lambda m: m.bool(),
        lambda m: m.float(),
        lambda m: m.numpy(),
        lambda m: [m[0]],  # a list of (H, W) masks
        lambda m: m.float().requires_grad_(),
    ]:
        metrics = SegmentationMetrics()
        metrics.update(as_input(prediction), as_input(target))
        assert metrics.compute() == reference.compute()


def test_variable_sizes_in_one_list():
    metrics = SegmentationMetrics()
    small, large = masks(TOP_ROWS)[0], torch.ones(5, 7)
    metrics.update([small, large], [masks(LEFT_COLUMNS)[0], large])
    records = metrics.per_image_records()
    assert [(r["height"], r["width"]) for r in records] == [(4, 4), (5, 7)]
    assert [r["dice"] for r in records] == pytest.approx([0.5, 1.0])


def test_results_are_json_ready():
    metrics = SegmentationMetrics()
    metrics.update(torch.zeros(1, 4, 4), masks(LEFT_COLUMNS))  # an undefined HD95 must not become NaN
    json.dumps(metrics.compute(), allow_nan=False)
    json.dumps(metrics.per_image_records(), allow_nan=False)


def test_reset():
    metrics = SegmentationMetrics()
    metrics.update(masks(TOP_ROWS), masks(LEFT_COLUMNS))
    metrics.reset()
    assert len(metrics) == 0


@pytest.mark.parametrize(
    "predictions, targets, error, message",
    [
        (torch.zeros(2, 4, 4), torch.zeros(2, 4, 5), ValueError, "differ in shape"),
        (torch.full((1, 4, 4), 0.7), torch.zeros(1, 4, 4), ValueError, "binary.*0.7"),
        (torch.zeros(1, 4, 4), torch.full((1, 4, 4), 255), ValueError, "binary.*255"),
        (torch.zeros(4, 4), torch.zeros(4, 4), ValueError, r"masks\[None\]"),
        (torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4), ValueError, "squeeze the channel"),
        (torch.zeros(2, 4, 4), torch.zeros(3, 4, 4), ValueError, "2 predictions but 3 targets"),
        ([[0, 1], [1, 0]], torch.zeros(1, 2, 2), TypeError, r"predictions\[0\]"),
        ("mask.png", torch.zeros(1, 2, 2), TypeError, "got str"),
        ([torch.zeros(1, 4, 4)], torch.zeros(1, 4, 4), ValueError, "height, width"),
    ],
)
def test_bad_input_raises_clear_errors(predictions, targets, error, message):
    with pytest.raises(error, match=message):
        SegmentationMetrics().update(predictions, targets)


@pytest.mark.parametrize("with_hd95", [True, False], ids=["per-image path", "batched device path"])
def test_both_paths_refuse_non_binary_masks_naming_the_value(with_hd95):
    with pytest.raises(ValueError, match="binary.*0.7"):
        SegmentationMetrics(with_hd95=with_hd95).update(torch.full((1, 4, 4), 0.7), torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="binary.*255"):
        SegmentationMetrics(with_hd95=with_hd95).update(torch.zeros(1, 4, 4), torch.full((1, 4, 4), 255))


def test_bad_ids_and_empty_compute():
    metrics = SegmentationMetrics()
    with pytest.raises(ValueError, match="1 ids for 2 masks"):
        metrics.update(torch.zeros(2, 4, 4), torch.zeros(2, 4, 4), ids=["only-one"])
    with pytest.raises(ValueError, match="before any update"):
        metrics.compute()


def test_without_hd95_the_dice_and_iou_are_unchanged_and_hd95_is_absent():
    prediction = torch.zeros(1, 4, 4, dtype=torch.uint8)
    prediction[0, :2] = 1  # top two rows
    target = torch.zeros(1, 4, 4, dtype=torch.uint8)
    target[0, :, :2] = 1  # left two columns: tp = fp = fn = tn = 4
    full, light = SegmentationMetrics(), SegmentationMetrics(with_hd95=False)
    full.update(prediction, target)
    light.update(prediction, target)
    scores = light.compute()
    assert scores["dice_per_image"] == pytest.approx(0.5) and scores["iou_pooled"] == pytest.approx(1 / 3)
    assert {k: v for k, v in full.compute().items() if not k.startswith("hd95")} == scores
    assert "hd95" not in light.per_image_records()[0]
