"""Tests for tmca_hf.modeling.laterality_tmca (left/right conventions), tmca_hf.describer (reports from masks) and
`tmca-data describe`."""

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tmca_hf import data, describer, report_folders
from tmca_hf.describer import connected_components, describe_mask
from tmca_hf.modeling import laterality_tmca
from tmca_hf.modeling.imaging_tmca import threshold_mask
from tmca_hf.modeling.laterality_tmca import convert_laterality, swap_laterality
from tmca_hf.report_folders import parse_qata_report, report_agreement


REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLES = REPO_ROOT / "samples" / "qata_cov19"
SIZE = 224


def blocks(*boxes, size=SIZE, dtype=np.uint8):
    """A 0/255 mask with lesion in each (top, bottom, left, right) box, bounds inclusive."""
    mask = np.zeros((size, size), dtype)
    for top, bottom, left, right in boxes:
        mask[top : bottom + 1, left : right + 1] = 255 if dtype == np.uint8 else 1
    return mask


# ------------------------------------------------------------------------------------------------ left and right


@pytest.mark.parametrize(
    "report, swapped",
    [
        (
            "unilateral pulmonary infection, one infected area, lower left lung.",
            "unilateral pulmonary infection, one infected area, lower right lung.",
        ),
        (  # the left clause stays first, as in every QaTa-COV19 report
            "bilateral pulmonary infection, two infected areas, all left lung and lower right lung.",
            "bilateral pulmonary infection, two infected areas, lower left lung and all right lung.",
        ),
        (
            "bilateral pulmonary infection, three infected areas, upper lower left lung and middle right lung.",
            "bilateral pulmonary infection, three infected areas, middle left lung and upper lower right lung.",
        ),
        ("Opacity in the Left lower lobe; RIGHT lung clear.", "Opacity in the Right lower lobe; LEFT lung clear."),
        ("left-sided effusion, leftover fluid, bilateral", "right-sided effusion, leftover fluid, bilateral"),
        ("infection of the left and right lungs", "infection of the left and right lungs"),
        ("left and left", "right and right"),
        ("no finding", "no finding"),
    ],
)
def test_swap_laterality_known_values(report, swapped):
    assert swap_laterality(report) == swapped
    assert swap_laterality(swapped) == report


def test_swap_laterality_round_trips_on_clause_pairs_in_any_order():
    for report in (
        "lower right lung and all left lung",
        "Left: all left lung and lower right lung; right: upper right lung and middle left lung.",
        "upper LEFT LUNG and lower right lung",
    ):
        assert swap_laterality(swap_laterality(report)) == report
    assert swap_laterality("lower right lung and all left lung") == "all right lung and lower left lung"


def test_convert_laterality():
    report = "unilateral pulmonary infection, one infected area, lower left lung."
    assert convert_laterality(report, "image", "image") == report
    assert convert_laterality(report, "patient", "patient") == report
    assert convert_laterality(report, "patient") == swap_laterality(report)  # to the training data's ("image")
    with pytest.raises(ValueError, match="expected one of"):
        convert_laterality(report, "radiologist")
    with pytest.raises(TypeError):
        swap_laterality(None)


def test_laterality_module_ships_on_the_standard_library_alone():
    """The processor needs it in every saved model folder; the describer (scipy) stays in the toolkit."""
    import sys

    tree = ast.parse(Path(laterality_tmca.__file__).read_text(encoding="utf-8"))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "it imports nothing of the package"
            roots.add(node.module.split(".")[0])
    assert roots <= set(sys.stdlib_module_names)


# ------------------------------------------------------------------------------------------------ components


def test_connected_components_known_components():
    mask = blocks((10, 19, 10, 29), (50, 59, 50, 54), (100, 100, 100, 101))  # 200, 50 and 2 pixels
    components = connected_components(mask, min_area=1)
    assert [c.area for c in components] == [200, 50, 2]
    assert components[0].bbox == (10, 10, 19, 29)
    assert components[0].centroid == pytest.approx((14.5, 19.5))
    assert [c.area for c in connected_components(mask)] == [200, 50]  # 2 pixels < 1/5000 of 224 x 224: noise
    assert describer.default_min_area(224, 224) == 11  # ceil(224 * 224 / 5000)


