"""The training input path: each split decoded once, the zoom as one batched op on the training device, and the frozen
text encoder run once per distinct report.

Decoding PNGs and zooming with PIL for every step kept a GPU mostly idle (the decoder trains at thousands of images per
second; PIL workers feed a few hundred). Here the processor decodes each split once into memory (`DecodedSplit`), a
batch is an index into those tensors, the light zoom of the method (section 6) runs on the batch where the model runs
(`BatchedRandomZoom`), and the reports, which repeat (153 distinct ones over 5,713 QaTa-COV19 training images), are
tokenised once and, while the text encoder is frozen, encoded once (`DecodedSplit.cache_report_states`).

For `Trainer` users and row-by-row pipelines, `TmcaSegmentationCollator` turns dataset rows into a model batch through
the processor, after the optional zoom of each row with PIL (`RandomZoom`).
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset


class BatchedRandomZoom:
    """
    The lineage's light zoom augmentation (docs/method.md section 6) for a batch of tensors on any device: for each image, a
    window of 1/s its height and width (s uniform in `scale`) at a uniform position is resized back to the full size,
    bilinear for the image and nearest for the mask, so the mask stays binary and aligned.

    The draws are a pure function of (seed, epoch, example index): a resumed run repeats an unbroken one whatever the
    order in which batches are fetched, and every process of a distributed run agrees.
    """

    def __init__(self, num_examples: int, seed: int, scale=(1.0, 1.2)):
        low, high = float(scale[0]), float(scale[1])
        if not 1.0 <= low <= high:
            raise ValueError(f"scale={scale} must satisfy 1.0 <= min <= max (a zoom in, never out).")
        self.num_examples, self.seed, self.scale, self.device = num_examples, seed, (low, high), torch.device("cpu")
        self.set_epoch(0)

    def set_epoch(self, epoch: int):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        draws = torch.rand(self.num_examples, 3, generator=generator)  # zoom, horizontal and vertical position
        self.draws = draws.to(self.device)

    def to(self, device):
        self.device = torch.device(device)
        self.draws = self.draws.to(self.device)
        return self

    def __call__(self, images: torch.Tensor, masks: torch.Tensor, indices: torch.Tensor):
        """images (B, C, H, W) float, masks (B, H, W) float {0, 1}, indices (B,) example indices -> zoomed pair."""
        draws = self.draws[indices].to(images.dtype)
        low, high = self.scale
        shrink = 1 / (low + (high - low) * draws[:, 0])  # window side / image side
        theta = torch.zeros(len(images), 2, 3, device=images.device, dtype=images.dtype)
        theta[:, 0, 0] = theta[:, 1, 1] = shrink
        theta[:, 0, 2] = (2 * draws[:, 1] - 1) * (1 - shrink)  # window centre, in [-1, 1] coordinates
        theta[:, 1, 2] = (2 * draws[:, 2] - 1) * (1 - shrink)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        images = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
        masks = F.grid_sample(masks[:, None], grid, mode="nearest", padding_mode="border", align_corners=False)[:, 0]
        return images, masks


class DecodedSplit(Dataset):
    """
    A dataset split decoded once by the model's processor and kept as tensors: `pixel_values` (N, C, H, W) float16
    (C = 1 when the processor gives three equal channels, as for gray X-rays; float16 holds 8-bit images after
    normalisation to within 1e-3), `labels` (N, H, W) uint8, and `report_ids` (N,) into `reports`, the split's distinct
    reports, tokenised once. Its items are example indices; `collate` turns a list of them into a model batch, zoomed
    when `augment` is set.

    Args:
        dataset: a split with `image`, `mask` and report columns (as `tmca_hf.data.load_tmca_dataset` gives).
        processor ([`TmcaProcessor`]): decodes, resizes and normalises the images and masks, tokenises the reports.
        text_column (`str`, defaults to "text"): the report column.
        augment ([`BatchedRandomZoom`], *optional*): applied to every batch `collate` builds.
        num_workers (`int`, defaults to 0): processes that decode the split (once).
    """

    def __init__(self, dataset, processor, text_column: str = "text", augment=None, num_workers: int = 0):
        missing = [name for name in ("image", "mask", text_column) if name not in dataset.column_names]
        if missing:
            raise KeyError(f"The dataset lacks the columns {missing} (it has {dataset.column_names}).")
        self.augment = augment
        texts = dataset[text_column]
        self.reports = list(dict.fromkeys(texts))
        position = {report: index for index, report in enumerate(self.reports)}
        self.report_ids = torch.tensor([position[text] for text in texts])
        tokens = processor.encode_reports(self.reports)
        self.report_input_ids, self.report_attention_mask = tokens["input_ids"], tokens["attention_mask"]
        self.report_hidden_states = None
        self.pixel_values, self.labels = self._decode(dataset.select_columns(["image", "mask"]), processor, num_workers)

    @staticmethod
    def _decode(dataset, processor, num_workers: int):
        def decode(rows):
            batch = processor.image_processor(
                [row["image"] for row in rows], segmentation_maps=[row["mask"] for row in rows]
            )
            return batch["pixel_values"].half(), batch["labels"].to(torch.uint8)

        chunks = list(DataLoader(dataset, batch_size=64, collate_fn=decode, num_workers=num_workers))
        pixel_values = torch.cat([chunk[0] for chunk in chunks])
        labels = torch.cat([chunk[1] for chunk in chunks])
        if bool((pixel_values == pixel_values[:, :1]).all()):
            pixel_values = pixel_values[:, :1].contiguous()  # gray: one channel stored, three given
        return pixel_values, labels

    def __len__(self) -> int:
        return len(self.report_ids)

    def __getitem__(self, index: int) -> int:
        return index

    def to(self, device):
        """Move the stored tensors to `device` (the training device), where batches are then gathered."""
        for name in ("pixel_values", "labels", "report_ids", "report_input_ids", "report_attention_mask"):
            setattr(self, name, getattr(self, name).to(device))
        if self.augment is not None:
            self.augment.to(device)
        return self

    @torch.no_grad()
    def cache_report_states(self, text_encoder, batch_size: int = 256):
        """Run the (frozen) text encoder once over the distinct reports; batches then carry its token states."""
        device = next(text_encoder.parameters()).device
        states = [
            text_encoder(
                input_ids=self.report_input_ids[start : start + batch_size].to(device),
                attention_mask=self.report_attention_mask[start : start + batch_size].to(device),
            ).last_hidden_state
            for start in range(0, len(self.reports), batch_size)
        ]
        self.report_hidden_states = torch.cat(states).to(self.report_ids.device)

    def set_epoch(self, epoch: int):
        if self.augment is not None:
            self.augment.set_epoch(epoch)

    def collate(self, indices: list) -> dict:
        index = torch.tensor(indices)
        if self.labels.is_cuda:  # an asynchronous copy: the host queues this batch while the device still works
            index = index.pin_memory().to(self.labels.device, non_blocking=True)
        pixel_values = self.pixel_values[index].float()
        labels = self.labels[index].float()
        if self.augment is not None:
            pixel_values, labels = self.augment(pixel_values, labels, index)
        reports = self.report_ids[index]
        batch = {
            "pixel_values": pixel_values.expand(-1, 3, -1, -1).contiguous(memory_format=torch.channels_last),
            "input_ids": self.report_input_ids[reports],
            "attention_mask": self.report_attention_mask[reports],
            "labels": labels,
        }
        if self.report_hidden_states is not None:
            batch["text_hidden_states"] = self.report_hidden_states[reports]
        return batch


# ------------------------------------------------------------------------------------------------ row by row (Trainer)


def _uniform(generator) -> float:
    if isinstance(generator, np.random.Generator):
        return float(generator.random())
    return float(torch.rand((), generator=generator))


class RandomZoom:
    """
    The lineage's light zoom augmentation (docs/method.md section 6), applied jointly to an image and its mask: a window of
    1/s the image's width and height (s uniform in `scale`) at a random position is resized back to the full size,
    bicubic for the image and nearest for the mask, so both stay aligned and the mask stays binary.

    Args:
        scale (`tuple[float, float]`, defaults to (1.0, 1.2)): zoom factor range; 1.0 keeps the whole image.
        p (`float`, defaults to 1.0): probability of zooming at all.
        generator: a `torch.Generator` or `numpy.random.Generator` for reproducible draws. The default (None) uses
            torch's global generator, which DataLoader seeds differently in each worker; a generator passed here
            is copied into every worker, which then repeat the same draws.
    """

    def __init__(self, scale=(1.0, 1.2), p: float = 1.0, generator=None):
        low, high = float(scale[0]), float(scale[1])
        if not 1.0 <= low <= high:
            raise ValueError(f"scale={scale} must satisfy 1.0 <= min <= max (a zoom in, never out).")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p={p} must lie in [0, 1].")
        if generator is not None and not isinstance(generator, (torch.Generator, np.random.Generator)):
            raise TypeError(
                f"generator must be a torch.Generator or numpy.random.Generator, got {type(generator).__name__}."
            )
        self.scale, self.p, self.generator = (low, high), p, generator

    def __call__(self, image: Image.Image, mask: Image.Image):
        if image.size != mask.size:
            raise ValueError(
                f"image is {image.size[0]}x{image.size[1]} but its mask is {mask.size[0]}x{mask.size[1]}."
            )
        if self.p < 1.0 and _uniform(self.generator) >= self.p:
            return image, mask
        zoom = self.scale[0] + (self.scale[1] - self.scale[0]) * _uniform(self.generator)
        width, height = image.size
        crop_width, crop_height = max(1, round(width / zoom)), max(1, round(height / zoom))
        left = math.floor(_uniform(self.generator) * (width - crop_width + 1))
        top = math.floor(_uniform(self.generator) * (height - crop_height + 1))
        box = (left, top, left + crop_width, top + crop_height)
        return (
            image.resize(image.size, Image.Resampling.BICUBIC, box=box),
            mask.resize(mask.size, Image.Resampling.NEAREST, box=box),
        )

    def __repr__(self) -> str:
        return f"RandomZoom(scale={self.scale}, p={self.p})"


class TmcaSegmentationCollator:
    """
    Turns dataset rows (dicts with PIL `image`, PIL `mask`, the report and `id`) into a model batch:
    `processor(images=..., text=..., segmentation_maps=..., return_tensors="pt")`, after the optional joint
    augmentation (e.g. [`RandomZoom`]). With `Trainer`, set `remove_unused_columns=False`, or the image/mask/text
    columns are dropped before they reach the collator.

    Args:
        processor ([`TmcaProcessor`]): prepares images, masks and reports.
        augment (callable, *optional*): `(image, mask) -> (image, mask)`, applied to each row (training only).
        text_column (`str`, defaults to "text"): the report column.
        return_ids (`bool`, defaults to False): also return `ids` (a list of strings; the model's forward does not
            take it, so pop it before calling the model).
    """

    def __init__(self, processor, augment=None, text_column: str = "text", return_ids: bool = False):
        self.processor, self.augment, self.text_column, self.return_ids = processor, augment, text_column, return_ids

    def __call__(self, rows: list):
        if not rows:
            raise ValueError("TmcaSegmentationCollator got an empty batch.")
        missing = [name for name in ("image", "mask", self.text_column) if name not in rows[0]]
        if missing:
            raise KeyError(
                f"Dataset rows lack {missing} (they have {sorted(rows[0])}); with Trainer set "
                f"remove_unused_columns=False, and pass text_column= when the reports are not in 'text'."
            )
        pairs = [(row["image"], row["mask"]) for row in rows]
        if self.augment is not None:
            pairs = [self.augment(image, mask) for image, mask in pairs]
        batch = self.processor(
            images=[image for image, _ in pairs],
            text=[row[self.text_column] for row in rows],
            segmentation_maps=[mask for _, mask in pairs],
            return_tensors="pt",
        )
        if self.return_ids:
            batch["ids"] = [row.get("id") for row in rows]
        return batch


__all__ = ["BatchedRandomZoom", "DecodedSplit", "RandomZoom", "TmcaSegmentationCollator"]
