"""Images and lesion masks for TMCA: reading a file, scaling pixels to [0, 1], and the binary-mask rule, each once.

The image processor, the dataset readers (`tmca_hf.data`), `tmca-evaluate`, `tmca-predict` and the Space all go
through this module, so one file reaches the model as one tensor whichever way it came in. It ships with every saved
model (the image processor imports it), so it imports only torch, numpy and PIL (what image processors need anyway)
and, lazily, pydicom for DICOM files.

Reading (`read_image`: a path, bytes or a PIL image):

- PNG / JPEG / BMP / TIFF / GIF / WebP via PIL, first frame, EXIF orientation applied to files (as `datasets` does).
  8-bit images stay uint8 (gray or RGB); palette, CMYK and alpha images become RGB (alpha dropped), 1-bit and
  gray+alpha images gray. 16-bit gray images keep their depth (uint16), 32-bit integer and float images too.
- DICOM (the `DICM` magic at byte 128, or a `.dcm`/`.dicom` name) via pydicom: rescale slope and intercept applied
  (float32), MONOCHROME1 inverted so that bright is dense, like MONOCHROME2; the first frame of a multi-frame file.
- The size is checked from the header, before any pixel is decoded (`max_pixels`, `min_side`). Unreadable, truncated,
  pixel-less files and pixels that are NaN or infinite raise `ImageReadError`.

Unit range (`to_unit_range`): uint8 / 255; bool as 0/1; floats already in [0, 1] kept; every other image (deeper
integers: 16-bit PNG, DICOM; floats outside [0, 1]) by its own minimum and maximum (a flat image becomes 0).

Masks: a mask's values are read by `mask_values` (palette masks by index, 1-bit as 0/1, colour masks by PIL's luma,
arrays with equal colour channels by one channel). The rule the image processor and `tmca-evaluate` apply is
`binary_mask`: values exactly 0/1 or 0/255 (or bool). Mask *files* as datasets bring them (JPEG-compressed, 0/230, 16-bit 0/65535, 0/1
label masks) are brought to that rule by `threshold_mask`, which the dataset readers use:

1. the values are put on the 0..255 scale: a mask whose maximum is at most 1 is multiplied by 255, one whose
   maximum exceeds 255 (16-bit, float) by 255 / its maximum;
2. it is refused as *not binary* when more than `MAX_GRAY_FRACTION` (2 %) of its pixels are mid-gray, in
   `GRAY_BAND` (32..223): soft probability maps, gray pictures given as masks, colour masks whose lesion colour is
   not near white. JPEG compression leaves at most 0.7 % of such pixels along the edges of Kvasir-SEG masks;
3. it is refused when it has non-zero pixels but none above the threshold (`MASK_THRESHOLD`, 127): thresholding
   would wipe it out (class-index maps such as 0/1/2, masks drawn in a dark gray);
4. lesion is `value > threshold`. An all-zero mask (no lesion) is valid.
"""

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError


# 6000 x 6000: above any chest X-ray (about 3000 x 3000 to 4300 x 3500), endoscopy frame or CT/MR slice, and small
# enough that decoding and resizing on a CPU Space stays within memory (about 150 MB per float channel).
MAX_IMAGE_PIXELS = 36_000_000
# The backbone's coarsest stride: below it there is nothing to segment.
MIN_IMAGE_SIDE = 32
DICOM_SUFFIXES = (".dcm", ".dicom")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp") + DICOM_SUFFIXES
MASK_THRESHOLD = 127
GRAY_BAND = (32, 223)
MAX_GRAY_FRACTION = 0.02
_EXIF_ORIENTATION = 0x0112

ImageSource = Union[str, os.PathLike, bytes, Image.Image]


class ImageReadError(ValueError):
    """An input that is not a usable image: unreadable, truncated, too large or small, without pixels, or not finite."""


@dataclass
class LoadedImage:
    """Decoded pixels, (H, W) or (H, W, 3) (uint8, uint16, int32 or float32), and notes about the decoding."""

    pixels: np.ndarray
    notes: list = field(default_factory=list)

    @property
    def size(self) -> tuple:
        """(height, width)."""
        return tuple(self.pixels.shape[:2])


# ------------------------------------------------------------------------------------------------------ reading


def _describe(source, name: Optional[str]) -> str:
    if name:
        return name
    if isinstance(source, bytes):
        return "the image"
    if isinstance(source, Image.Image):
        return "the PIL image"
    return os.fspath(source)