def test_connected_components_connectivity_and_merging_shapes():
    diagonal = np.eye(6, dtype=bool)
    assert len(connected_components(diagonal, min_area=1)) == 1
    assert len(connected_components(diagonal, connectivity=4, min_area=1)) == 6
    u_shape = np.zeros((8, 9), bool)  # two arms that meet only in the last row
    u_shape[:, 1] = u_shape[:, 7] = True
    u_shape[7, 1:8] = True
    assert len(connected_components(u_shape, min_area=1)) == 1
    comb = np.zeros((6, 9), bool)  # one bar on top, three teeth below
    comb[0, :] = True
    comb[1:, ::4] = True
    assert [c.area for c in connected_components(comb, min_area=1)] == [9 + 3 * 5]


def test_connected_components_agree_with_scipy_on_random_masks():
    ndimage = pytest.importorskip("scipy.ndimage")
    generator = np.random.default_rng(0)
    for density in (0.1, 0.3, 0.5, 0.6):
        mask = generator.random((40, 53)) < density
        for connectivity, structure in ((8, np.ones((3, 3))), (4, None)):
            labels, count = ndimage.label(mask, structure=structure)
            expected = sorted(np.bincount(labels.ravel())[1:].tolist(), reverse=True)
            found = [c.area for c in connected_components(mask, connectivity=connectivity, min_area=1)]
            assert found == expected


def test_mask_types_give_the_same_report():
    mask = blocks((150, 190, 30, 80), (150, 190, 150, 200))
    expected = "bilateral pulmonary infection, two infected areas, lower left lung and lower right lung."
    for variant in (mask, mask > 0, (mask > 0).astype(np.uint8), torch.from_numpy(mask), Image.fromarray(mask),
                    Image.fromarray(mask).convert("RGB"), np.stack([mask] * 3, axis=-1)):  # fmt: skip
        assert describe_mask(variant) == expected


# ------------------------------------------------------------------------------------------------ chest X-ray reports


@pytest.mark.parametrize(
    "boxes, report",
    [
        (
            [(150, 190, 30, 80), (150, 190, 150, 200)],
            "bilateral pulmonary infection, two infected areas, lower left lung and lower right lung.",
        ),
        ([(140, 190, 30, 80)], "unilateral pulmonary infection, one infected area, lower left lung."),
        ([(140, 190, 140, 190)], "unilateral pulmonary infection, one infected area, lower right lung."),
        ([(70, 95, 30, 80)], "unilateral pulmonary infection, one infected area, middle left lung."),
        ([(80, 180, 30, 80)], "unilateral pulmonary infection, one infected area, middle lower left lung."),
        ([(20, 80, 30, 80)], "unilateral pulmonary infection, one infected area, upper left lung."),
        (
            [(20, 200, 20, 100), (20, 50, 130, 190), (150, 190, 130, 190)],  # a gap: two lesions in the right lung
            "bilateral pulmonary infection, three infected areas, all left lung and upper lower right lung.",
        ),
        (
            [(20, 200, 20, 200)],  # one lesion across the midline
            "bilateral pulmonary infection, one infected area, all left lung and all right lung.",
        ),
        (
            [(150, 190, 30, 80), (10, 11, 150, 150)],  # 2 pixels on the right: noise
            "unilateral pulmonary infection, one infected area, lower left lung.",
        ),
        (
            [(120, 150, 20, 40), (170, 200, 20, 40), (130, 190, 150, 190), (30, 40, 60, 70), (80, 82, 160, 170)],
            "bilateral pulmonary infection, five infected areas, upper lower left lung and middle lower right lung.",
        ),
        ([], "no pulmonary infection."),
    ],
)
def test_describe_chest_xray_known_masks(boxes, report):
    assert describe_mask(blocks(*boxes)) == report


def test_describe_convention_and_scale():
    mask = blocks((140, 190, 30, 80), (20, 60, 150, 200))
    image_side = "bilateral pulmonary infection, two infected areas, lower left lung and upper right lung."
    patient_side = "bilateral pulmonary infection, two infected areas, upper left lung and lower right lung."
    assert describe_mask(mask) == image_side  # the training data's convention by default
    assert describe_mask(mask, convention="patient") == patient_side
    assert describe_mask(np.fliplr(mask).copy(), convention="patient") == image_side
    big = np.kron(mask, np.ones((2, 2), np.uint8))  # the same picture at 448 x 448: thresholds are fractions
    assert describe_mask(big) == image_side
    with pytest.raises(ValueError, match="modality"):
        describe_mask(mask, modality="ct")


