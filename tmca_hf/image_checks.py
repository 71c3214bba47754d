"""Measuring what the model knows: the training images' statistics behind `outputs.ood_score`.

`fit_image_statistics` runs the frozen model's image encoder over a training split, stores the mean and a shrunk
inverse correlation of the pooled stride-32 features (standardised) in the model's `TmcaImageStatistics` buffers, and sets
`config.ood_threshold` to a high quantile of the training images' own scores, so that about `1 - quantile` of
images like them are flagged. `benchmarks/ood_auroc.py` fits and measures it.
"""

import torch

from .modeling.modeling_tmca import TmcaImageStatistics


@torch.inference_mode()
def pooled_features(model, processor, images, batch_size: int = 32) -> torch.Tensor:
    """(N, C) pooled stride-32 image-encoder features of `images` (anything the processor reads)."""
    device = next(model.parameters()).device
    pooled = []
    for start in range(0, len(images), batch_size):
        pixels = processor.image_processor(images[start : start + batch_size], return_tensors="pt")["pixel_values"]
        feature_maps = model.backbone(pixels.to(device)).feature_maps
        pooled.append(TmcaImageStatistics.pooled(feature_maps[-1]).cpu())
    return torch.cat(pooled)


def fit_image_statistics(model, processor, images, quantile: float = 0.995, shrinkage: float = 0.1,
                         batch_size: int = 32) -> dict:
    """
    Fit the model's image statistics on `images` (a training split's images) and set `config.ood_threshold`.

    Args:
        quantile: the share of the training images scoring at most the threshold.
        shrinkage: the correlation of the standardised features is shrunk towards the identity,
            `(1 - shrinkage) * R + shrinkage * I`, so that it can be inverted with fewer images than feature
            dimensions and does not overfit them.

    Returns:
        `{"images", "threshold", "quantile", "shrinkage"}`.
    """
    if not 0.5 <= quantile < 1:
        raise ValueError(f"quantile={quantile} must lie in [0.5, 1).")
    if not 0 < shrinkage <= 1:
        raise ValueError(f"shrinkage={shrinkage} must lie in (0, 1].")
    was_training = model.training
    model.eval()
    features = pooled_features(model, processor, images, batch_size).double()
    if len(features) < 2:
        raise ValueError(f"Got {len(features)} image(s); the statistics need at least 2.")
    mean, scale = features.mean(0), features.std(0).clamp(min=1e-6)
    correlation = torch.corrcoef(((features - mean) / scale).T)
    shrunk = (1 - shrinkage) * correlation + shrinkage * torch.eye(len(mean), dtype=correlation.dtype)
    statistics = model.image_statistics
    statistics.mean.copy_(mean.to(statistics.mean.dtype))
    statistics.scale.copy_(scale.to(statistics.scale.dtype))
    statistics.precision.copy_(torch.linalg.inv(shrunk).to(statistics.precision.dtype))
    device = statistics.mean.device
    scores = statistics(features.float()[:, :, None, None].to(device)).cpu()
    threshold = float(torch.quantile(scores.double(), quantile))
    model.config.ood_threshold = threshold
    model.train(was_training)
    return {"images": len(features), "threshold": threshold, "quantile": quantile, "shrinkage": shrinkage}


__all__ = ["fit_image_statistics", "pooled_features"]