def _open_binary(source, label: str):
    if isinstance(source, bytes):
        return io.BytesIO(source)
    path = Path(source)
    if path.is_dir():
        raise ImageReadError(f"{label} is a folder; expected an image file.")
    try:
        return open(path, "rb")
    except OSError as error:
        raise ImageReadError(f"Cannot open {label}: {error.strerror or error}.") from None


def _is_dicom(stream, label: str) -> bool:
    header = stream.read(132)
    stream.seek(0)
    return header[128:132] == b"DICM" or label.lower().endswith(DICOM_SUFFIXES)


def _check_size(height: int, width: int, label: str, max_pixels: Optional[int], min_side: int) -> None:
    if max_pixels is not None and height * width > max_pixels:
        raise ImageReadError(
            f"{label} is {width}x{height} pixels ({height * width:,}); the limit is {max_pixels / 1e6:g} MP "
            f"({max_pixels:,} pixels). Downscale the image first (the model sees it at a few hundred pixels anyway)."
        )
    if min(height, width) < min_side:
        raise ImageReadError(f"{label} is {width}x{height} pixels; expected at least {min_side} pixels on each side.")


def check_finite(pixels, label: str) -> None:
    """Refuse NaN or infinite pixel values (float TIFF, DICOM, arrays), naming the input."""
    values = torch.as_tensor(pixels)
    if not values.is_floating_point():
        return
    bad = int((~torch.isfinite(values)).sum())
    if bad:
        raise ImageReadError(
            f"{label} has {bad:,} NaN or infinite pixel value(s) of {values.numel():,}; expected finite numbers. "
            f"Replace them (e.g. with the image's minimum) before segmenting."
        )


def pil_pixels(image: Image.Image) -> np.ndarray:
    """A PIL image as gray or RGB pixels, deep gray images (16-bit, 32-bit integer, float) kept at their depth."""
    if image.mode in ("1", "LA", "La"):
        image = image.convert("L")
    elif image.mode in ("P", "PA"):
        image = image.convert("RGBA").convert("RGB")  # via RGBA: palette transparency is then dropped quietly
    elif image.mode.startswith("I;16"):
        return np.asarray(image).astype(np.uint16)
    elif image.mode not in ("L", "RGB", "I", "F"):
        image = image.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBA, RGBa, RGBX
    return np.array(image)  # a writable copy (np.asarray of a PIL image is read-only)


def _open_pil(stream, label: str, max_pixels: Optional[int], min_side: int) -> tuple:
    """A file's first frame as a loaded PIL image, EXIF orientation applied, and notes (frames)."""
    try:
        image = Image.open(stream)  # reads the header only
    except Image.DecompressionBombError as error:
        limit = f"; the limit is {max_pixels / 1e6:g} MP" if max_pixels is not None else ""
        raise ImageReadError(f"{label} is far too large to decode ({error}){limit}.") from None
    except UnidentifiedImageError:
        raise ImageReadError(
            f"{label} is not an image file: expected PNG, JPEG, BMP, TIFF, GIF, WebP or DICOM."
        ) from None
    _check_size(image.height, image.width, label, max_pixels, min_side)
    notes = []
    if getattr(image, "n_frames", 1) > 1:
        notes.append(f"{label} has {image.n_frames} frames; the first one is segmented.")
    try:
        image.load()
        if image.getexif().get(_EXIF_ORIENTATION, 1) != 1:
            image = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageReadError(f"{label} is damaged or truncated and cannot be decoded ({error}).") from None
    return image, notes


def _read_dicom(stream, label: str, max_pixels: Optional[int], min_side: int) -> LoadedImage:
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError:
        raise ImageReadError(f"{label} is a DICOM file; reading DICOM needs pydicom (pip install pydicom).") from None
    try:
        dataset = pydicom.dcmread(stream, force=True)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as error:
        raise ImageReadError(f"{label} is not a readable DICOM file ({error}).") from None
    if not any(keyword in dataset for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        kind = dataset.get("Modality") or dataset.get("SOPClassUID", "unknown kind")
        raise ImageReadError(
            f"{label} is a DICOM file without pixel data ({kind}: e.g. a report, a DICOMDIR or a header-only file); "
            f"expected a DICOM image."
        )
    _check_size(int(dataset.get("Rows", 0) or 0), int(dataset.get("Columns", 0) or 0), label, max_pixels, min_side)
    try:
        pixels = dataset.pixel_array
    except Exception as error:  # pydicom raises several types: missing decoders, bad lengths, unknown syntaxes
        raise ImageReadError(f"{label}: the DICOM pixel data cannot be decoded ({error}).") from None
    notes = []
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        pixels = pixels[0]
        notes.append(f"{label} has {frames} frames; the first one is segmented.")
    if pixels.ndim == 2:
        slope = float(dataset.get("RescaleSlope", 1) or 1)
        intercept = float(dataset.get("RescaleIntercept", 0) or 0)
        pixels = pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)
        if dataset.get("PhotometricInterpretation", "") == "MONOCHROME1":
            pixels = pixels.max() + pixels.min() - pixels
    return LoadedImage(pixels, notes)


