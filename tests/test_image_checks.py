"""outputs.ood_score: the training images' statistics fitted by tmca_hf.image_checks, checked by value."""

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, tiny_config, tiny_processor
from PIL import Image

from tmca_hf import TmcaConfig, TmcaForImageSegmentation
from tmca_hf.image_checks import fit_image_statistics
from tmca_hf.modeling.modeling_tmca import TmcaImageStatistics


SAMPLES = REPO_ROOT / "samples" / "qata_cov19" / "images"


def test_the_score_is_the_scaled_mahalanobis_distance():
    statistics = TmcaImageStatistics(2)
    statistics.mean.copy_(torch.tensor([1.0, -1.0]))
    statistics.scale.copy_(torch.tensor([2.0, 0.5]))
    statistics.precision.copy_(torch.eye(2))
    features = torch.tensor([[3.0, -1.5], [1.0, -1.0]])[:, :, None, None].expand(-1, -1, 2, 2)  # pooled: the same
    # standardised: (1, -1) and (0, 0): squared distance 2 and 0, divided by 2 channels, square root
    torch.testing.assert_close(statistics(features), torch.tensor([1.0, 0.0]))


def test_fitted_statistics_flag_noise_and_photos_not_chest_x_rays(tmp_path):
    torch.manual_seed(0)
    model = TmcaForImageSegmentation(tiny_config()).eval()
    processor = tiny_processor()
    xrays = [Image.open(path) for path in sorted(SAMPLES.glob("*.png"))]
    inputs = processor(images=xrays[:2], text=["lower left lung."] * 2)
    assert model(**inputs).ood_score is None, "no statistics measured: no score"
    fitted = fit_image_statistics(model, processor, xrays[2:], quantile=0.9)
    assert fitted["images"] == len(xrays) - 2 and model.config.ood_threshold == pytest.approx(fitted["threshold"])
    rng = np.random.default_rng(0)
    noise = [Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)) for _ in range(2)]
    ramp = np.tile(np.linspace(0, 255, 64), (64, 1))
    photo = [Image.fromarray(np.stack([ramp, np.zeros_like(ramp), 255 - ramp], -1).astype(np.uint8))]  # red-blue
    with torch.no_grad():
        held_out = model(**processor(images=xrays[:2], text=["lower left lung."] * 2)).ood_score
        others = model(**processor(images=noise + photo, text=["lower left lung."] * 3)).ood_score
    assert held_out.shape == (2,) and others.shape == (3,)
    assert others.min() > held_out.max(), f"X-rays {held_out.tolist()} vs noise and a red ramp {others.tolist()}"
    model.save_pretrained(tmp_path)
    reloaded = TmcaForImageSegmentation.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**processor(images=noise, text=["a"] * 2)).ood_score, others[:2])


@pytest.mark.parametrize("value", [0, -1.0, float("nan"), "high", True])
def test_ood_threshold_must_be_a_positive_number(value):
    with pytest.raises(ValueError, match="ood_threshold must be None or a positive number"):
        TmcaConfig(ood_threshold=value)
