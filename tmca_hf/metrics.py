"""Binary segmentation metrics for TMCA, following the evaluation protocol of the method notes (section 8).

Two Dice/IoU protocols are reported side by side because published figures differ by about 6 Dice points
between them:

- per-image: Dice and IoU of every image, then the mean over images (LViT's protocol);
- pooled: one Dice and IoU from the true/false positive/negative pixel counts summed over the whole split
  (GuideDecoder's and SGSeg's code).

HD95 is the symmetric 95th-percentile Hausdorff distance between mask boundaries, in pixels, per image,
computed by MONAI, then averaged over the images where it is defined.

The counts come from `monai.metrics.get_confusion_matrix` and the scores from
`monai.metrics.compute_confusion_matrix_metric` ("f1 score" is Dice, "threat score" is IoU); MONAI leaves
undefined cases as NaN (and turns them into 0 when aggregating), so empty masks are resolved here explicitly,
as `EMPTY_MASK_POLICY` states.
"""

import math
import warnings
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from monai.metrics import compute_confusion_matrix_metric, compute_hausdorff_distance, get_confusion_matrix


EMPTY_MASK_POLICY = (
    "Dice and IoU of an image are 1 when prediction and target are both empty and 0 when exactly one of them is "
    "empty; pooled Dice and IoU are 1 only when every prediction and target of the split is empty. HD95 is "
    "undefined when the prediction or the target is empty: such images are left out of the HD95 mean and "
    "counted in hd95_excluded (never scored as 0)."
)

MaskBatch = Union[torch.Tensor, np.ndarray, Sequence[Union[torch.Tensor, np.ndarray]]]


def _as_mask_list(masks: MaskBatch, name: str) -> list[torch.Tensor]:
    """A (B, H, W) tensor/array or a sequence of (H, W) ones as a list of (H, W) float CPU tensors in {0, 1}."""
    if isinstance(masks, (torch.Tensor, np.ndarray)):
        if masks.ndim != 3:
            raise ValueError(
                f"`{name}` must have shape (batch, height, width), got shape {tuple(masks.shape)}"
                + (" (use masks[None] for a single image)" if masks.ndim == 2 else "")
                + (" (squeeze the channel dimension first)" if masks.ndim == 4 and masks.shape[1] == 1 else "")
            )
        masks = list(masks)
    elif not isinstance(masks, (list, tuple)):
        raise TypeError(
            f"`{name}` must be a torch.Tensor/np.ndarray of shape (batch, height, width) or a list of (height, width) "
            f"masks, got {type(masks).__name__}"
        )
    result = []
    for index, mask in enumerate(masks):
        if not isinstance(mask, (torch.Tensor, np.ndarray)):
            raise TypeError(f"`{name}[{index}]` must be a torch.Tensor or np.ndarray, got {type(mask).__name__}")
        mask = torch.as_tensor(mask).detach().cpu()
        if mask.ndim != 2:
            raise ValueError(f"`{name}[{index}]` must have shape (height, width), got shape {tuple(mask.shape)}")
        _check_binary(mask, f"{name}[{index}]")
        result.append(mask.float())
    return result


def _check_binary(masks: torch.Tensor, label: str) -> None:
    """Refuse masks that are not 0/1 (or bool), naming the first other value."""
    if masks.dtype != torch.bool and not bool(((masks == 0) | (masks == 1)).all()):
        bad_value = masks[(masks != 0) & (masks != 1)].flatten()[0].item()
        raise ValueError(
            f"`{label}` must be binary (values 0/1 or bool), found the value {bad_value:g}; "
            "threshold probabilities first (e.g. probabilities > 0.5)"
        )


def _score(metric_name: str, counts: torch.Tensor) -> float:
    """Dice ("f1 score") or IoU ("threat score") from [tp, fp, tn, fn] counts; both-empty (0/0) counts as 1."""
    value = compute_confusion_matrix_metric(metric_name, counts.double()).item()
    return 1.0 if math.isnan(value) else value


def hd95(prediction: torch.Tensor, target: torch.Tensor) -> Optional[float]:
    """Symmetric 95th-percentile Hausdorff distance in pixels between two binary (H, W) masks (MONAI).

    Returns None when either mask is empty: the distance is undefined then (MONAI would give NaN or inf).
    """
    if not prediction.any() or not target.any():
        return None
    with warnings.catch_warnings():
        # MONAI 1.5+ passes its own deprecated `always_return_as_numpy` argument internally.
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        distance = compute_hausdorff_distance(
            prediction[None, None], target[None, None], include_background=True, percentile=95
        )
    return distance.item()


def _same_size_batch(predictions, targets) -> bool:
    """Whether both are (B, H, W) tensors of one shape, which can be counted in one batched op."""
    return (
        isinstance(predictions, torch.Tensor)
        and isinstance(targets, torch.Tensor)
        and predictions.ndim == 3
        and predictions.shape == targets.shape
    )


def _counts_record(counts: torch.Tensor, height: int, width: int, image_id: Optional[str]) -> dict:
    """An image's record from its [tp, fp, tn, fn] counts: the counts, Dice and IoU (both-empty counts as 1)."""
    tp, fp, tn, fn = (int(count) for count in counts.tolist())
    return {
        "id": image_id,
        "height": height,
        "width": width,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "dice": _score("f1 score", counts),
        "iou": _score("threat score", counts),
    }


def _hd95_status(prediction_pixels: int, target_pixels: int) -> str:
    if prediction_pixels and target_pixels:
        return "ok"
    if not prediction_pixels and not target_pixels:
        return "both_empty"
    return "target_empty" if not target_pixels else "prediction_empty"


