"""The training input path: each split decoded once, the zoom as one batched op on the training device, and the frozen
text encoder run once per distinct report.

Decoding PNGs and zooming with PIL for every step kept a GPU mostly idle (the decoder trains at thousands of images per
second; PIL workers feed a few hundred). Here the processor decodes each split once into memory (`DecodedSplit`), a
batch is an index into those tensors, the light zoom of the method (section 6) runs on the batch where the model runs
(`BatchedRandomZoom`) with what users' files differ by (`BatchedAppearance`: contrast, gamma, noise, JPEG), and the
reports, which repeat (153 distinct ones over 5,713 QaTa-COV19 training images), are
tokenised once and, while the text encoder is frozen, encoded once (`DecodedSplit.cache_report_states`).
`SideConditioning` adds pairs whose report names one side and whose target keeps only that side's lesion, so the
side a report names steers the mask.

For `Trainer` users and row-by-row pipelines, `TmcaSegmentationCollator` turns dataset rows into a model batch through
the processor, after the optional zoom of each row with PIL (`RandomZoom`).
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from .describer import describe_mask
from .modeling.laterality_tmca import swap_laterality
from .report_folders import parse_qata_report


class BatchedRandomZoom:
    """
    The lineage's light zoom augmentation (docs/method.md section 6) for a batch of tensors on any device: for each image, a
    window of 1/s its height and width (s uniform in `scale`) at a uniform position is resized back to the full size,
    bicubic for the image (as the per-row `RandomZoom` and PIL resampling do) and nearest for the mask, so the mask
    stays binary and aligned.

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
        images = F.grid_sample(images, grid, mode="bicubic", padding_mode="border", align_corners=False)
        masks = F.grid_sample(masks[:, None], grid, mode="nearest", padding_mode="border", align_corners=False)[:, 0]
        return images, masks


def _normalisation(image_mean, image_std) -> tuple:
    """The processor's normalisation as (1, C, 1, 1) float32 tensors (mean, std), to leave and re-enter it around
    unit-range steps (`BatchedAppearance`, `JpegStability`)."""
    return tuple(torch.tensor(values, dtype=torch.float32)[None, :, None, None] for values in (image_mean, image_std))


def _check_jpeg_quality(jpeg_quality):
    if not 1 <= jpeg_quality[0] <= jpeg_quality[1] <= 100:
        raise ValueError(f"jpeg_quality={jpeg_quality} must satisfy 1 <= min <= max <= 100.")


def _jpeg_luminance_table(quality: torch.Tensor) -> torch.Tensor:
    """The JPEG standard's luminance quantisation table (ITU-T T.81, Annex K) scaled as libjpeg scales it for
    `quality` (B,) in 1..100: (B, 8, 8)."""
    base = torch.tensor([
        [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55],
        [14, 13, 16, 24, 40, 57, 69, 56], [14, 17, 22, 29, 51, 87, 80, 62],
        [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
        [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99],
    ], dtype=quality.dtype, device=quality.device)
    scale = torch.where(quality < 50, 5000 / quality, 200 - 2 * quality)
    return ((base * scale[:, None, None] + 50) / 100).floor().clamp(min=1)


def _dct_matrix(size: int, device, dtype) -> torch.Tensor:
    """The orthonormal DCT-II matrix (size x size): coefficients = D @ block @ D.T."""
    k = torch.arange(size, device=device, dtype=dtype)
    matrix = torch.cos(math.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * size)) * math.sqrt(2 / size)
    matrix[0] /= math.sqrt(2)
    return matrix


