"""TMCA model: outputs, the method's switches, gradients, losses with known values, and clear input errors."""

import math

import pytest
import torch
from conftest import TINY_IMAGE_SIZE, tiny_config

from tmca_hf import TmcaForImageSegmentation
from tmca_hf.modeling.modeling_tmca import (
    global_contrastive_loss,
    multi_positive_info_nce,
    target_sensitive_contrastive_loss,
)


SIZE = TINY_IMAGE_SIZE


def make_batch(batch_size=4, empty=(), same_report=True, seed=0):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.zeros(batch_size, SIZE, SIZE)
    for index in range(batch_size):
        if index not in empty:
            top, left = (int(v) for v in torch.randint(0, SIZE // 2, (2,), generator=generator))
            labels[index, top : top + SIZE // 3, left : left + SIZE // 4] = 1
    input_ids = torch.randint(1000, 2000, (batch_size, 16), generator=generator)
    if same_report:
        input_ids[1] = input_ids[0]
    return {
        "pixel_values": torch.randn(batch_size, 3, SIZE, SIZE, generator=generator),
        "input_ids": input_ids,
        "attention_mask": torch.ones(batch_size, 16, dtype=torch.long),
        "labels": labels,
    }


def build(**overrides):
    torch.manual_seed(0)
    return TmcaForImageSegmentation(tiny_config(**overrides))


def test_outputs_have_documented_shapes_and_are_finite():
    model = build()
    output = model(**make_batch())
    assert output.logits.shape == (4, 1, SIZE, SIZE)
    assert [tuple(a.shape) for a in output.alignment_maps] == [
        (4, 1, SIZE // s, SIZE // s) for s in model.config.alignment_levels
    ]
    for name in ("loss", "segmentation_loss", "alignment_loss", "contrastive_loss", "pixel_alignment_loss"):
        value = getattr(output, name)
        assert value.ndim == 0 and torch.isfinite(value), name
    expected = output.segmentation_loss + 0.5 * output.alignment_loss
    assert torch.allclose(output.loss, expected)
    assert all(((a >= 0) & (a <= 1)).all() for a in output.alignment_maps)
    assert torch.isfinite(output.logits).all()


def test_inference_needs_no_mask_and_returns_no_loss():
    model = build().eval()
    batch = make_batch()
    batch.pop("labels")
    output = model(**batch)
    assert output.loss is None and output.alignment_loss is None
    assert len(output.alignment_maps) == 3
    assert isinstance(model(**batch, return_dict=False), tuple)


def test_empty_alignment_levels_compute_no_alignment():
    model = build(alignment_levels=[], use_target_enhancement=False)
    output = model(**make_batch())
    assert len(model.alignment_levels) == 0 and len(model.target_enhancements) == 0
    assert output.alignment_maps == ()
    assert output.alignment_loss is None and output.contrastive_loss is None
    assert torch.allclose(output.loss, output.segmentation_loss)


def test_tssd_off_uses_global_pooling_that_ignores_the_mask():
    """With TSSD the contrast depends on where the lesion is; global alignment pools the whole image."""
    batch = make_batch()
    moved = dict(batch, labels=batch["labels"].roll(shifts=SIZE // 2, dims=-1))
    for use_target_alignment, should_change in ((True, True), (False, False)):
        model = build(use_target_alignment=use_target_alignment, use_target_enhancement=False).eval()
        first = model(**batch).contrastive_loss
        second = model(**moved).contrastive_loss
        assert (not torch.allclose(first, second)) == should_change


def test_lte_off_means_no_gating_by_the_alignment_map():
    batch = make_batch()
    batch.pop("labels")
    for use_lte in (True, False):
        model = build(use_target_enhancement=use_lte).eval()
        before = model(**batch).logits
        with torch.no_grad():
            for level in model.alignment_levels.values():
                level.pixel_logit_bias.fill_(3.0)  # changes only the maps A_s
        after = model(**batch).logits
        assert (not torch.allclose(before, after)) == use_lte
        assert (len(model.target_enhancements) == 3) == use_lte


def test_use_text_off_is_an_image_only_model():
    model = build(use_text=False, alignment_levels=[], use_target_enhancement=False).eval()
    assert model.text_encoder is None
    assert not any(hasattr(stage, "cross_attention") for stage in model.decoder_stages)
    batch = make_batch()
    with_text = model(**batch).logits
    without_text = model(pixel_values=batch["pixel_values"], labels=batch["labels"]).logits
    assert torch.equal(with_text, without_text)


def test_the_report_changes_the_prediction():
    model = build().eval()
    batch = make_batch(same_report=False)
    batch.pop("labels")
    other = dict(batch, input_ids=batch["input_ids"].roll(1, dims=0))
    assert not torch.allclose(model(**batch).logits, model(**other).logits)


def test_gradients_reach_alignment_projections_and_decoder():
    model = build()
    model(**make_batch()).loss.backward()
    for stride, level in model.alignment_levels.items():
        assert level.pixel_projection.weight.grad.abs().sum() > 0, stride
        assert level.text_projection.weight.grad.abs().sum() > 0, stride
        assert level.logit_scale.grad is not None
    for stage in model.decoder_stages:
        assert stage.self_attention.in_proj_weight.grad.abs().sum() > 0
        assert stage.cross_attention.in_proj_weight.grad.abs().sum() > 0
        assert stage.fusion[0].weight.grad.abs().sum() > 0
    assert all(enhancement.gamma.grad is not None for enhancement in model.target_enhancements.values())
    assert model.segmentation_head.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.text_encoder.parameters()), "the frozen text encoder got gradients"


def test_unfrozen_text_encoder_trains():
    model = build(freeze_text_encoder=False)
    model(**make_batch()).loss.backward()
    assert model.text_encoder.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def _orthogonal_embeddings():
    """Two samples whose lesion embeddings v+ are e0, backgrounds v- are e1, and both reports u are e0."""
    pixel = torch.zeros(2, 2, 1, 2)  # (B, d=2, h=1, w=2): pixel 0 is lesion, pixel 1 background
    pixel[:, 0, 0, 0] = 1.0
    pixel[:, 1, 0, 1] = 1.0
    masks = torch.tensor([[1.0, 0.0]]).expand(2, 1, 1, 2)
    text = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    return pixel, masks, text


def test_identical_reports_are_positives_not_negatives():
    pixel, masks, text = _orthogonal_embeddings()
    everyone = torch.ones(2, dtype=torch.bool)
    scale = torch.tensor(1.0)
    same = torch.ones(2, 2, dtype=torch.bool)
    loss = target_sensitive_contrastive_loss(pixel, text, masks, same, everyone, scale)
    # image->text: logits [[1, 1], [1, 1]], both columns positive -> -log(1) = 0.
    # text->image: row [1, 1 | 0 (own background)], positives the two images -> -log(2e / (2e + 1)).
    expected = (0.0 + -math.log(2 * math.e / (2 * math.e + 1))) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # Had the same report been treated as a negative, the loss would be higher:
    distinct = torch.eye(2, dtype=torch.bool)
    wrong = target_sensitive_contrastive_loss(pixel, text, masks, distinct, everyone, scale)
    assert wrong.item() == pytest.approx((math.log(2) + -math.log(math.e / (2 * math.e + 1))) / 2, abs=1e-6)


def test_multi_positive_info_nce_known_values():
    logits = torch.tensor([[2.0, 0.0, 0.0]])
    one = multi_positive_info_nce(logits, torch.tensor([[True, False, False]]))
    two = multi_positive_info_nce(logits, torch.tensor([[True, True, False]]))
    denominator = math.e**2 + 2
    assert one.item() == pytest.approx(-math.log(math.e**2 / denominator), abs=1e-6)
    assert two.item() == pytest.approx(-math.log((math.e**2 + 1) / denominator), abs=1e-6)


def test_empty_mask_leaves_contrast_and_keeps_pixel_terms():
    pixel, masks, text = _orthogonal_embeddings()
    same = torch.eye(2, dtype=torch.bool)
    everyone = torch.ones(2, dtype=torch.bool)
    scale = torch.tensor(1.0)
    masks_one_empty = masks.clone()
    masks_one_empty[1] = 0
    with_empty = target_sensitive_contrastive_loss(pixel, text, masks_one_empty, same, everyone, scale)
    only_first = target_sensitive_contrastive_loss(pixel[:1], text[:1], masks[:1], same[:1, :1], everyone[:1], scale)
    assert with_empty.item() == pytest.approx(only_first.item(), abs=1e-6)

    model = build()
    output = model(**make_batch(empty=(0, 1, 2, 3)))
    assert output.contrastive_loss.item() == 0.0
    assert output.segmentation_loss.item() > 0 and output.pixel_alignment_loss.item() > 0


def test_global_contrast_counts_same_reports_as_positives():
    pixel, _, text = _orthogonal_embeddings()
    everyone = torch.ones(2, dtype=torch.bool)
    loss = global_contrastive_loss(pixel, text, torch.ones(2, 2, dtype=torch.bool), everyone, torch.tensor(1.0))
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_text_free_inference_with_text_dropout_and_refusal_without():
    batch = make_batch()
    images = batch["pixel_values"]
    trained_with_dropout = build(text_dropout=0.3).eval()
    text_free = trained_with_dropout(pixel_values=images).logits
    assert text_free.shape == (4, 1, SIZE, SIZE) and text_free.isfinite().all()
    with_report = trained_with_dropout(**{k: v for k, v in batch.items() if k != "labels"}).logits
    assert not torch.allclose(text_free, with_report), "the report must change the text-free prediction"
    with torch.no_grad():  # the learned null text is what guides a text-free prediction
        trained_with_dropout.null_text.add_(1.0)
    assert not torch.allclose(trained_with_dropout(pixel_values=images).logits, text_free)
    no_dropout = build().eval()
    with pytest.raises(ValueError, match="needs a report"):
        no_dropout(pixel_values=images)


def test_text_dropout_replaces_reports_during_training_only():
    model = build(text_dropout=0.999)
    batch = make_batch()
    model.train()
    text = model.encode_text(batch["input_ids"], batch["attention_mask"], 4, "cpu")
    assert not text.has_report.any()
    assert torch.allclose(text.vector, model.null_text.expand(4, -1))
    model.eval()
    assert model.encode_text(batch["input_ids"], batch["attention_mask"], 4, "cpu").has_report.all()


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda b: b.update(pixel_values=b["pixel_values"][:, :1]), "expected \\(batch, 3, height, width\\)"),
        (lambda b: b.update(pixel_values=b["pixel_values"][0]), "expected \\(batch, 3, height, width\\)"),
        (lambda b: b.update(pixel_values=b["pixel_values"][..., :60, :60], labels=b["labels"][..., :60, :60]), "multiples of 32"),
        (lambda b: b.update(labels=b["labels"][..., :32]), "one mask the size of each image"),
        (lambda b: b.update(labels=b["labels"] * 0.5), "binary masks"),
        (lambda b: b.update(input_ids=b["input_ids"][:2]), "input_ids has shape"),
    ],
)
def test_bad_model_inputs_give_clear_errors(change, message):
    model = build()
    batch = make_batch()
    change(batch)
    with pytest.raises(ValueError, match=message):
        model(**batch)


def test_config_rejects_inconsistent_switches():
    with pytest.raises(ValueError, match="alignment_levels=\\[\\]"):
        tiny_config(use_text=False)
    with pytest.raises(ValueError, match="use_target_enhancement"):
        tiny_config(alignment_levels=[])
    with pytest.raises(ValueError, match="strides among"):
        tiny_config(alignment_levels=[32])


def test_encoder_alignment_source_aligns_skip_features():
    model = build(alignment_source="encoder")
    output = model(**make_batch())
    assert [a.shape[-1] for a in output.alignment_maps] == [SIZE // s for s in (16, 8, 4)]
    output.loss.backward()
    assert model.alignment_levels["4"].pixel_projection.in_channels == 8
    assert model.alignment_levels["4"].pixel_projection.weight.grad.abs().sum() > 0
    with torch.no_grad():  # LTE on the stride-4 skip feature reaches the logits through the decoder
        before = model(**make_batch()).logits
        model.target_enhancements["4"].gamma.fill_(5.0)
        assert not torch.allclose(model(**make_batch()).logits, before)


def test_unknown_forward_arguments_are_errors():
    model = build()
    batch = make_batch()
    with pytest.raises(TypeError, match="label"):
        model(**{k: v for k, v in batch.items() if k != "labels"}, label=batch["labels"])


def test_level_and_pixel_weights_enter_the_loss_as_the_formula_says():
    """L = seg + alignment_weight * (sum_s w_s C_s + pixel_alignment_weight * sum_s w_s P_s), from one-level runs."""
    batch = make_batch()

    def terms(**overrides):
        with torch.no_grad():
            return build(**overrides).eval()(**batch)

    only_16, only_4 = terms(alignment_level_weights=[1, 0, 0]), terms(alignment_level_weights=[0, 0, 1])
    mixed = terms(alignment_level_weights=[2, 0, 0.5], pixel_alignment_weight=3.0, alignment_weight=0.25)
    torch.testing.assert_close(mixed.contrastive_loss, 2 * only_16.contrastive_loss + 0.5 * only_4.contrastive_loss)
    torch.testing.assert_close(mixed.pixel_alignment_loss, 2 * only_16.pixel_alignment_loss + 0.5 * only_4.pixel_alignment_loss)
    torch.testing.assert_close(mixed.alignment_loss, mixed.contrastive_loss + 3.0 * mixed.pixel_alignment_loss)
    torch.testing.assert_close(mixed.loss, mixed.segmentation_loss + 0.25 * mixed.alignment_loss)


def test_loss_on_a_multi_label_model_is_refused_clearly():
    model = build(num_labels=3)
    batch = make_batch()
    with pytest.raises(ValueError, match="binary lesion masks \\(num_labels=1\\)"):
        model(**batch)
    batch.pop("labels")
    assert model(**batch).logits.shape == (4, 3, SIZE, SIZE)


def test_the_processor_is_the_one_source_of_input_size_and_report_length():
    from tmca_hf import from_pretrained_encoders

    with pytest.raises(ValueError, match="multiple of 32"):
        from_pretrained_encoders(image_size=100)
    model, processor = from_pretrained_encoders(image_size=96, max_text_length=12, alignment_levels=[], use_target_enhancement=False)
    assert processor.image_processor.size == {"height": 96, "width": 96} and processor.max_text_length == 12
    assert not hasattr(model.config, "image_size") and not hasattr(model.config, "max_text_length")
