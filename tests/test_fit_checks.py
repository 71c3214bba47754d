"""tmca_hf.fit_checks: the model's two checks in words, by value on masks drawn by hand."""

import numpy as np
import pytest

from tmca_hf.fit_checks import image_fit_note, lesion_sides, report_fit_note, report_may_not_fit


LEFT_REPORT = "unilateral pulmonary infection, one infected area, lower left lung."
CONSISTENCY_RECORD = {"split": "validation", "num_images": 1429, "auroc_a": 0.9312, "auroc_b": 0.8411}
OOD_RECORD = {"in_distribution": {"split": "validation", "images": 1429, "flagged_share": 0.0063},
              "kvasir_seg_validation": {"images": 100, "auroc": 0.9991}, "uniform_noise": {"images": 64, "auroc": 1.0}}


def lesion_in_image_half(side: str, size: int = 64) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    columns = slice(6, 26) if side == "left" else slice(38, 58)
    mask[36:56, columns] = True
    return mask


def test_lesion_sides_are_named_in_the_asked_convention():
    assert lesion_sides(lesion_in_image_half("right"), "image") == ("right",)
    assert lesion_sides(lesion_in_image_half("right"), "patient") == ("left",)  # the image's right: the patient's left
    assert lesion_sides(lesion_in_image_half("left") | lesion_in_image_half("right"), "image") == ("left", "right")
    assert lesion_sides(np.zeros((64, 64), bool), "image") == ()


def test_a_report_that_names_the_other_side_is_explained():
    note = report_fit_note(LEFT_REPORT, 0.21, lesion_in_image_half("right"), "image", CONSISTENCY_RECORD)
    assert note.startswith("The report may not fit this image (report-matching score 0.21, below 0.5): it names the "
                           "left lung, the lesion found without it is in the right lung.")
    assert "AUROC 0.93" in note and "AUROC 0.84" in note and "1,429 validation images" in note
    # Written as the patient's left, the same report names the image's right, where the lesion is: no side to blame.
    agreeing = report_fit_note(LEFT_REPORT, 0.21, lesion_in_image_half("right"), "patient")
    assert "check its findings and the side convention" in agreeing and "AUROC" not in agreeing
    assert report_fit_note(LEFT_REPORT, 0.72, lesion_in_image_half("right"), "image") is None
    assert report_fit_note(None, 0.1, None, "image") is None
    assert report_may_not_fit(0.49) and not report_may_not_fit(0.5) and not report_may_not_fit(None)


def test_an_image_unlike_the_training_images_is_said_so_with_what_was_measured():
    note = image_fit_note(41.26, 25.0, "chest X-rays", OOD_RECORD)
    assert note.startswith("This image does not look like the chest X-rays this model was trained on (image score 41.3, "
                           "above 25.0)")
    assert "AUROC 0.999 (kvasir seg validation), 1.000 (uniform noise)" in note and "0.6 % of the validation" in note
    assert image_fit_note(24.9, 25.0) is None and image_fit_note(None, 25.0) is None and image_fit_note(3.0, None) is None


@pytest.mark.parametrize("score", [0.0, 0.4999])
def test_the_note_gives_the_score_it_was_given(score):
    assert f"score {score:.2f}" in report_fit_note("a report", score, None, "image")
