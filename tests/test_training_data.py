"""train.py's input path: splits decoded once by the processor, the batched zoom, and the text encoder run once."""

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, tiny_config, tiny_processor
from PIL import Image

from tmca_hf import TmcaForImageSegmentation
from tmca_hf.data import load_tmca_dataset
from tmca_hf.training_data import (
    BatchedAppearance,
    BatchedRandomZoom,
    DecodedSplit,
    JpegStability,
    RandomZoom,
    SideConditioning,
    TmcaSegmentationCollator,
    jpeg_like,
)


SAMPLES = REPO_ROOT / "samples" / "qata_cov19"


@pytest.fixture(scope="module")
def sample_split():
    return load_tmca_dataset(SAMPLES, splits=["train"])["train"].select(range(6))


@pytest.mark.parametrize("mean_std, channels", [(0.5, 1), (None, 3)], ids=["equal-channel-normalisation", "imagenet"])
def test_decoded_split_holds_what_the_processor_gives(sample_split, mean_std, channels):
    processor = tiny_processor()
    if mean_std is not None:  # as for EfficientNet-Lite: gray images stay equal in all three channels
        processor.image_processor.image_mean = processor.image_processor.image_std = [mean_std] * 3
    decoded = DecodedSplit(sample_split, processor)
    direct = processor(
        images=list(sample_split["image"]), text=list(sample_split["text"]), segmentation_maps=list(sample_split["mask"])
    )
    batch = decoded.collate(list(range(len(sample_split))))
    assert decoded.pixel_values.shape[1] == channels, "three equal channels are stored as one"
    assert torch.equal(batch["pixel_values"], direct["pixel_values"]), "training sees exactly what inference sees"
    assert torch.equal(batch["labels"], direct["labels"])
    assert torch.equal(batch["input_ids"], direct["input_ids"])
    assert torch.equal(batch["attention_mask"], direct["attention_mask"])
    assert len(decoded.reports) == len(set(sample_split["text"]))


def test_zoom_draws_depend_on_the_example_not_on_the_batch_it_comes_in():
    zoom = BatchedRandomZoom(num_examples=4, seed=3)
    images = torch.rand(4, 1, 32, 32)
    masks = (torch.rand(4, 32, 32) > 0.5).float()
    together = zoom(images, masks, torch.arange(4))
    alone = zoom(images[2:3], masks[2:3], torch.tensor([2]))
    torch.testing.assert_close(together[0][2:3], alone[0])
    assert torch.equal(together[1][2:3], alone[1])
    zoom.set_epoch(1)
    assert not torch.equal(zoom(images, masks, torch.arange(4))[0], together[0]), "a new epoch draws anew"


def test_zoom_keeps_the_mask_binary_and_on_the_image_and_scale_one_is_the_identity():
    image = torch.zeros(1, 1, 40, 40)
    image[..., 10:30, 12:28] = 1.0  # the lesion is the bright square, so image and mask must move together
    mask = image[:, 0].clone()
    zoomed_image, zoomed_mask = BatchedRandomZoom(1, seed=0, scale=(1.3, 1.3))(image, mask, torch.tensor([0]))
    assert set(zoomed_mask.unique().tolist()) <= {0.0, 1.0}
    assert zoomed_mask.sum() > mask.sum(), "zooming in enlarges the lesion"
    assert ((zoomed_image[:, 0] > 0.5).float() != zoomed_mask).float().mean() < 0.02
    same_image, same_mask = BatchedRandomZoom(1, seed=0, scale=(1.0, 1.0))(image, mask, torch.tensor([0]))
    torch.testing.assert_close(same_image, image)
    assert torch.equal(same_mask, mask)
    with pytest.raises(ValueError, match="zoom in, never out"):
        BatchedRandomZoom(1, seed=0, scale=(0.8, 1.0))


def test_jpeg_like_compression_matches_a_real_jpeg_of_the_same_quality():
    import io

    image = Image.open(next((SAMPLES / "images").glob("*.png"))).convert("L")
    pixels = np.asarray(image, np.float32) / 255
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=80)
    real = np.asarray(Image.open(buffer), np.float32) / 255
    ours = jpeg_like(torch.from_numpy(pixels)[None, None], torch.tensor([80.0]))[0, 0].numpy()
    real_loss, ours_loss = np.sqrt(((real - pixels) ** 2).mean()), np.sqrt(((ours - pixels) ** 2).mean())
    assert ours_loss == pytest.approx(real_loss, rel=0.05), "it loses what a JPEG at quality 80 loses"
    assert np.sqrt(((ours - real) ** 2).mean()) * 255 < 1.0, "and nearly the same pixels: under one gray level RMS"


