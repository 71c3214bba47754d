"""benchmarks/report_steering.py: its figures by value on masks drawn by hand, and its report handling."""

import importlib.util

import numpy as np
import pytest
from conftest import REPO_ROOT


def load_benchmark():
    spec = importlib.util.spec_from_file_location("report_steering", REPO_ROOT / "benchmarks" / "report_steering.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def box(top, bottom, left, right, size=8):
    mask = np.zeros((size, size), bool)
    mask[top:bottom, left:right] = True
    return mask


def test_steering_counts_what_moves_and_what_stays():
    steering = load_benchmark().steering
    moves = (box(2, 6, 0, 3), box(2, 6, 5, 8))  # named left: all of it left, then all of it right
    stays = (box(2, 6, 0, 3), box(2, 6, 0, 3))  # the swap changes nothing
    goes = (box(2, 6, 0, 2), np.zeros((8, 8), bool))  # the mask vanishes under the swap
    wrong_side = (box(2, 6, 5, 8), box(2, 6, 5, 8))  # named left, found right
    own, swapped = zip(moves, stays, goes, wrong_side)
    result = steering(list(own), list(swapped), ["left"] * 4, axis=1, first_word="left")
    assert result["images"] == 4
    assert result["mostly_on_named_half"] == 0.75  # moves, stays, goes
    assert result["halves_when_swapped"] == 0.5  # moves, goes
    assert result["follow"] == 0.5
    assert result["images_with_both_masks_nonempty"] == 3  # the vanished mask has no share
    assert result["mean_share_shift"] == pytest.approx((1.0 + 0.0 + 0.0) / 3, abs=1e-4)  # 1 -> 0, 1 -> 1, 0 -> 0
    named_right = steering([box(2, 6, 5, 8)], [box(2, 6, 0, 3)], ["right"], axis=1, first_word="left")
    assert named_right["follow"] == 1.0 and named_right["mean_share_shift"] == pytest.approx(1.0)
    upper = steering([box(0, 3, 2, 6)], [box(5, 8, 2, 6)], ["upper"], axis=0, first_word="upper")
    assert upper["follow"] == 1.0 and upper["mean_share_shift"] == pytest.approx(1.0)


def test_reports_are_picked_and_swapped_by_their_words():
    benchmark = load_benchmark()
    reports = [
        "unilateral pulmonary infection, one infected area, lower left lung.",
        "bilateral pulmonary infection, two infected areas, lower left lung and lower right lung.",
        "unilateral pulmonary infection, two infected areas, middle lower right lung.",
        "unilateral pulmonary infection, one infected area, upper right lung.",
        "not a QaTa-style report",
    ]
    assert benchmark.cases(reports) == {"side": [(0, "left"), (2, "right"), (3, "right")], "zone": [(0, "lower"), (3, "upper")]}
    assert benchmark.swap_zone("Upper left lung and lower right lung") == "Lower left lung and upper right lung"
