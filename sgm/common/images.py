"""Image handling shared by the pipelines, the datasets and the 3D step: reading, resizing,
compositing, conversions (background removal: :mod:`sgm.pipelines.background`).

Conventions: images on disk are 8-bit (16-bit inputs are scaled to 8 bits on reading); model
frames are float tensors in [-1, 1] laid out (3, H, W) or (T, 3, H, W); pixel arrays are uint8
numpy (H, W, 3) or (T, H, W, 3).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from .errors import UsageError

# A pixel whose R, G and B all exceed this is background (white) in the stage-2 masks.
WHITE_THRESHOLD = 220
# Input images must have sides in [MIN_IMAGE_SIDE, MAX_IMAGE_SIDE] pixels: smaller ones hold too
# little of the object for a 512 px model, larger ones would only cost memory (they are resized).
MIN_IMAGE_SIDE = 64
MAX_IMAGE_SIDE = 8192
# Pillow's modes of 16- and 32-bit integer greyscale (16-bit greyscale PNGs open as "I;16" or "I").
WIDE_GREY_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")
SIXTEEN_BIT_MAX = 65535


class InputImageError(UsageError):
    """The input image is missing, unreadable or unusable."""


def check_image_size(width: int, height: int, name: str = "the input image") -> None:
    """Refuse images with a side under :data:`MIN_IMAGE_SIDE` or over :data:`MAX_IMAGE_SIDE` pixels."""
    if min(width, height) < MIN_IMAGE_SIDE:
        raise InputImageError(f"{name} is too small ({width}x{height} px): each side must be at least "
                              f"{MIN_IMAGE_SIDE} px")
    if max(width, height) > MAX_IMAGE_SIDE:
        raise InputImageError(f"{name} is too large ({width}x{height} px): each side must be at most "
                              f"{MAX_IMAGE_SIDE} px")


def read_image(path: str | Path, name: str | None = None) -> Image.Image:
    """Open an image file fully (RGBA kept, palette/greyscale converted to RGB/RGBA).

    The size is checked (:func:`check_image_size`) from the header, before the pixels are decoded.
    ``name`` replaces the path in error messages (e.g. "the uploaded file").
    """
    path = Path(path)
    name = name or str(path)
    if not path.is_file():
        raise InputImageError(f"input image not found: {name}")
    try:
        with Image.open(path) as image:
            check_image_size(*image.size, name=name)
            image.load()
    except UnidentifiedImageError as err:
        raise InputImageError(f"cannot read {name} as an image: not a known image format "
                              "(use PNG, JPEG or WebP)") from err
    except (OSError, Image.DecompressionBombError) as err:
        raise InputImageError(f"cannot read {name} as an image ({err})") from err
    return standard_mode(image)


def wide_grey_to_8bit(image: Image.Image) -> Image.Image:
    """A 16-bit (or 32-bit integer) greyscale image as 8-bit "L", 0..65535 scaled to 0..255 (rounded,
    larger values clipped); a single transparent grey value (PNG ``tRNS``) gives "LA".

    Pillow's own conversion clips every value above 255 to white, which turns a 16-bit image into
    a two-level silhouette.
    """
    values = np.asarray(image).astype(np.int64)
    grey = Image.fromarray(np.clip(np.rint(values / (SIXTEEN_BIT_MAX / 255)), 0, 255).astype(np.uint8), "L")
    transparent = image.info.get("transparency")
    if not isinstance(transparent, int):
        return grey
    alpha = Image.fromarray(np.where(values == transparent, 0, 255).astype(np.uint8), "L")
    return Image.merge("LA", (grey, alpha))


def standard_mode(image: Image.Image) -> Image.Image:
    """``image`` as RGBA when it carries transparency (alpha, or a palette/greyscale transparent
    value), else as RGB; 16-bit greyscale keeps its grey levels (:func:`wide_grey_to_8bit`)."""
    if image.mode in WIDE_GREY_MODES:
        image = wide_grey_to_8bit(image)
    if image.mode in ("RGBA", "LA", "PA", "RGBa") or "transparency" in image.info:
        return image.convert("RGBA")
    return image.convert("RGB")


def check_not_transparent(rgba: Image.Image, name: str, removed_background: bool) -> None:
    """Refuse an RGBA image with alpha 0 everywhere: there is no object to turn into 3D.

    Raises:
        InputImageError: naming the image, and rembg when background removal emptied it.
    """
    if rgba.getchannel("A").getextrema()[1] > 0:
        return
    if removed_background:
        raise InputImageError(f"background removal (rembg) left nothing of {name}: pass an RGBA image with the "
                              "object cut out, or --no_rembg to use the image as is")
    raise InputImageError(f"{name} is fully transparent (alpha 0 everywhere): there is no object to generate from")


def composite_on_white(rgba: np.ndarray, rounding: str = "nearest") -> np.ndarray:
    """uint8 (..., H, W, 3): straight-alpha uint8 (..., H, W, 4) composited over white, ``c a + 255 (1 - a)``.

    The two official code paths round differently, and each is kept where it is used:

    - ``"nearest"`` (inference: the official scripts paste the image on white with PIL): the
      nearest 8-bit value, computed in integers exactly as PIL's paste does;
    - ``"truncate"`` (the official training loader): float32 in [0, 1] units, then truncated.
    """
    if rounding == "nearest":
        colour, alpha = rgba[..., :3].astype(np.int32), rgba[..., 3:].astype(np.int32)
        value = colour * alpha + 255 * (255 - alpha) + 128
        return ((value + (value >> 8)) >> 8).astype(np.uint8)
    if rounding == "truncate":
        pixels = rgba.astype(np.float32) / 255.0
        alpha = pixels[..., 3:]
        return ((pixels[..., :3] * alpha + (1.0 - alpha)) * 255.0).astype(np.uint8)
    raise ValueError(f"rounding must be 'nearest' or 'truncate', got {rounding!r}")


def pixels_to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) or (T, H, W, 3) -> float32 (3, H, W) or (T, 3, H, W) in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(pixels)).float() / 255.0
    x = x.movedim(-1, -3)
    return x * 2.0 - 1.0


def tensor_to_pixels(frames: torch.Tensor) -> np.ndarray:
    """float (T, 3, H, W) in [-1, 1] -> uint8 (T, H, W, 3), truncating ``255 * x`` as the official code does."""
    x = ((frames.detach().float().cpu() + 1.0) * 0.5).clamp(0.0, 1.0)
    return (x * 255.0).to(torch.uint8).movedim(-3, -1).numpy()


def resize_bilinear(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of uint8 (H, W, 3) or (T, H, W, 3) with half-pixel centres, no antialiasing.

    This is the sampling of OpenCV's default ``INTER_LINEAR`` that the official pipelines use
    (results can differ from OpenCV by one grey level through rounding).
    """
    batched = pixels.ndim == 4
    x = torch.tensor(pixels if batched else pixels[None], dtype=torch.float32).permute(0, 3, 1, 2)
    y = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
    out = y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out if batched else out[0]