def test_appearance_draws_depend_on_the_example_and_leave_the_mask_alone():
    appearance = BatchedAppearance(num_examples=4, seed=3, image_mean=[0.5] * 3, image_std=[0.5] * 3, p=1.0)
    images = torch.rand(4, 1, 32, 32) * 2 - 1  # normalised as EfficientNet-Lite's processor does
    masks = (torch.rand(4, 32, 32) > 0.5).float()
    together, kept = appearance(images, masks, torch.arange(4))
    alone, _ = appearance(images[2:3], masks[2:3], torch.tensor([2]))
    torch.testing.assert_close(together[2:3], alone)
    assert torch.equal(kept, masks)
    assert together.min() >= -1 and together.max() <= 1 and not torch.allclose(together, images)
    appearance.set_epoch(1)
    assert not torch.equal(appearance(images, masks, torch.arange(4))[0], together), "a new epoch draws anew"
    off = BatchedAppearance(4, 3, [0.5] * 3, [0.5] * 3, p=0.0)
    torch.testing.assert_close(off(images, masks, torch.arange(4))[0], images)
    with pytest.raises(ValueError, match="jpeg_quality"):
        BatchedAppearance(4, 3, [0.5] * 3, [0.5] * 3, jpeg_quality=(90, 200))


def test_jpeg_stability_loss_is_the_weighted_binary_kl_divergence_of_the_two_predictions():
    stability = JpegStability(2.0, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    logits = torch.tensor([[[[0.0, 2.0]]]])  # p = 0.5 and 0.8808
    view_logits = torch.tensor([[[[0.0, 0.0]]]])  # q = 0.5 and 0.5
    # KL(p || q) per pixel: 0 for the first; 0.8808 ln(0.8808 / 0.5) + 0.1192 ln(0.1192 / 0.5) = 0.32781 for the second
    assert stability.loss(logits, view_logits).item() == pytest.approx(2.0 * 0.32781 / 2, abs=1e-5)
    assert stability.loss(logits, logits).item() == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="positive"):
        JpegStability(0.0, [0.5] * 3, [0.5] * 3)


def test_jpeg_stability_view_is_the_batch_saved_as_a_jpeg_in_the_processors_normalisation():
    stability = JpegStability(1.0, image_mean=[0.5] * 3, image_std=[0.5] * 3, jpeg_quality=(80, 80))
    image = Image.open(next((SAMPLES / "images").glob("*.png"))).convert("L")
    unit = torch.from_numpy(np.asarray(image, np.float32) / 255)[None, None].expand(1, 3, -1, -1)
    view = stability.view(unit * 2 - 1)
    torch.testing.assert_close(view, jpeg_like(unit, torch.tensor([80.0])) * 2 - 1)
    assert view.shape == unit.shape and not torch.equal(view, unit * 2 - 1)


def test_cached_report_states_are_what_the_forward_computes_for_a_model_built_as_train_py_builds_it(sample_split):
    # train.py builds the model in Python (every submodule in train mode) and caches before any train()/eval() call:
    # the cache must hold the eval-mode states the model computes at inference, exactly.
    torch.manual_seed(0)
    model = TmcaForImageSegmentation(tiny_config())
    assert model.config.text_config.hidden_dropout_prob > 0, "without dropout this test could not see a train-mode cache"
    decoded = DecodedSplit(sample_split, tiny_processor())
    decoded.cache_report_states(model)
    model.eval()
    with torch.no_grad():
        clean = model.text_encoder(
            input_ids=decoded.report_input_ids, attention_mask=decoded.report_attention_mask
        ).last_hidden_state
    assert (decoded.report_hidden_states - clean).abs().max().item() == 0.0

    model.text_encoder.train()  # even an encoder put in train mode by hand: frozen means eval
    batch = decoded.collate([0, 1, 2])
    cached = {**batch, "text_hidden_states": batch["text_hidden_states"]}
    uncached = {k: v for k, v in batch.items() if k != "text_hidden_states"}
    with torch.no_grad():
        torch.testing.assert_close(model(**cached).logits, model(**uncached).logits, rtol=0, atol=0)
    with pytest.raises(ValueError, match="text_hidden_states has shape"):
        model(**{**cached, "text_hidden_states": cached["text_hidden_states"][:, :3]})


