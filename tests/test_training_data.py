"""train.py's input path: splits decoded once by the processor, the batched zoom, and the text encoder run once."""

import pytest
import torch
from conftest import REPO_ROOT, tiny_config, tiny_processor

from tmca_hf import TmcaForImageSegmentation
from tmca_hf.data import load_tmca_dataset
from tmca_hf.training_data import BatchedRandomZoom, DecodedSplit


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
    torch.testing.assert_close(batch["pixel_values"], direct["pixel_values"], atol=1e-3, rtol=0)  # float16 storage
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


def test_cached_report_states_give_the_same_output_as_the_text_encoder(sample_split):
    torch.manual_seed(0)
    model = TmcaForImageSegmentation(tiny_config()).eval()
    decoded = DecodedSplit(sample_split, tiny_processor())
    batch = decoded.collate([0, 1, 2])
    without_cache = model(**batch)
    decoded.encode_reports(model.text_encoder)
    cached = decoded.collate([0, 1, 2])
    assert "text_hidden_states" in cached
    with_cache = model(**cached)
    torch.testing.assert_close(with_cache.logits, without_cache.logits)
    torch.testing.assert_close(with_cache.loss, without_cache.loss)
    with pytest.raises(ValueError, match="text_hidden_states has shape"):
        model(**{**cached, "text_hidden_states": cached["text_hidden_states"][:, :3]})
