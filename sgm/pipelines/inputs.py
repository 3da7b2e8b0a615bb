"""The input image of a run: read from a file or taken from memory, checked, background removed.

Everything here happens before any diffusion model is built, so a bad image fails in seconds.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..common.images import (
    InputImageError,
    check_image_size,
    check_not_transparent,
    composite_on_white,
    read_image,
    standard_mode,
)
from .background import remove_background
from .records import image_sha256


@dataclass
class InputImage:
    """The stage-1 input, read and checked.

    Attributes:
        rgba: the object on a transparent background (RGBA, the input's size).
        white: ``rgba`` composited on white (RGB), the model's input view.
        path: the file it came from (None: an in-memory image).
        sha256: :func:`~sgm.pipelines.records.image_sha256` of the image as read (before background removal).
    """

    rgba: Image.Image
    white: Image.Image
    path: str | None
    sha256: str


def open_input(image: str | Path | Image.Image | None) -> tuple[Image.Image, str | None, str]:
    """(the image in RGB or RGBA, its path or None, its name for messages); sides checked (64 to 8192 px).

    Raises:
        InputImageError: no image, a missing or unreadable file, or a side out of range.
    """
    if isinstance(image, Image.Image):
        check_image_size(*image.size)
        return standard_mode(image), None, "the input image"
    if image is None:
        raise InputImageError("no input image given (stage 1 needs one)")
    return read_image(image), str(image), str(image)


def load_input(image: str | Path | Image.Image | None, use_rembg: bool) -> InputImage:
    """Read and check the stage-1 input and remove its background (:func:`~sgm.pipelines.background.remove_background`).

    Raises:
        InputImageError: as :func:`open_input`, or the image (or what rembg left of it) is fully transparent.
    """
    picture, path, name = open_input(image)
    rgba = remove_background(picture, use_rembg)
    check_not_transparent(rgba, name, removed_background=picture.mode != "RGBA")
    white = Image.fromarray(composite_on_white(np.asarray(rgba), "nearest"))
    return InputImage(rgba, white, path, image_sha256(picture))