def resize_and_center_crop(pixels: np.ndarray, size: int) -> np.ndarray:
    """Scale uint8 (H, W, 3) so its shorter side is ``size`` (sides rounded up), then centre-crop to size x size.

    Crop offsets use Python's ``round`` (halves to even), as the official stage-1 script does.
    """
    height, width = pixels.shape[:2]
    rate = max(size / height, size / width)
    new_h, new_w = math.ceil(height * rate), math.ceil(width * rate)
    resized = resize_bilinear(pixels, new_h, new_w)
    top, left = round((new_h - size) / 2), round((new_w - size) / 2)
    return resized[top:top + size, left:left + size]


def foreground_masks(pixels: np.ndarray) -> np.ndarray:
    """bool (..., H, W): False where R, G and B all exceed :data:`WHITE_THRESHOLD` (background)."""
    return ~np.all(pixels > WHITE_THRESHOLD, axis=-1)


def contact_sheet(pixels: np.ndarray, columns: int = 8) -> np.ndarray:
    """Tile uint8 (T, H, W, 3) views into one image, row-major, padding with white."""
    count, height, width, channels = pixels.shape
    rows = math.ceil(count / columns)
    sheet = np.full((rows * height, columns * width, channels), 255, dtype=np.uint8)
    for index, view in enumerate(pixels):
        r, c = divmod(index, columns)
        sheet[r * height:(r + 1) * height, c * width:(c + 1) * width] = view
    return sheet


OUTPUT_TYPES = ("pil", "np", "pt")


def frames_as(pixels: np.ndarray, output_type: str = "pil"):
    """uint8 frames (T, H, W, 3) as ``output_type``: "pil", a list of RGB PIL images; "np", float32
    (T, H, W, 3) in [0, 1]; "pt", a float32 torch tensor (T, 3, H, W) in [0, 1] (values = pixels / 255).

    Raises:
        UsageError: an unknown ``output_type``.
    """
    if output_type == "pil":
        return [Image.fromarray(frame) for frame in pixels]
    if output_type == "np":
        return pixels.astype(np.float32) / 255.0
    if output_type == "pt":
        return torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float() / 255.0
    raise UsageError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