def jpeg_like(images: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """
    JPEG's lossy step on a batch of unit-range images (B, C, H, W), H and W multiples of 8: each 8x8 block of each
    channel is DCT-transformed, quantised with the luminance table at `quality` (B,), and transformed back, on 8-bit
    levels. What a PNG loses when it is saved as a JPEG (blocking, ringing, lost fine detail), without leaving the
    device. Chroma subsampling is not modelled.
    """
    batch, channels, height, width = images.shape
    dct = _dct_matrix(8, images.device, images.dtype)
    table = _jpeg_luminance_table(quality.to(images.dtype))[:, None, None, None]  # (B, 1, 1, 1, 8, 8)
    blocks = (images * 255 - 128).reshape(batch, channels, height // 8, 8, width // 8, 8).transpose(3, 4)
    coefficients = dct @ blocks @ dct.T
    restored = dct.T @ ((coefficients / table).round() * table) @ dct
    restored = restored.transpose(3, 4).reshape(batch, channels, height, width)
    return ((restored + 128).round() / 255).clamp(0, 1)


class BatchedAppearance:
    """
    What differs between the files users bring and the training PNGs, drawn per image for a batch on any device:
    contrast and brightness (as another window or export would set them), a gamma, Gaussian noise of up to
    `max_noise` (unit range; 2/255 covers re-quantisation by a gray level or two), and JPEG compression at a quality
    in `jpeg_quality`. Each is applied with probability `p`, in that order (a JPEG is the last thing a file goes
    through). It works in unit range: `image_mean`/`image_std` are the processor's, to undo and redo its normalisation.

    Like [`BatchedRandomZoom`], every draw, the noise field included, is a pure function of (seed, epoch, example
    index), so a resumed run repeats an unbroken one and the batch an image comes in does not matter.
    """

    def __init__(
        self, num_examples: int, seed: int, image_mean, image_std, p: float = 0.5, contrast=(0.8, 1.25),
        brightness: float = 0.08, gamma=(0.8, 1.25), max_noise: float = 2 / 255, jpeg_quality=(50, 95),
    ):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p={p} must lie in [0, 1].")
        _check_jpeg_quality(jpeg_quality)
        self.mean, self.std = _normalisation(image_mean, image_std)
        self.num_examples, self.seed, self.p = num_examples, seed, p
        self.contrast, self.brightness, self.gamma = contrast, brightness, gamma
        self.max_noise, self.jpeg_quality = max_noise, jpeg_quality
        self.device = torch.device("cpu")
        self.set_epoch(0)

    def set_epoch(self, epoch: int):
        self.epoch = epoch
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch + 500_000)
        self.draws = torch.rand(self.num_examples, 9, generator=generator).to(self.device)  # 4 on/off, 5 amounts

    def to(self, device):
        self.device = torch.device(device)
        self.draws, self.mean, self.std = self.draws.to(self.device), self.mean.to(self.device), self.std.to(self.device)
        return self

    def _noise(self, shape, indices: torch.Tensor, dtype) -> torch.Tensor:
        """A unit normal field per image, seeded by (seed, epoch, index); `indices` on the host (no device read)."""
        fields = []
        for index in indices.cpu().tolist():
            generator = torch.Generator(self.device).manual_seed(
                (self.seed * 1_000_003 + self.epoch) * 10_000_019 + index
            )
            fields.append(torch.randn(shape, generator=generator, device=self.device, dtype=dtype))
        return torch.stack(fields)

    def __call__(self, images: torch.Tensor, masks: torch.Tensor, indices: torch.Tensor):
        """images (B, C, H, W) normalised as the processor does, masks (B, H, W), indices (B,) on the host ->
        augmented pair."""
        draws = self.draws[indices].to(images.dtype)
        on = draws[:, :4] < self.p
        amount = draws[:, 4:]

        def between(low_high, u):
            return (low_high[0] + (low_high[1] - low_high[0]) * u)[:, None, None, None]

        channels = images.shape[1]
        mean, std = self.mean[:, :channels], self.std[:, :channels]  # one stored channel: the three are equal
        unit = (images * std + mean).clamp(0, 1)
        contrast = torch.where(on[:, 0, None, None, None], between(self.contrast, amount[:, 0]), 1.0)
        shift = torch.where(on[:, 0, None, None, None], self.brightness * (2 * amount[:, 1] - 1)[:, None, None, None], 0.0)
        level = unit.mean((1, 2, 3), keepdim=True)
        unit = ((unit - level) * contrast + level + shift).clamp(0, 1)
        gamma = torch.where(on[:, 1, None, None, None], between(self.gamma, amount[:, 2]), 1.0)
        unit = unit.pow(gamma)
        # No branch on the draws: every image goes through each step (an off step changes nothing), so a batch on a
        # GPU never waits for the host to read a draw back.
        sigma = torch.where(on[:, 2], self.max_noise * amount[:, 3], 0.0)[:, None, None, None]
        unit = (unit + sigma * self._noise(images.shape[1:], indices, images.dtype)).clamp(0, 1)
        quality = (self.jpeg_quality[0] + (self.jpeg_quality[1] - self.jpeg_quality[0]) * amount[:, 4]).round()
        unit = torch.where(on[:, 3, None, None, None], jpeg_like(unit, quality), unit)
        return (unit - mean) / std, masks


class JpegStability:
    """
    Stability training (Zheng et al., CVPR 2016) against how an image was saved: the model also predicts a JPEG copy of
    each training batch (quality uniform in `jpeg_quality`, drawn from the global random state, which a checkpoint
    restores), and the per-pixel binary KL divergence of that prediction from the batch's own, averaged over pixels
    and weighted by `weight`, is added to the loss. Augmentation alone (`BatchedAppearance`) teaches that a JPEG is a
    chest X-ray too; this term asks for the *same* mask, which is what per-image Dice under re-saving measures
    (`benchmarks/robustness.py`). `train.py --jpeg_stability_weight` switches it on; the copy's forward replays the
    batch's random draws (text dropout, stochastic depth), so the two predictions differ only by the compression.
    """

    def __init__(self, weight: float, image_mean, image_std, jpeg_quality=(50, 95)):
        if weight <= 0:
            raise ValueError(f"weight={weight} must be positive (leave JpegStability out to switch the term off).")
        _check_jpeg_quality(jpeg_quality)
        self.mean, self.std = _normalisation(image_mean, image_std)
        self.weight, self.jpeg_quality = weight, jpeg_quality

    def view(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) pixels normalised as the processor does -> their JPEG copies, normalised the same way."""
        quality = torch.randint(self.jpeg_quality[0], self.jpeg_quality[1] + 1, (len(pixel_values),)).float()
        mean, std = self.mean.to(pixel_values.device), self.std.to(pixel_values.device)
        unit = (pixel_values.float() * std + mean).clamp(0, 1)
        compressed = jpeg_like(unit, quality.to(pixel_values.device))
        return ((compressed - mean) / std).to(pixel_values.dtype).contiguous(memory_format=torch.channels_last)

    def loss(self, logits: torch.Tensor, view_logits: torch.Tensor) -> torch.Tensor:
        """`weight` x the mean over pixels of KL(Bernoulli(sigmoid(logits)) || Bernoulli(sigmoid(view_logits)))."""
        logits, view_logits = logits.float(), view_logits.float()
        p = logits.sigmoid()
        divergence = p * (F.logsigmoid(logits) - F.logsigmoid(view_logits)) + (1 - p) * (
            F.logsigmoid(-logits) - F.logsigmoid(-view_logits)
        )
        return self.weight * divergence.mean()


HALVES = ("left", "right")  # the image's halves as the training reports name them: left is x < W / 2


def _one_half(mask: np.ndarray, side: str) -> np.ndarray:
    """The mask's lesion in one half of the image (the other half cleared)."""
    kept = np.zeros_like(mask)
    half = mask.shape[-1] // 2
    columns = slice(None, half) if side == "left" else slice(half, None)
    kept[:, columns] = mask[:, columns]
    return kept


def _names_one_side(report: str) -> str | None:
    """The side a unilateral QaTa-COV19-style report names, else None."""
    parsed = parse_qata_report(report)
    return parsed.sides[0] if parsed is not None and parsed.laterality == "unilateral" and len(parsed.sides) == 1 else None


class SideConditioning:
    """
    Report-conditioned targets: pairs whose report names one side and whose target keeps only the lesion on that
    side. The original pairs never contradict the image, so a model can ignore the words and segment every visible
    lesion; these pairs make the side a report names decide the mask. For each example, drawn per epoch:

    - an image with lesion on both halves becomes, with probability `one_side`, the report the describer
      ([`~tmca_hf.describer.describe_mask`]) writes for the lesion of one half (either, evenly), with that half's
      lesion as its target;
    - an image with a unilateral report becomes, with probability `swapped_side`, its report with left and right
      swapped ([`swap_laterality`]), with the lesion on the half it now names as its target (none, or what the
      annotators drew across the midline).

    The other examples, and the rest of the time these, keep their own pair, so the validation protocol still holds.
    Halves are the image's (left = x < W / 2), as the training reports name them. [`DecodedSplit`] applies it before
    its augmentations (the zoom moves target and image together) and tokenises and caches the reports it writes
    with the split's. Like [`BatchedRandomZoom`], the draws are a pure function of (seed, epoch, example index).
    """

    def __init__(self, seed: int, one_side: float = 0.0, swapped_side: float = 0.0):
        for name, value in (("one_side", one_side), ("swapped_side", swapped_side)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value} must lie in [0, 1] (the share of eligible examples changed per epoch).")
        self.seed, self.one_side, self.swapped_side, self.device = seed, one_side, swapped_side, torch.device("cpu")
        self.alternatives = self.probability = None

    def prepare(self, labels: torch.Tensor, reports: list, report_ids: torch.Tensor) -> list:
        """
        Find each example's one-side pairs. labels (N, H, W), `reports` the split's distinct reports, report_ids (N,)
        into them. Returns `reports` followed by the reports it writes; sets `alternatives` (N, 2), the report index
        of the left-only and the right-only pair (-1: none), and `probability` (N,), each example's chance per epoch.
        """
        reports = list(reports)
        position = {report: index for index, report in enumerate(reports)}

        def index_of(report: str) -> int:
            if report not in position:
                position[report] = len(reports)
                reports.append(report)
            return position[report]

        alternatives = torch.full((len(labels), 2), -1, dtype=torch.long)
        probability = torch.zeros(len(labels))
        for index, (mask, report_id) in enumerate(zip(labels.cpu().numpy(), report_ids.tolist())):
            described = [describe_mask(_one_half(mask, side)) for side in HALVES]
            if all(_names_one_side(report) == side for report, side in zip(described, HALVES)):
                alternatives[index] = torch.tensor([index_of(report) for report in described])
                probability[index] = self.one_side
            elif (named := _names_one_side(reports[report_id])) is not None:
                other = 1 - HALVES.index(named)
                alternatives[index, other] = index_of(swap_laterality(reports[report_id]))
                probability[index] = self.swapped_side
        self.alternatives, self.probability = alternatives.to(self.device), probability.to(self.device)
        self.set_epoch(0)
        return reports

    def set_epoch(self, epoch: int):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch + 900_000)
        self.draws = torch.rand(len(self.probability), 2, generator=generator).to(self.device)  # on/off, side

    def to(self, device):
        self.device = torch.device(device)
        if self.alternatives is not None:
            self.alternatives, self.probability, self.draws = (
                self.alternatives.to(self.device), self.probability.to(self.device), self.draws.to(self.device)
            )
        return self

    def __call__(self, labels: torch.Tensor, report_ids: torch.Tensor, indices: torch.Tensor):
        """labels (B, H, W), report_ids (B,), indices (B,) example indices -> the batch's targets and report ids."""
        draws, alternatives = self.draws[indices], self.alternatives[indices]
        both = (alternatives >= 0).all(1)
        side = torch.where(both, (draws[:, 1] >= 0.5).long(), (alternatives[:, 1] >= 0).long())  # 0 left, 1 right
        on = draws[:, 0] < self.probability[indices]
        columns = torch.arange(labels.shape[-1], device=labels.device)
        keep = torch.where(side[:, None] == 0, columns < labels.shape[-1] // 2, columns >= labels.shape[-1] // 2)
        labels = torch.where(on[:, None, None], labels * keep[:, None, :], labels)
        report_ids = torch.where(on, alternatives.gather(1, side[:, None])[:, 0], report_ids)
        return labels, report_ids


class DecodedSplit(Dataset):
    """
    A dataset split decoded once by the model's processor and kept as tensors: `pixel_values` (N, C, H, W) float32,
    exactly what the processor gives at inference (C = 1 when it gives three equal channels, as for gray X-rays),
    `labels` (N, H, W) uint8, and `report_ids` (N,) into `reports`, the split's distinct
    reports, tokenised once. Its items are example indices; `collate` turns a list of them into a model batch, zoomed
    when `augment` is set.

    Args:
        dataset: a split with `image`, `mask` and report columns (as `tmca_hf.data.load_tmca_dataset` gives).
        processor ([`TmcaProcessor`]): decodes, resizes and normalises the images and masks, tokenises the reports.
        text_column (`str`, defaults to "text"): the report column.
        augment (sequence of batch augmentations, *optional*): [`BatchedRandomZoom`], [`BatchedAppearance`], ...,
            applied in order to every batch `collate` builds.
        num_workers (`int`, defaults to 0): processes that decode the split (once).
        side_conditioning ([`SideConditioning`], *optional*): one-side report pairs, drawn before `augment`; the
            reports it writes join `reports`.
    """

    def __init__(
        self, dataset, processor, text_column: str = "text", augment=None, num_workers: int = 0, side_conditioning=None
    ):
        missing = [name for name in ("image", "mask", text_column) if name not in dataset.column_names]
        if missing:
            raise KeyError(f"The dataset lacks the columns {missing} (it has {dataset.column_names}).")
        self.augment = list(augment or [])
        self.side_conditioning = side_conditioning
        self.pixel_values, self.labels = self._decode(dataset.select_columns(["image", "mask"]), processor, num_workers)
        texts = dataset[text_column]
        self.reports = list(dict.fromkeys(texts))
        position = {report: index for index, report in enumerate(self.reports)}
        self.report_ids = torch.tensor([position[text] for text in texts])
        if side_conditioning is not None:
            self.reports = side_conditioning.prepare(self.labels, self.reports, self.report_ids)
        tokens = processor.encode_reports(self.reports)
        self.report_input_ids, self.report_attention_mask = tokens["input_ids"], tokens["attention_mask"]
        self.report_hidden_states = None

    @staticmethod
    def _decode(dataset, processor, num_workers: int):
        def decode(rows):
            batch = processor.image_processor(
                [row["image"] for row in rows], segmentation_maps=[row["mask"] for row in rows]
            )
            return batch["pixel_values"], batch["labels"].to(torch.uint8)

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
        for augmentation in self.augment:
            augmentation.to(device)
        if self.side_conditioning is not None:
            self.side_conditioning.to(device)
        return self

    def cache_report_states(self, model, batch_size: int = 256):
        """
        Encode the distinct reports once with `model.report_token_states` (the model's own text path, so the cache
        holds what its forward computes: eval mode, no dropout); batches then carry these token states.
        """
        device = next(model.text_encoder.parameters()).device
        states = [
            model.report_token_states(
                self.report_input_ids[start : start + batch_size].to(device),
                self.report_attention_mask[start : start + batch_size].to(device),
            )
            for start in range(0, len(self.reports), batch_size)
        ]
        self.report_hidden_states = torch.cat(states).to(self.report_ids.device)

    def set_epoch(self, epoch: int):
        for augmentation in self.augment:
            augmentation.set_epoch(epoch)
        if self.side_conditioning is not None:
            self.side_conditioning.set_epoch(epoch)

    def collate(self, indices: list) -> dict:
        host_index = index = torch.tensor(indices)
        if self.labels.is_cuda:  # an asynchronous copy: the host queues this batch while the device still works
            index = index.pin_memory().to(self.labels.device, non_blocking=True)
        pixel_values = self.pixel_values[index].float()
        labels = self.labels[index].float()
        reports = self.report_ids[index]
        if self.side_conditioning is not None:
            labels, reports = self.side_conditioning(labels, reports, host_index)
        for augmentation in self.augment:  # their draws are looked up by the host-side indices
            pixel_values, labels = augmentation(pixel_values, labels, host_index)
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


__all__ = [
    "BatchedAppearance", "BatchedRandomZoom", "DecodedSplit", "JpegStability", "RandomZoom", "SideConditioning",
    "TmcaSegmentationCollator",
]