def test_qata_report_is_the_sentence_the_describer_writes():
    """The Space's report picker writes its reports with `qata_report`, the function `describe_mask` words its
    chest X-ray reports with: the same vocabulary, read back by `parse_qata_report`."""
    assert describer.qata_report({"left": "lower"}, 1) == (
        "unilateral pulmonary infection, one infected area, lower left lung."
    )
    assert describer.qata_report({"right": "lower", "left": "lower"}, 2) == (  # the left clause first, as in QaTa
        "bilateral pulmonary infection, two infected areas, lower left lung and lower right lung."
    )
    assert describer.qata_report({"right": "middle lower"}, 3) == (
        "unilateral pulmonary infection, three infected areas, middle lower right lung."
    )
    mask = blocks((20, 200, 20, 100), (20, 50, 130, 190), (150, 190, 130, 190))
    assert describe_mask(mask) == describer.qata_report({"left": "all", "right": "upper lower"}, 3)
    for zone in describer.CHEST_XRAY_ZONES:
        for sides in ({"left": zone}, {"right": zone}, {"left": zone, "right": zone}):
            for count in (1, 2, 6):
                parsed = parse_qata_report(describer.qata_report(sides, count))
                assert (parsed.count, parsed.zones) == (count, sides)
                assert parsed.laterality == ("bilateral" if len(sides) == 2 else "unilateral")
    for sides, count, message in (({}, 1, "left' and/or 'right"), ({"centre": "lower"}, 1, "left' and/or 'right"),
                                  ({"left": "bottom"}, 1, "unknown zone"), ({"left": "lower"}, 0, "at least 1"),
                                  ({"left": "lower"}, 1.5, "whole number")):
        with pytest.raises(ValueError, match=message):
            describer.qata_report(sides, count)


def test_describe_generic_known_masks():
    assert describe_mask(blocks((100, 120, 100, 120)), "generic") == "one small lesion, located in center of the image"
    two = blocks((10, 40, 10, 40), (120, 219, 120, 219))  # 961 px (2 %) top left, 10,000 px (20 %) bottom right
    assert describe_mask(two, "generic", target="polyp") == (
        "two small, medium polyps, located in bottom right, top left of the image"
    )
    assert describe_mask(blocks((0, 223, 0, 120)), "generic") == "one large lesion, located in left of the image"
    assert describe_mask(blocks(), "generic", target="polyp") == "no polyp"


def test_parse_qata_report():
    parsed = parse_qata_report("bilateral pulmonary infection, three infected areas, all left lung and upper lower "
                               "right lung.")  # fmt: skip
    assert (parsed.laterality, parsed.count, parsed.zones) == ("bilateral", 3, {"left": "all", "right": "upper lower"})
    assert parsed.laterality_key == "bilateral"
    assert parse_qata_report("unilateral pulmonary infection, one infected area, lower right lung.").laterality_key == (
        "unilateral right"
    )
    assert parse_qata_report("one small polyp") is None


def test_report_agreement_counts():
    generated = {"a": "unilateral pulmonary infection, one infected area, lower left lung.",
                 "b": "bilateral pulmonary infection, two infected areas, all left lung and lower right lung.",
                 "c": "unilateral pulmonary infection, one infected area, lower left lung."}  # fmt: skip
    reference = {"a": "unilateral pulmonary infection, one infected area, lower left lung.\n",
                 "b": "bilateral pulmonary infection, two infected areas, lower left lung and lower right lung.",
                 "c": "unilateral pulmonary infection, two infected areas, lower right lung."}  # fmt: skip
    agreement = report_agreement(generated, reference, {"a": 0.9, "b": 0.5, "c": 0.2})
    assert agreement["compared"] == 3
    assert agreement["counts"] == {"exact": 1, "laterality_and_count": 2, "laterality": 2, "count": 2, "zones": 1}
    assert agreement["left_lung_in_left_half"] == {"share": 1.0, "of": 1, "agree": 1}
    assert agreement["right_lung_in_right_half"] == {"share": 1.0, "of": 1, "agree": 1}


# ------------------------------------------------------------------------------------------------ tmca-data describe