def test_a_frozen_text_encoder_is_in_eval_mode_from_construction_and_stays_there():
    model = TmcaForImageSegmentation(tiny_config())
    assert model.training and not model.text_encoder.training
    assert not model.train().text_encoder.training
    trainable = TmcaForImageSegmentation(tiny_config(freeze_text_encoder=False))
    assert trainable.text_encoder.training, "an encoder that trains keeps its dropout"


# ------------------------------------------------------------------------------------------------ row by row (Trainer)


def paired_example(size: int = 40):
    """An RGB image whose red channel is the mask, so alignment is visible after any geometric change."""
    mask = np.zeros((size, size), np.uint8)
    mask[5:17, 20:33] = 255
    image = np.stack([mask, np.full_like(mask, 90), np.full_like(mask, 30)], -1)
    return Image.fromarray(image), Image.fromarray(mask)


def two_sided_and_one_sided_masks(size=32):
    """Example 0: a lesion low in each half; example 1: one low in the image's left half; example 2: none."""
    labels = torch.zeros(3, size, size, dtype=torch.uint8)
    labels[0, 20:28, 3:10] = labels[0, 20:28, 22:29] = 1
    labels[1, 20:28, 3:10] = 1
    reports = [
        "bilateral pulmonary infection, two infected areas, lower left lung and lower right lung.",
        "unilateral pulmonary infection, one infected area, lower left lung.",
        "not a QaTa-style report",
    ]
    return labels, reports, torch.arange(3)


def test_side_conditioning_writes_one_side_reports_and_keeps_that_sides_lesion():
    labels, reports, report_ids = two_sided_and_one_sided_masks()
    conditioning = SideConditioning(seed=0, one_side=1.0, swapped_side=1.0)
    written = conditioning.prepare(labels, reports, report_ids)
    assert written[:3] == reports
    left_only, right_only = (written[i] for i in conditioning.alternatives[0].tolist())
    assert left_only == "unilateral pulmonary infection, one infected area, lower left lung." == reports[1]
    assert right_only == "unilateral pulmonary infection, one infected area, lower right lung."
    assert conditioning.alternatives[1].tolist() == [-1, written.index(right_only)], "the unilateral report, swapped"
    assert conditioning.alternatives[2].tolist() == [-1, -1] and conditioning.probability[2] == 0
    targets, ids = conditioning(labels.float(), report_ids, torch.arange(3))
    side = "left" if ids[0] == conditioning.alternatives[0, 0] else "right"
    kept = targets[0, :, :16] if side == "left" else targets[0, :, 16:]
    assert torch.equal(kept, labels[0, :, :16].float() if side == "left" else labels[0, :, 16:].float())
    assert targets[0].sum() == 7 * 8, "only the named side's lesion is the target"
    assert written[ids[1]] == right_only and targets[1].sum() == 0, "the swapped report names a side with no lesion"
    assert ids[2] == 2 and torch.equal(targets[2], labels[2].float())


def test_side_conditioning_draws_per_example_and_epoch_and_leaves_the_rest_alone():
    labels, reports, report_ids = two_sided_and_one_sided_masks()
    labels, report_ids = labels.repeat(40, 1, 1), report_ids.repeat(40)
    conditioning = SideConditioning(seed=1, one_side=0.5, swapped_side=0.0)
    conditioning.prepare(labels, reports, report_ids)
    indices = torch.arange(len(labels))
    targets, ids = conditioning(labels.float(), report_ids, indices)
    changed = ids != report_ids
    assert 10 <= int(changed.sum()) <= 30 and bool((indices[changed] % 3 == 0).all()), "only two-sided images, about half"
    assert torch.equal(targets[~changed], labels[~changed].float())
    alone = conditioning(labels[6:7].float(), report_ids[6:7], torch.tensor([6]))
    assert torch.equal(alone[0], targets[6:7]) and alone[1] == ids[6], "the draw belongs to the example, not the batch"
    conditioning.set_epoch(1)
    assert not torch.equal(conditioning(labels.float(), report_ids, indices)[1], ids), "a new epoch draws anew"
    with pytest.raises(ValueError, match=r"one_side=1.5 must lie in \[0, 1\]"):
        SideConditioning(seed=0, one_side=1.5)