class SegmentationMetrics:
    """Accumulates binary segmentation metrics over a split: per-image and pooled Dice/IoU, and HD95 in pixels.

    `update` takes binary masks (already thresholded, e.g. at probability 0.5) on any device: a (B, H, W) tensor
    or array, or a list of (H, W) masks when images differ in size (e.g. at their original sizes). Batches may
    differ in size. With Accelerate, pass the tensors returned by `accelerator.gather_for_metrics` and call
    `compute` where they were gathered.

    Example:
        >>> metrics = SegmentationMetrics()
        >>> metrics.update(logits.sigmoid()[:, 0] > 0.5, labels)
        >>> metrics.compute()["dice_per_image"]

    Args:
        with_hd95 (`bool`, defaults to True): also compute HD95 (MONAI, about 30 ms per 224x224 image on CPU). Off,
            the records and `compute()` carry Dice/IoU only (e.g. for per-epoch model selection).
    """

    def __init__(self, with_hd95: bool = True):
        self.with_hd95 = with_hd95
        self._finished: list[dict[str, Any]] = []
        self._pending: list[tuple] = []  # (counts (B, 4) on the masks' device, ids, height, width) of same-size batches

    def __len__(self) -> int:
        return len(self._finished) + sum(len(counts) for counts, *_ in self._pending)

    def reset(self) -> None:
        self._finished, self._pending = [], []

    @property
    def _records(self) -> list[dict[str, Any]]:
        """Per-image records; batches counted on their device are brought to the CPU here, once."""
        for counts, ids, height, width in self._pending:
            for index, image_counts in enumerate(counts.cpu()):
                self._finished.append(_counts_record(image_counts, height, width, ids[index] if ids else None))
        self._pending = []
        return self._finished

    def update(self, predictions: MaskBatch, targets: MaskBatch, ids: Optional[Sequence[str]] = None) -> None:
        """Adds a batch of binary prediction/target mask pairs (and optional image ids for `per_image_records`)."""
        if not self.with_hd95 and _same_size_batch(predictions, targets):
            self._update_on_device(predictions, targets, ids)
            return
        predictions = _as_mask_list(predictions, "predictions")
        targets = _as_mask_list(targets, "targets")
        if len(predictions) != len(targets):
            raise ValueError(f"got {len(predictions)} predictions but {len(targets)} targets")
        if ids is not None and len(ids) != len(targets):
            raise ValueError(f"got {len(ids)} ids for {len(targets)} masks")
        for index, (prediction, target) in enumerate(zip(predictions, targets)):
            if prediction.shape != target.shape:
                raise ValueError(
                    f"prediction and target {index} of the batch differ in shape: {tuple(prediction.shape)} vs "
                    f"{tuple(target.shape)} (compare masks at the same size, e.g. the original image size)"
                )
            self._records.append(self._image_record(prediction, target, ids[index] if ids is not None else None))

    def _update_on_device(self, predictions: torch.Tensor, targets: torch.Tensor, ids) -> None:
        """Dice/IoU only, for (B, H, W) tensors: counted in one batched op where the masks are (a GPU, say)."""
        _check_binary(predictions, "predictions")
        _check_binary(targets, "targets")
        if ids is not None and len(ids) != len(targets):
            raise ValueError(f"got {len(ids)} ids for {len(targets)} masks")
        counts = get_confusion_matrix(predictions[:, None].float(), targets[:, None].float())[:, 0]  # (B, 4)
        self._pending.append((counts, list(ids) if ids is not None else None, *targets.shape[-2:]))

    def _image_record(self, prediction: torch.Tensor, target: torch.Tensor, image_id: Optional[str]) -> dict:
        counts = get_confusion_matrix(prediction[None, None], target[None, None])[0, 0]  # [tp, fp, tn, fn]
        record = _counts_record(counts, target.shape[0], target.shape[1], image_id)
        if self.with_hd95:
            record.update(
                hd95=hd95(prediction, target), hd95_status=_hd95_status(record["tp"] + record["fp"], record["tp"] + record["fn"])
            )
        return record

    def per_image_records(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per image, in update order: id, size, pixel counts, dice, iou and hd95 (or None)."""
        return [dict(record) for record in self._records]

    def compute(self) -> dict[str, Any]:
        """Returns the split's metrics as a JSON-ready dict (Dice/IoU in [0, 1], HD95 in pixels or None)."""
        if not self._records:
            raise ValueError("SegmentationMetrics.compute() called before any update(): no images to score")
        num_images = len(self._records)
        total_counts = torch.tensor([[r["tp"], r["fp"], r["tn"], r["fn"]] for r in self._records]).sum(dim=0)
        results = {
            "num_images": num_images,
            "dice_per_image": sum(r["dice"] for r in self._records) / num_images,
            "iou_per_image": sum(r["iou"] for r in self._records) / num_images,
            "dice_pooled": _score("f1 score", total_counts),
            "iou_pooled": _score("threat score", total_counts),
            "num_empty_targets": sum(r["tp"] + r["fn"] == 0 for r in self._records),
            "num_empty_predictions": sum(r["tp"] + r["fp"] == 0 for r in self._records),
            "empty_policy": EMPTY_MASK_POLICY,
        }
        if self.with_hd95:
            hd95_values = [r["hd95"] for r in self._records if r["hd95"] is not None]
            results.update(
                hd95=sum(hd95_values) / len(hd95_values) if hd95_values else None,
                hd95_images=len(hd95_values),
                hd95_excluded=num_images - len(hd95_values),
            )
        return results