def _files(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_cli_describe_writes_only_into_output_dir_and_refuses_to_overwrite(tmp_path, capsys):
    masks = tmp_path / "masks"
    masks.mkdir()
    Image.fromarray(blocks((140, 190, 30, 80))).save(masks / "mask_p1.png")
    Image.fromarray(blocks((150, 190, 30, 80), (150, 190, 150, 200))).save(masks / "p2.png")
    (masks / "notes.txt").write_text("not a mask")
    before = _files(masks)
    out = tmp_path / "out"

    assert data.main(["describe", str(masks), "--output_dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "2 masks described; 2 reports written" in printed and "do not replace a clinician's report" in printed
    assert sorted(_files(out)) == ["reports/p1.txt", "reports/p2.txt"]
    assert (out / "reports" / "p1.txt").read_text() == (
        "unilateral pulmonary infection, one infected area, lower left lung.\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["masks", "out"] and _files(masks) == before

    (out / "reports" / "p1.txt").write_text("a clinician's own words\n")
    assert data.main(["describe", str(masks), "--output_dir", str(out), "--convention", "patient"]) == 1
    assert "already exist" in capsys.readouterr().err
    assert (out / "reports" / "p1.txt").read_text() == "a clinician's own words\n"  # nothing written

    assert data.main(["describe", str(masks), "--output_dir", str(out), "--convention", "patient", "--overwrite"]) == 0
    assert (out / "reports" / "p1.txt").read_text() == (
        "unilateral pulmonary infection, one infected area, lower right lung.\n"
    )


def test_cli_describe_split_compare_and_errors(tmp_path, capsys):
    masks = tmp_path / "masks"
    masks.mkdir()
    for key, box in (("a", (140, 190, 30, 80)), ("b", (140, 190, 140, 190)), ("c", (20, 80, 30, 80))):
        Image.fromarray(blocks(box)).save(masks / f"{key}.png")
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["a", "b"], "val": ["c"]}))
    references = tmp_path / "references"
    references.mkdir()
    (references / "a.txt").write_text("unilateral pulmonary infection, one infected area, lower left lung.\n")
    (references / "b.txt").write_text("unilateral pulmonary infection, one infected area, middle right lung.\n")

    args = ["describe", str(masks), "--output_dir", str(tmp_path / "out"), "--split_file", str(split)]
    assert data.main(args + ["--split", "train", "--compare", str(references)]) == 0
    printed = capsys.readouterr().out
    assert sorted(_files(tmp_path / "out")) == ["reports/a.txt", "reports/b.txt"]
    assert "generated report equals the reference: 1/2 = 50.0%" in printed
    assert "laterality and count right: 2/2 = 100.0%" in printed
    assert "image's left half: 1/1 = 100.0%" in printed

    assert data.main(args) == 1  # --split_file without --split
    assert data.main(args + ["--split", "test"]) == 1
    assert "no list 'test'" in capsys.readouterr().err
    Image.fromarray(np.full((SIZE, SIZE), 128, np.uint8)).save(masks / "gray.png")  # not a mask
    assert data.main(["describe", str(masks), "--output_dir", str(tmp_path / "out2")]) == 1
    assert "gray.png" in capsys.readouterr().err and not (tmp_path / "out2").exists()


def test_cli_describe_help_says_it_does_not_replace_a_clinician(capsys):
    with pytest.raises(SystemExit):
        data.main(["describe", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "bootstraps text for new data" in text and "does not replace a clinician's report" in text


# ------------------------------------------------------------------------------------------------ real data


def test_describe_real_samples_laterality_and_count(tmp_path):
    """The 56 QaTa-COV19 sample masks against their LViT reports (image-side convention)."""
    result = report_folders.describe_folder(
        SAMPLES / "masks", tmp_path, compare_dir=SAMPLES / "reports", read_mask=threshold_mask
    )
    agreement = result.agreement
    assert agreement["compared"] == 56
    assert agreement["counts"]["count"] == 56
    assert agreement["counts"]["laterality_and_count"] >= 54  # 55 when written
    assert agreement["left_lung_in_left_half"]["share"] == 1.0  # "left lung" is the image's left
    assert agreement["right_lung_in_right_half"]["share"] == 1.0


def test_describe_real_train_split(shared_data, tmp_path):
    """QaTa-COV19 train (5,713 masks, about 10 s): the figures of the issue and of the closing note."""
    root = shared_data / "qata_cov19"
    ids = report_folders.read_split_ids(root / "split.json", "train")
    agreement = report_folders.describe_folder(
        root / "masks", tmp_path, ids=ids, compare_dir=root / "reports", read_mask=threshold_mask
    ).agreement
    assert agreement["compared"] == 5713
    assert agreement["left_lung_in_left_half"] == {"share": pytest.approx(517 / 520), "of": 520, "agree": 517}
    assert agreement["counts"]["count"] == 5713
    assert agreement["laterality_and_count"] >= 0.99
    assert agreement["exact"] >= 0.69