def test_decoded_split_caches_the_reports_side_conditioning_writes(sample_split):
    processor = tiny_processor()
    model = TmcaForImageSegmentation(tiny_config(text_dropout=0.0))  # as train.py builds it: train mode
    decoded = DecodedSplit(sample_split, processor, side_conditioning=SideConditioning(seed=0, one_side=1.0, swapped_side=1.0))
    assert len(decoded.reports) > len(set(sample_split["text"])), "one-side reports join the split's"
    decoded.cache_report_states(model)
    batch = decoded.collate(list(range(len(sample_split))))
    assert sum(decoded.reports[i] not in sample_split["text"] for i in decoded.side_conditioning.alternatives.flatten()
               if i >= 0), "some examples get a report the split does not have"
    uncached = {k: v for k, v in batch.items() if k != "text_hidden_states"}
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, model(**uncached).logits, rtol=0, atol=0)


def test_random_zoom_keeps_image_and_mask_aligned():
    image, mask = paired_example()
    zoom = RandomZoom(scale=(1.2, 1.2), generator=torch.Generator().manual_seed(0))
    zoomed_image, zoomed_mask = zoom(image, mask)
    assert zoomed_image.size == image.size and zoomed_mask.size == mask.size and zoomed_mask.mode == "L"
    assert set(np.unique(np.asarray(zoomed_mask)).tolist()) <= {0, 255}
    assert not np.array_equal(np.asarray(zoomed_mask), np.asarray(mask))  # it did zoom
    red = np.asarray(zoomed_image)[..., 0] > 127
    assert (red == (np.asarray(zoomed_mask) > 127)).mean() > 0.98  # same window for both
    assert (np.asarray(zoomed_mask) > 0).sum() > (np.asarray(mask) > 0).sum()  # a zoom in enlarges the lesion


def test_random_zoom_is_reproducible_and_validates():
    image, mask = paired_example()
    first, second = (RandomZoom(scale=(1.1, 1.5), generator=torch.Generator().manual_seed(3)) for _ in range(2))
    draws = [[np.asarray(zoom(image, mask)[1]) for _ in range(3)] for zoom in (first, second)]
    assert all(np.array_equal(a, b) for a, b in zip(*draws))
    assert not all(np.array_equal(draws[0][0], other) for other in draws[0][1:])  # successive draws differ
    numpy_zoom = RandomZoom(generator=np.random.default_rng(5))
    assert numpy_zoom(image, mask)[1].size == mask.size
    identity = RandomZoom(scale=(1.0, 1.0))
    assert np.array_equal(np.asarray(identity(image, mask)[0]), np.asarray(image))
    with pytest.raises(ValueError, match="scale"):
        RandomZoom(scale=(0.8, 1.2))
    with pytest.raises(ValueError, match="image is 40x40 but its mask is 20x20"):
        identity(image, mask.resize((20, 20)))


def test_collator_builds_a_model_batch():
    from conftest import TINY_IMAGE_SIZE, tiny_processor

    dd = load_tmca_dataset(SAMPLES, splits=["validation"])
    rows = [dd["validation"][index] for index in range(3)]
    zoom = RandomZoom(generator=torch.Generator().manual_seed(0))
    collator = TmcaSegmentationCollator(tiny_processor(), augment=zoom, return_ids=True)
    batch = collator(rows)
    assert batch["pixel_values"].shape == (3, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    assert batch["labels"].shape == (3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    assert set(batch["labels"].unique().tolist()) <= {0.0, 1.0} and batch["labels"].sum() > 0
    assert batch["input_ids"].shape == (3, 16) and batch["ids"] == [row["id"] for row in rows]
    assert "ids" not in TmcaSegmentationCollator(tiny_processor())(rows)
    with pytest.raises(KeyError, match="remove_unused_columns=False"):
        TmcaSegmentationCollator(tiny_processor())([{"pixel_values": 0}])
