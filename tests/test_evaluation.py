"""Tests for tmca_hf.evaluation: evaluate() in every text mode on a tiny in-memory split."""

import json
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch
from conftest import tiny_config, tiny_processor
from PIL import Image

from tmca_hf import TmcaForImageSegmentation, evaluation
from tmca_hf.data import FEATURES
from tmca_hf.evaluation import TEXT_MODES, derangement, evaluate


METRIC_KEYS = {
    "text_mode", "threshold", "available", "num_images", "dice_per_image", "iou_per_image", "dice_pooled",
    "iou_pooled", "hd95", "hd95_images", "hd95_excluded", "num_empty_targets", "num_empty_predictions",
    "empty_policy", "per_image",
}  # fmt: skip


def make_split(sizes, texts, masks=None) -> datasets.Dataset:
    """A split of random images (alternating gray and RGB) with 0/255 masks; default mask: a square in the corner."""
    rng = np.random.default_rng(0)
    images, mask_images = [], []
    for index, (height, width) in enumerate(sizes):
        shape = (height, width) if index % 2 else (height, width, 3)
        images.append(Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)))
        if masks is None:
            mask = np.zeros((height, width), dtype=np.uint8)
            mask[: height // 2, : width // 2] = 255
        else:
            mask = masks[index]
        mask_images.append(Image.fromarray(mask, mode="L"))
    data = {"image": images, "mask": mask_images, "text": texts, "id": [f"img{i}" for i in range(len(sizes))]}
    return datasets.Dataset.from_dict(data, features=FEATURES)


SIZES = [(40, 56), (64, 64), (30, 50), (48, 36), (33, 47)]
DISTINCT_REPORTS = [
    "left lower lung infection",
    "bilateral pulmonary infection, two infected areas",
    "right upper lung infection",
    "no visible infection",
    "small polyp in the lower left",
]


class RecordingProcessor:
    """Delegates to a real processor and records the text of every call."""

    def __init__(self, processor):
        self.processor = processor
        self.texts = []

    def __call__(self, images, text=None, **kwargs):
        self.texts.append(text)
        return self.processor(images=images, text=text, **kwargs)

    def post_process_semantic_segmentation(self, *args, **kwargs):
        return self.processor.post_process_semantic_segmentation(*args, **kwargs)


@pytest.mark.parametrize("text_mode", TEXT_MODES)
def test_every_text_mode_returns_all_metrics_at_original_sizes(tiny_model_and_processor, text_mode):
    model, processor = tiny_model_and_processor
    split = make_split(SIZES, DISTINCT_REPORTS)
    result = evaluate(model, processor, split, batch_size=2, text_mode=text_mode)
    assert METRIC_KEYS <= set(result)
    assert result["available"] is True and result["text_mode"] == text_mode
    assert result["num_images"] == len(result["per_image"]) == 5
    assert [(r["height"], r["width"]) for r in result["per_image"]] == SIZES
    assert [r["id"] for r in result["per_image"]] == list(split["id"])
    for key in ("dice_per_image", "iou_per_image", "dice_pooled", "iou_pooled"):
        assert 0.0 <= result[key] <= 1.0
    assert result["num_empty_targets"] == 0
    assert ("identical_texts_after_shuffle" in result) == (text_mode == "shuffled")
    assert not model.training  # left in the mode it came in


def test_shuffled_mode_gives_every_image_another_report(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    recording = RecordingProcessor(processor)
    result = evaluate(model, recording, make_split(SIZES, DISTINCT_REPORTS), batch_size=2, text_mode="shuffled")
    given = [text for batch in recording.texts for text in batch]
    assert sorted(given) == sorted(DISTINCT_REPORTS)  # a permutation of the split's reports...
    assert all(own != new for own, new in zip(DISTINCT_REPORTS, given))  # ...where no image keeps its own
    assert result["identical_texts_after_shuffle"] == 0


def test_shuffled_mode_counts_repeated_reports(tiny_model_and_processor):
    # All four reports read the same (up to case and spaces): every image gets another image's report, which is
    # still identical to its own.
    model, processor = tiny_model_and_processor
    reports = ["Bilateral infection.", "bilateral  infection.", "BILATERAL infection.", "bilateral infection."]
    result = evaluate(model, processor, make_split(SIZES[:4], reports), text_mode="shuffled")
    assert result["identical_texts_after_shuffle"] == 4


def test_report_and_empty_modes_pass_the_right_text(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    recording = RecordingProcessor(processor)
    evaluate(model, recording, make_split(SIZES, DISTINCT_REPORTS), batch_size=3, text_mode="report")
    assert recording.texts == [DISTINCT_REPORTS[:3], DISTINCT_REPORTS[3:]]
    recording.texts.clear()
    evaluate(model, recording, make_split(SIZES, DISTINCT_REPORTS), batch_size=3, text_mode="empty")
    assert recording.texts == [None, None]


@pytest.mark.parametrize("size", [2, 3, 7, 50])
def test_derangement(size):
    for seed in range(5):
        order = derangement(size, seed)
        assert sorted(order) == list(range(size))
        assert all(index != source for index, source in enumerate(order))
        assert order == derangement(size, seed)


def test_derangement_needs_two_items():
    with pytest.raises(ValueError, match="at least 2"):
        derangement(1)


def test_empty_mode_with_a_model_that_needs_text():
    torch.manual_seed(0)
    model = TmcaForImageSegmentation(tiny_config(text_dropout=0.0)).eval()
    result = evaluate(model, tiny_processor(), make_split(SIZES[:2], DISTINCT_REPORTS[:2]), text_mode="empty")
    assert result["available"] is False
    assert "text_dropout" in result["error"] and "empty" in result["error"]
    assert "dice_per_image" not in result
    # the same model still evaluates with its reports
    assert evaluate(model, tiny_processor(), make_split(SIZES[:2], DISTINCT_REPORTS[:2]))["available"] is True


class AllLesionModel(torch.nn.Module):
    """A stand-in model that predicts lesion everywhere (logit 10, probability > 0.99) at the processor's size."""

    config = SimpleNamespace(supports_text_free_inference=True)

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, pixel_values, input_ids=None, attention_mask=None):
        batch, _, height, width = pixel_values.shape
        return SimpleNamespace(logits=torch.full((batch, 1, height, width), 10.0))


def test_scores_are_taken_at_the_original_size(tiny_model_and_processor):
    # Image 1 is 4x6 = 24 pixels with a 6-pixel mask; image 2 is 5x5 with a full 25-pixel mask. The model predicts
    # every pixel, which stays true after resizing its 64x64 output back to each original size:
    #   image 1: tp 6, fp 18 -> Dice 12 / 30 = 0.4, IoU 6 / 24 = 0.25;  image 2: Dice 1, IoU 1
    #   per-image: Dice (0.4 + 1) / 2 = 0.7, IoU (0.25 + 1) / 2 = 0.625
    #   pooled: tp 31, fp 18, fn 0 -> Dice 62 / 80 = 0.775, IoU 31 / 49
    _, processor = tiny_model_and_processor
    first = np.zeros((4, 6), dtype=np.uint8)
    first[0, :] = 255  # 6 pixels
    second = np.full((5, 5), 255, dtype=np.uint8)
    split = make_split([(4, 6), (5, 5)], DISTINCT_REPORTS[:2], masks=[first, second])
    result = evaluate(AllLesionModel(), processor, split)
    assert result["dice_per_image"] == pytest.approx(0.7)
    assert result["iou_per_image"] == pytest.approx(0.625)
    assert result["dice_pooled"] == pytest.approx(0.775)
    assert result["iou_pooled"] == pytest.approx(31 / 49)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"text_mode": "random"}, "text_mode must be one of"),
        ({"batch_size": 0}, "batch_size"),
        ({"threshold": 50}, "threshold"),
    ],
)
def test_bad_arguments(tiny_model_and_processor, kwargs, message):
    model, processor = tiny_model_and_processor
    with pytest.raises(ValueError, match=message):
        evaluate(model, processor, make_split(SIZES[:2], DISTINCT_REPORTS[:2]), **kwargs)


