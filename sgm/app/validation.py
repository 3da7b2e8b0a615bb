"""Checks on what a user sends to the web app, before any work is done.

Nothing here uses a user-given name as a path: an upload is read from the path the server
stored it at, decoded as an image (size checked from the header first) and returned as pixels.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..common.errors import UsageError
from ..common.images import InputImageError, read_image
from ..common.orbit import TRAINED_ELEVATION_RANGE_DEG

ELEVATION_RANGE = TRAINED_ELEVATION_RANGE_DEG  # degrees; the app accepts the elevations the models were trained on
STEPS_RANGE = (1, 100)
GUIDANCE_RANGE = (1.0, 10.0)
SEED_RANGE = (0, 2**32 - 1)
UPLOAD_NAME = "the uploaded file"
NAME_LENGTH = 60  # characters of an upload's file name shown on the page


def upload_name(path: str | Path | None) -> str:
    """The uploaded file's name for messages on the page: its base name (gradio keeps the user's
    name) with anything but letters, digits, spaces, dots, dashes and underscores replaced, shortened;
    it is shown, never used as a path."""
    if path is None:
        return "no image"
    name = re.sub(r"[^\w .-]", "_", Path(path).name).strip() or "the image"
    return name if len(name) <= NAME_LENGTH else name[:NAME_LENGTH - 3] + "..."


def validate_upload(path: str | Path | None, max_bytes: int) -> Image.Image:
    """Decode an uploaded file as an image (RGB or RGBA).

    Raises:
        InputImageError: nothing uploaded, a file over ``max_bytes``, not an image, or an image
            with a side outside :data:`~sgm.common.images.MIN_IMAGE_SIDE`..``MAX_IMAGE_SIDE``.
    """
    if path is None:
        raise InputImageError("upload an image first (PNG, JPEG or WebP; RGBA with a transparent background is best)")
    path = Path(path)
    if not path.is_file():
        raise InputImageError(f"{UPLOAD_NAME} is gone from the server; upload it again")
    size = path.stat().st_size
    if size > max_bytes:
        raise InputImageError(f"{UPLOAD_NAME} is too large ({size / 2**20:.1f} MB): the limit is "
                              f"{max_bytes / 2**20:.0f} MB")
    return read_image(path, name=UPLOAD_NAME)


def _bound(value) -> str:
    """A range bound as typed: whole numbers in full (the seed's 4294967295, not 4.29497e+09)."""
    return str(value) if isinstance(value, int) else f"{value:g}"


def _in_range(name: str, value, bounds) -> None:
    low, high = bounds
    if value is None or not math.isfinite(float(value)) or not low <= float(value) <= high:
        raise UsageError(f"{name} must be between {_bound(low)} and {_bound(high)}, got {value}")


@dataclass(frozen=True)
class Settings:
    """Sampling settings of one stage, as typed in the page."""

    elevation: float
    seed: int
    steps: int
    guidance: float

    @classmethod
    def checked(cls, elevation, seed, steps, guidance) -> "Settings":
        """Settings from raw widget values; raises UsageError naming the first value out of range."""
        _in_range("the elevation (degrees)", elevation, ELEVATION_RANGE)
        _in_range("the seed", seed, SEED_RANGE)
        _in_range("the number of steps", steps, STEPS_RANGE)
        _in_range("the guidance", guidance, GUIDANCE_RANGE)
        if float(seed) != int(seed) or float(steps) != int(steps):
            raise UsageError(f"the seed and the number of steps must be whole numbers, got {seed} and {steps}")
        return cls(float(elevation), int(seed), int(steps), float(guidance))