def open_image(
    source: Union[str, os.PathLike, bytes],
    name: Optional[str] = None,
    max_pixels: Optional[int] = MAX_IMAGE_PIXELS,
    min_side: int = MIN_IMAGE_SIDE,
) -> Image.Image:
    """An image file (path or bytes, not DICOM) as a loaded PIL image, size-checked, EXIF orientation applied. The
    dataset readers use it for masks, whose PIL mode (palette indices) `mask_values` reads."""
    label = _describe(source, name)
    with _open_binary(source, label) as stream:
        return _open_pil(stream, label, max_pixels, min_side)[0]


def read_image(
    source: ImageSource,
    name: Optional[str] = None,
    max_pixels: Optional[int] = MAX_IMAGE_PIXELS,
    min_side: int = MIN_IMAGE_SIDE,
) -> LoadedImage:
    """
    Decode an image for TMCA (see the module docstring), checking its size before decoding.

    Args:
        source: a path to the file, its bytes, or a PIL image (taken as it is: no EXIF orientation).
        name: how messages call the image (defaults to the path).
        max_pixels, min_side: size limits (`max_pixels=None`: no limit); larger or smaller images raise.

    Raises:
        ImageReadError: the file is missing, not an image, damaged, too large or small, a DICOM without pixels, or
            its pixels are not finite.
    """
    label = _describe(source, name)
    if isinstance(source, Image.Image):
        _check_size(source.height, source.width, label, max_pixels, min_side)
        loaded = LoadedImage(pil_pixels(source))
    else:
        with _open_binary(source, label) as stream:
            if _is_dicom(stream, label):
                loaded = _read_dicom(stream, label, max_pixels, min_side)
            else:
                image, notes = _open_pil(stream, label, max_pixels, min_side)
                loaded = LoadedImage(pil_pixels(image), notes)
    loaded.pixels = np.require(loaded.pixels, requirements=["C", "W"])  # for torch.from_numpy
    check_finite(loaded.pixels, label)
    return loaded


# ---------------------------------------------------------------------------------------------------- tensors


def channels_first(image: torch.Tensor, label: str) -> torch.Tensor:
    """(H, W), (H, W, C) or (C, H, W) with C in {1, 3, 4} -> (C, H, W)."""
    if image.ndim == 2:
        return image[None]
    if image.ndim == 3:
        if image.shape[0] in (1, 3, 4) and image.shape[-1] not in (1, 3, 4):
            return image
        if image.shape[-1] in (1, 3, 4):
            return image.permute(2, 0, 1)
    raise ValueError(
        f"{label} has shape {tuple(image.shape)}; expected (H, W), (H, W, C) or (C, H, W) with "
        f"C = 1 (gray), 3 (RGB) or 4 (RGBA)."
    )


def to_unit_range(image: torch.Tensor, label: str) -> torch.Tensor:
    """Float pixels in [0, 1]: uint8 / 255; bool as 0/1; floats in [0, 1] kept; others by their own min and max."""
    if image.dtype == torch.uint8:
        return image.float() / 255.0
    if image.dtype == torch.bool:
        return image.float()
    check_finite(image, label)
    is_float = image.dtype.is_floating_point
    image = image.float()
    if is_float and image.min() >= 0.0 and image.max() <= 1.0:
        return image
    low, high = image.min(), image.max()
    return (image - low) / (high - low) if high > low else torch.zeros_like(image)


