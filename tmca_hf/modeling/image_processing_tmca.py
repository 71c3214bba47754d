"""Image processor for TMCA: images and lesion masks in, model-ready tensors out, and logits back to masks."""

import os

import torch
import torch.nn.functional as F
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.image_utils import is_pil_image, to_numpy_array

from .imaging_tmca import ImageReadError, binary_mask, channels_first, read_image, to_unit_range


IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def _to_tensor(image, index: int) -> torch.Tensor:
    """Any supported image input as a (H, W) or (H, W, C) / (C, H, W) tensor; files and PIL images through
    `imaging_tmca.read_image` (no size limits here: those are the applications' to set)."""
    if is_pil_image(image):
        return torch.from_numpy(read_image(image, name=f"image {index}", max_pixels=None, min_side=1).pixels)
    if isinstance(image, (str, os.PathLike, bytes)):
        where = "its bytes" if isinstance(image, bytes) else repr(os.fspath(image))
        try:
            pixels = read_image(image, name="the file", max_pixels=None, min_side=1).pixels
        except ImageReadError as error:
            raise ImageReadError(f"Cannot read image {index} from {where}: {error}") from None
        return torch.from_numpy(pixels)
    if isinstance(image, torch.Tensor):
        return image.detach().cpu()
    if hasattr(image, "__array__") and hasattr(image, "dtype"):
        return torch.tensor(to_numpy_array(image))
    raise TypeError(
        f"image {index} is a {type(image).__name__}; expected a PIL image, a numpy array, a torch tensor, "
        f"a path to an image file or its bytes."
    )


class TmcaImageProcessor(BaseImageProcessor):
    r"""
    Prepares images (and, for training, lesion masks) for [`TmcaForImageSegmentation`] and turns its logits back into
    masks at each image's original size.

    Gray images are repeated to 3 channels, alpha is dropped, palette and CMYK images are converted to RGB, and images
    deeper than 8 bits (16-bit PNG, DICOM pixel data) are scaled to [0, 1] by their own minimum and maximum. Images are
    resized (bilinear, antialiased) and normalised with the encoder's mean and std; masks are resized with nearest
    neighbour and returned as float {0, 1}.

    Args:
        size (`dict[str, int]`, *optional*, defaults to `{"height": 224, "width": 224}`):
            Size the images and masks are resized to.
        do_normalize (`bool`, *optional*, defaults to `True`):
            Whether to normalise with `image_mean` and `image_std`.
        image_mean (`list[float]`, *optional*, defaults to the ImageNet mean):
            Per-channel mean of the image encoder's training data (0.5 for the [-1, 1] EfficientNet-Lite inputs).
        image_std (`list[float]`, *optional*, defaults to the ImageNet std):
            Per-channel std of the image encoder's training data.
    """

    model_input_names = ["pixel_values"]

    def __init__(self, size=None, do_normalize=True, image_mean=None, image_std=None, **kwargs):
        super().__init__(**kwargs)
        self.size = dict(size) if size is not None else {"height": 224, "width": 224}
        self.do_normalize = do_normalize
        self.image_mean = list(image_mean) if image_mean is not None else IMAGENET_MEAN
        self.image_std = list(image_std) if image_std is not None else IMAGENET_STD

    def _prepare_image(self, image, index: int) -> torch.Tensor:
        image = channels_first(_to_tensor(image, index), f"image {index}")
        image = to_unit_range(image[:3], f"image {index}")
        if image.shape[0] == 1:
            image = image.expand(3, -1, -1)
        return image

    def _resize(self, tensor: torch.Tensor, mode: str) -> torch.Tensor:
        size = (self.size["height"], self.size["width"])
        if tuple(tensor.shape[-2:]) == size:
            return tensor
        if mode == "nearest":
            return F.interpolate(tensor[None], size=size, mode="nearest-exact")[0]
        return F.interpolate(tensor[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]

    def preprocess(self, images, segmentation_maps=None, return_tensors="pt", **kwargs) -> BatchFeature:
        """
        Args:
            images: one image or a list of images (PIL, numpy array, torch tensor, or path to an image file).
            segmentation_maps: optional binary masks (0/1 or 0/255), one per image, each the size of its image.

        Returns:
            `BatchFeature` with `pixel_values` (B, 3, H, W) and, with masks, `labels` (B, H, W) float in {0, 1}.
        """
        if return_tensors not in (None, "pt"):
            raise ValueError(f"return_tensors={return_tensors!r} is not supported; TMCA works with PyTorch ('pt').")
        images = list(images) if isinstance(images, (list, tuple)) else [images]
        if not images:
            raise ValueError("No images given: expected at least one image.")
        prepared = [self._prepare_image(image, index) for index, image in enumerate(images)]
        pixel_values = torch.stack([self._resize(image, "bilinear") for image in prepared])
        if self.do_normalize:
            mean = torch.tensor(self.image_mean).view(1, -1, 1, 1)
            std = torch.tensor(self.image_std).view(1, -1, 1, 1)
            pixel_values = (pixel_values - mean) / std
        data = {"pixel_values": pixel_values}
        if segmentation_maps is not None:
            data["labels"] = self._prepare_masks(segmentation_maps, prepared)
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _prepare_masks(self, segmentation_maps, prepared_images) -> torch.Tensor:
        masks = list(segmentation_maps) if isinstance(segmentation_maps, (list, tuple)) else [segmentation_maps]
        if len(masks) != len(prepared_images):
            raise ValueError(f"Got {len(masks)} segmentation maps for {len(prepared_images)} images; expected one each.")
        labels = []
        for index, (mask, image) in enumerate(zip(masks, prepared_images)):
            mask = binary_mask(mask, f"segmentation map {index}").float()[None]
            if mask.shape[-2:] != image.shape[-2:]:
                raise ValueError(
                    f"segmentation map {index} is {tuple(mask.shape[-2:])} (H, W) but its image is "
                    f"{tuple(image.shape[-2:])}; expected the mask to have its image's size."
                )
            labels.append(self._resize(mask, "nearest")[0])
        return torch.stack(labels)

    def post_process_semantic_segmentation(self, outputs, target_sizes=None, threshold: float = 0.5):
        """
        Turn model logits into one mask per image.

        Args:
            outputs: the model output (with `logits` of shape (B, num_labels, H, W)) or the logits themselves.
            target_sizes (`list[tuple[int, int]]`, *optional*): (height, width) of each original image; the masks are
                resized (bilinear on probabilities) to these sizes. Without it they keep the model's size.
            threshold (`float`, defaults to 0.5): probability above which a pixel is lesion (one-label models).

        Returns:
            `list[torch.Tensor]`: a (H, W) long tensor per image: {0, 1} for one label, the class index otherwise.
        """
        logits = outputs.logits if hasattr(outputs, "logits") else outputs
        if target_sizes is not None and len(target_sizes) != len(logits):
            raise ValueError(f"Got {len(target_sizes)} target sizes for a batch of {len(logits)} predictions.")
        masks = []
        for index, image_logits in enumerate(logits.detach().float()):
            scores = image_logits.sigmoid() if image_logits.shape[0] == 1 else image_logits.softmax(dim=0)
            if target_sizes is not None:
                size = tuple(int(side) for side in target_sizes[index])
                scores = F.interpolate(scores[None], size=size, mode="bilinear", align_corners=False)[0]
            masks.append((scores[0] > threshold).long() if scores.shape[0] == 1 else scores.argmax(dim=0))
        return masks


__all__ = ["TmcaImageProcessor"]