def test_bad_datasets(tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    split = make_split(SIZES[:2], DISTINCT_REPORTS[:2])
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['mask'\]"):
        evaluate(model, processor, split.remove_columns("mask"))
    evaluate(model, processor, split.remove_columns("text"), text_mode="empty")  # no text needed without text
    gray = np.full((40, 56), 128, dtype=np.uint8)
    with pytest.raises(ValueError, match="mask of image 'img0' is not binary"):
        evaluate(model, processor, make_split(SIZES[:2], DISTINCT_REPORTS[:2], masks=[gray, gray]))
    small = np.zeros((10, 10), dtype=np.uint8)
    with pytest.raises(ValueError, match="mask of image 'img0' is 10x10 but the image is 40x56"):
        evaluate(model, processor, make_split(SIZES[:2], DISTINCT_REPORTS[:2], masks=[small, small]))
    with pytest.raises(ValueError, match="needs at least 2"):
        evaluate(model, processor, split.select([0]), text_mode="shuffled")


def test_command_line_writes_json_and_never_overwrites(tiny_model_and_processor, tmp_path, monkeypatch, capsys):
    model, processor = tiny_model_and_processor
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    calls = []

    def fake_load_split(source, split, **kwargs):
        calls.append((source, split, kwargs))
        return make_split(SIZES, DISTINCT_REPORTS), []

    monkeypatch.setattr(evaluation, "load_split", fake_load_split)
    output = tmp_path / "out" / "results.json"
    argv = ["--model", str(tmp_path / "model"), "--dataset", "some/source", "--split", "val", "--prompt_key", "p1",
            "--max_samples", "3", "--batch_size", "2", "--output_json", str(output)]  # fmt: skip
    assert evaluation.main(argv) == 0
    assert calls == [("some/source", "val", {"prompt_key": "p1", "skip_invalid": False})]
    report = json.loads(output.read_text())
    assert set(report["results"]) == set(TEXT_MODES)
    assert all(METRIC_KEYS <= set(result) for result in report["results"].values())
    assert report["results"]["report"]["num_images"] == 3
    table = capsys.readouterr().out
    assert all(mode in table for mode in TEXT_MODES) and "Dice img" in table

    with pytest.raises(SystemExit):  # the file exists: refuse before loading anything
        evaluation.main(argv)
    assert len(calls) == 1 and "pass --overwrite" in capsys.readouterr().err
    evaluation.main(argv + ["--overwrite", "--text_modes", "empty"])
    assert set(json.loads(output.read_text())["results"]) == {"empty"}


def test_command_line_skip_invalid_and_one_line_errors(tiny_model_and_processor, tmp_path, capsys):
    """Issue 8 item 7: the --skip_invalid the error suggests exists and says what it skipped; errors are one line."""
    model, processor = tiny_model_and_processor
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    root = tmp_path / "flat"
    for folder in ("images", "masks", "reports"):
        (root / folder).mkdir(parents=True)
    for index, id_ in enumerate(["a", "b", "c"]):
        Image.fromarray(np.full((40, 48), 60 * index, np.uint8)).save(root / "images" / f"{id_}.png")
        mask = np.zeros((40, 48), np.uint8)
        mask[5:20, 5:30] = 255
        Image.fromarray(mask if id_ != "b" else np.full((40, 48), 128, np.uint8)).save(root / "masks" / f"{id_}.png")
        (root / "reports" / f"{id_}.txt").write_text(f"report {id_}")
    (root / "split.json").write_text(json.dumps({"val": ["a", "b", "c"]}))
    output = tmp_path / "results.json"
    argv = ["--model", str(tmp_path / "model"), "--dataset", str(root), "--output_json", str(output)]
    capsys.readouterr()  # the save_pretrained progress bar

    assert evaluation.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("tmca-evaluate: error: 1 invalid example(s)") and "--skip_invalid" in err
    assert "Traceback" not in err and not output.exists()

    assert evaluation.main([*argv, "--skip_invalid"]) == 0
    captured = capsys.readouterr()
    assert "skipped 1 invalid example(s) (--skip_invalid):\n  [validation] images/b.png: mask is not binary" in captured.err
    assert "1 invalid example(s) skipped" in captured.out
    report = json.loads(output.read_text())
    assert report["skipped"][0].startswith("[validation] images/b.png: mask is not binary")
    assert [record["id"] for record in report["results"]["report"]["per_image"]] == ["a", "c"]

    assert evaluation.main(["--model", str(tmp_path / "no-model"), "--dataset", str(root), "--skip_invalid"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith(f"tmca-evaluate: error: No TMCA model at {tmp_path / 'no-model'}")
    assert "Traceback" not in err


def test_the_table_says_when_the_report_barely_moves_the_scores():
    """Issue 15 item 10: a model that ignores its reports gets (nearly) identical rows; the table says what that means."""
    from tmca_hf.evaluation import format_table

    row = {"available": True, "num_images": 4, "dice_per_image": 0.2, "iou_per_image": 0.1, "dice_pooled": 0.3,
           "iou_pooled": 0.2, "hd95": 10.0, "hd95_images": 4, "hd95_excluded": 0}
    same = format_table([{**row, "text_mode": "report"}, {**row, "text_mode": "shuffled", "iou_pooled": 0.1999}])
    assert "differ by under 0.5 Dice points: this model barely uses its reports" in same
    moved = format_table([{**row, "text_mode": "report"}, {**row, "text_mode": "shuffled", "dice_per_image": 0.19}])
    assert "barely uses" not in moved