def to_display_rgb(pixels: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 for display, scaled by `to_unit_range` (what the model sees), alpha dropped."""
    if pixels.dtype != np.uint8:
        unit = to_unit_range(torch.tensor(pixels), "the image")
        pixels = (unit * 255.0).round().to(torch.uint8).numpy()
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=-1)
    return pixels[..., :3]


# ------------------------------------------------------------------------------------------------------- masks


def _pil_mask_values(mask: Image.Image) -> np.ndarray:
    if mask.mode == "P":
        return np.asarray(mask)  # palette indices
    if mask.mode in ("PA", "LA", "La"):
        return np.asarray(mask.getchannel(0))  # palette indices or gray, alpha dropped
    if mask.mode == "1":
        return np.asarray(mask, dtype=np.uint8)
    if mask.mode.startswith("I;16"):
        return np.asarray(mask).astype(np.uint16)
    if mask.mode in ("L", "I", "F"):
        return np.asarray(mask)
    return np.asarray(mask.convert("L"))  # colour masks by luma: equal channels keep their value


def mask_values(mask, label: str) -> torch.Tensor:
    """A mask's values as an (H, W) tensor: from a PIL image, an array or tensor, a file path or bytes."""
    if isinstance(mask, (str, os.PathLike, bytes)):
        mask = open_image(mask, label, max_pixels=None, min_side=1)
    if isinstance(mask, Image.Image):
        return torch.tensor(_pil_mask_values(mask))
    if isinstance(mask, torch.Tensor):
        values = mask.detach().cpu()
    elif hasattr(mask, "__array__"):
        values = torch.tensor(np.asarray(mask))
    else:
        raise TypeError(f"{label} is a {type(mask).__name__}; expected a PIL image, a numpy array or a torch tensor.")
    values = channels_first(values, label)
    if values.shape[0] > 1 and not bool((values[1:3] == values[:1]).all()):
        raise ValueError(
            f"{label} has {values.shape[0]} channels that differ (a colour image); expected a single-channel mask."
        )
    return values[0]


def _shown_values(values: torch.Tensor) -> str:
    uniques = torch.unique(values)
    shown = ", ".join(f"{value:g}" for value in uniques[:8].tolist())
    return f"[{shown}{', ...' if len(uniques) > 8 else ''}]"


def binary_mask(mask, label: str) -> torch.Tensor:
    """THE mask rule: an (H, W) bool tensor from a mask with values exactly 0/1 or 0/255 (or bool); else ValueError."""
    values = mask_values(mask, label)
    if values.dtype == torch.bool:
        return values
    if bool(((values == 0) | (values == 1)).all()):
        return values == 1
    if bool(((values == 0) | (values == 255)).all()):
        return values == 255
    raise ValueError(
        f"{label} is not binary: it has values {_shown_values(values)}; expected a binary mask with values 0/1 or "
        f"0/255 (or bool). Threshold soft or JPEG-compressed masks first (tmca_hf.data.load_tmca_dataset reads such "
        f"files with mask_threshold={MASK_THRESHOLD})."
    )


def _levels_0_to_255(values: torch.Tensor, label: str) -> torch.Tensor:
    """Step 1 of the mask-file rule: uint8 levels, a maximum of at most 1 times 255, above 255 times 255 / maximum."""
    if values.dtype == torch.uint8:  # the common case (8-bit PNG/JPEG masks), kept in uint8
        return values * 255 if values.numel() and int(values.max()) <= 1 else values
    values = values.double()
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"{label} has NaN or infinite values; expected values near 0 and 255 (or 0/1)")
    peak = float(values.max()) if values.numel() else 0.0
    if peak <= 1.0:
        values = values * 255.0
    elif peak > 255.0:
        values = values * (255.0 / peak)
    return values.round().clamp(0, 255).to(torch.uint8)


def threshold_mask(mask, label: str = "mask", threshold: int = MASK_THRESHOLD) -> torch.Tensor:
    """A mask file's values brought to the mask rule (steps 1-4 of the module docstring): an (H, W) bool tensor."""
    levels = _levels_0_to_255(mask_values(mask, label), label)
    counts = torch.bincount(levels.flatten(), minlength=256)
    gray_fraction = int(counts[GRAY_BAND[0] : GRAY_BAND[1] + 1].sum()) / max(levels.numel(), 1)
    if gray_fraction > MAX_GRAY_FRACTION:
        raise ValueError(
            f"{label} is not binary: {gray_fraction:.1%} of its pixels are mid-gray ({GRAY_BAND[0]}..{GRAY_BAND[1]}), "
            f"more than {MAX_GRAY_FRACTION:.0%}; expected values near 0 and 255 (or 0/1)"
        )
    if int(counts[threshold + 1 :].sum()) == 0 and int(counts[0]) < levels.numel():
        raise ValueError(
            f"{label} values are at most {int(levels.max())}, none above mask_threshold={threshold}: thresholding "
            f"would leave it empty (a class-index map? expected 0/255 or 0/1)"
        )
    return levels > threshold
