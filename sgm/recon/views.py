"""Loading the orbit views that the 3D stage fits, with their masks and cameras, and checking them.

Accepted inputs (see :func:`load_views`):

* a folder of PNGs: ``view_*.png`` when present, otherwise every ``*.png``, in name order.
  RGBA images give their alpha as the mask (RGB composited on white); RGB images take their
  masks from ``mask_*.png`` in a sibling ``masks/`` folder when it holds one per view, or
  else from the white threshold of :func:`sgm.common.images.foreground_masks`.
  A ``cameras.json`` beside the PNGs (written by this stage or by
  ``scripts/render_synthetic_orbits.py``) gives each file's camera; without it view ``k`` of
  ``V`` is at azimuth ``k * 360 / V`` degrees on one ring at the given elevation (the
  generated-frame mapping of :mod:`sgm.common.orbit`).
* a pipeline output folder (it holds ``second_step_video/views``): its refined views.
* a video file: its frames, masks from the white threshold, one ring as above.

Cameras follow :mod:`sgm.recon.cameras` (convention ``hi3d-orbit-v1``). Images are float32
in [0, 1], on a white background; masks are float32 in [0, 1] (1 = object).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from sgm.common.errors import UsageError
from sgm.common.images import foreground_masks
from sgm.common.orbit import orbit_azimuths_deg
from sgm.common.video_io import read_mp4
from sgm.recon.cameras import DEFAULT_DISTANCE, DEFAULT_FOV_DEG, OrbitCameras, cameras_at

MIN_VIEWS = 16
VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".avi", ".mkv", ".gif")
MASK_THRESHOLD = 0.5


class ViewError(UsageError):
    """The views, masks or cameras given to the 3D stage are missing or unusable."""


@dataclass(frozen=True)
class ViewSet:
    """Views of one object with their cameras.

    Attributes:
        images: ``(V, H, W, 3)`` float32 RGB in [0, 1], on white.
        masks: ``(V, H, W)`` float32 in [0, 1], 1 = object.
        cameras: ``V`` cameras of convention ``hi3d-orbit-v1`` with ``width = W``, ``height = H``.
        names: ``V`` names (file names, or ``frame_XX`` for video frames), for messages and output.
    """

    images: np.ndarray
    masks: np.ndarray
    cameras: OrbitCameras
    names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.names)


def validate_views(images: np.ndarray, masks: np.ndarray, cameras: OrbitCameras, names: tuple[str, ...],
                   min_views: int = MIN_VIEWS) -> ViewSet:
    """Check shapes, counts and masks, and return them as a :class:`ViewSet`.

    Raises:
        ViewError: fewer than ``min_views`` views; views, masks or cameras of different sizes
            or counts; a mask with no foreground pixel or no background pixel.
    """
    if len(images) < min_views:
        raise ViewError(f"found {len(images)} views ({', '.join(names[:4])}{'...' if len(names) > 4 else ''}); "
                        f"the 3D stage needs at least {min_views} (one orbit at {360 / min_views:g} degree steps)")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ViewError(f"views must be RGB images stacked as (V, H, W, 3), got shape {images.shape}")
    if masks.shape != images.shape[:3]:
        raise ViewError(f"masks have shape {masks.shape} but the views are {images.shape[:3]} (V, H, W)")
    if len(cameras) != len(images) or (cameras.height, cameras.width) != images.shape[1:3]:
        raise ViewError(f"{len(cameras)} cameras of {cameras.width}x{cameras.height} px do not match "
                        f"{len(images)} views of {images.shape[2]}x{images.shape[1]} px")
    fg = masks > MASK_THRESHOLD
    for name, any_fg, all_fg in zip(names, fg.any(axis=(1, 2)), fg.all(axis=(1, 2))):
        if not any_fg:
            raise ViewError(f"the mask of {name} is empty (no foreground pixel): the object must be visible "
                            "in every view, on a white background")
        if all_fg:
            raise ViewError(f"the mask of {name} covers the whole image: the background must be white "
                            "(R, G, B > 220) or the mask must mark it")
    return ViewSet(images.astype(np.float32), masks.astype(np.float32), cameras, tuple(names))


def ring_cameras(count: int, elevation_deg: float, width: int, height: int, distance: float = DEFAULT_DISTANCE,
                 fov_deg: float = DEFAULT_FOV_DEG) -> OrbitCameras:
    """``count`` views on one ring at ``elevation_deg`` degrees, view ``k`` at azimuth ``k * 360 / count``."""
    return cameras_at(elevation_deg, orbit_azimuths_deg(count), distance, fov_deg, width, height)


def read_pixels(path: Path) -> np.ndarray:
    """uint8 ``(H, W, 3)`` or ``(H, W, 4)`` pixels of an image file (alpha kept when present).

    Raises:
        ViewError: when the file cannot be read as an image.
    """
    try:
        with Image.open(path) as image:
            has_alpha = image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info)
            return np.asarray(image.convert("RGBA" if has_alpha else "RGB"))
    except (UnidentifiedImageError, OSError) as err:
        raise ViewError(f"cannot read {path} as an image ({err})") from err


def _read_mask(path: Path) -> np.ndarray:
    """float32 ``(H, W)`` in [0, 1] of a greyscale mask file (255 = object)."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as err:
        raise ViewError(f"cannot read mask {path} ({err})") from err


def _check_same_size(arrays: list[np.ndarray], names: list[str], what: str) -> None:
    first = arrays[0].shape[:2]
    for array, name in zip(arrays, names):
        if array.shape[:2] != first:
            raise ViewError(f"{what} {name} is {array.shape[1]}x{array.shape[0]} px but {names[0]} is "
                            f"{first[1]}x{first[0]} px; all must have the same size")


def split_rgba(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 ``(..., H, W, 3|4)`` -> RGB on white ``(..., H, W, 3)`` and mask ``(..., H, W)``, float32 in [0, 1].

    With an alpha channel the mask is the alpha; without one it is the white threshold.
    """
    rgb = pixels[..., :3].astype(np.float32) / 255.0
    if pixels.shape[-1] == 4:
        alpha = pixels[..., 3].astype(np.float32) / 255.0
        return rgb * alpha[..., None] + (1.0 - alpha[..., None]), alpha
    return rgb, foreground_masks(pixels[..., :3]).astype(np.float32)


def _folder_cameras(folder: Path, names: list[str], width: int, height: int) -> OrbitCameras | None:
    """Cameras of ``names`` from ``folder/cameras.json``, or None when the folder has none."""
    path = folder / "cameras.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        cameras = OrbitCameras.from_json(record)
    except (ValueError, KeyError) as err:
        raise ViewError(f"cannot use {path}: {err}") from err
    files = record.get("files")
    if files is None or len(files) != len(cameras):
        raise ViewError(f"{path} must list one file name per camera under 'files'")
    missing = [n for n in names if n not in files]
    if missing:
        raise ViewError(f"{path} has no camera for {', '.join(missing[:3])}")
    if (cameras.width, cameras.height) != (width, height):
        raise ViewError(f"{path} describes {cameras.width}x{cameras.height} px images but the views are "
                        f"{width}x{height} px")
    order = [files.index(n) for n in names]
    return cameras_at(cameras.elevations_deg[order], cameras.azimuths_deg[order], cameras.distance,
                      cameras.fov_deg, width, height)


def _load_folder(folder: Path, elevation_deg: float, min_views: int) -> ViewSet:
    paths = sorted(folder.glob("view_*.png")) or sorted(folder.glob("*.png"))
    if not paths:
        raise ViewError(f"no PNG views in {folder} (expected view_00.png ... view_15.png)")
    names = [p.name for p in paths]
    pixels = [read_pixels(p) for p in paths]
    _check_same_size(pixels, names, "view")
    if len({p.shape[-1] for p in pixels}) != 1:
        raise ViewError(f"views in {folder} mix RGB and RGBA files")
    images, masks = split_rgba(np.stack(pixels))
    mask_paths = [folder.parent / "masks" / n.replace("view_", "mask_", 1) for n in names]
    if pixels[0].shape[-1] == 3 and all(p.is_file() for p in mask_paths):
        loaded = [_read_mask(p) for p in mask_paths]
        _check_same_size([pixels[0], *loaded], [names[0], *(p.name for p in mask_paths)], "mask")
        masks = np.stack(loaded)
    height, width = images.shape[1:3]
    cameras = _folder_cameras(folder, names, width, height)
    if cameras is None:
        cameras = ring_cameras(len(names), elevation_deg, width, height)
    return validate_views(images, masks, cameras, tuple(names), min_views)


def load_views(source: str | Path, elevation_deg: float, min_views: int = MIN_VIEWS) -> ViewSet:
    """Load views, masks and cameras from a folder, a pipeline output folder or a video (see module doc).

    Args:
        source: the folder or video file.
        elevation_deg: elevation of the orbit in degrees (ignored when a cameras.json is present).
        min_views: fewest views accepted.

    Raises:
        ViewError: missing or unreadable input, too few views, mismatched sizes, empty masks.
    """
    source = Path(source)
    if source.is_dir() and (source / "second_step_video" / "views").is_dir():
        source = source / "second_step_video" / "views"
    if source.is_dir():
        return _load_folder(source, elevation_deg, min_views)
    if source.is_file() and source.suffix.lower() in VIDEO_SUFFIXES:
        try:
            frames = read_mp4(source)
        except UsageError as err:
            raise ViewError(str(err)) from err
        names = tuple(f"{source.name}[frame {k:02d}]" for k in range(len(frames)))
        return views_from_frames(frames, elevation_deg, names, min_views)
    if source.exists():
        raise ViewError(f"{source} is neither a folder of PNG views nor a video ({', '.join(VIDEO_SUFFIXES)})")
    raise ViewError(f"views not found: {source}")


def views_from_frames(frames: np.ndarray, elevation_deg: float, names: tuple[str, ...] | None = None,
                      min_views: int = MIN_VIEWS) -> ViewSet:
    """Views of uint8 frames ``(V, H, W, 3|4)`` in orbit order on one ring at ``elevation_deg`` degrees
    (masks from the alpha channel or the white threshold, as :func:`split_rgba`); named
    ``view_XX.png`` unless ``names`` are given.

    Raises:
        ViewError: too few views or empty / full masks (:func:`validate_views`).
    """
    images, masks = split_rgba(frames)
    cameras = ring_cameras(len(frames), elevation_deg, frames.shape[2], frames.shape[1])
    names = names or tuple(f"view_{k:02d}.png" for k in range(len(frames)))
    return validate_views(images, masks, cameras, names, min_views)


def resize_views(views: ViewSet, size: int) -> ViewSet:
    """The views scaled (antialiased bilinear) so their longer side is ``size`` pixels; cameras follow.

    The field of view is kept, so the intrinsics scale with the image.
    """
    height, width = views.images.shape[1:3]
    scale = size / max(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    if (new_h, new_w) == (height, width):
        return views
    stacked = torch.from_numpy(np.concatenate([views.images, views.masks[..., None]], axis=-1)).permute(0, 3, 1, 2)
    resized = F.interpolate(stacked, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
    resized = resized.clamp(0.0, 1.0).permute(0, 2, 3, 1).numpy()
    cams = views.cameras
    cameras = cameras_at(cams.elevations_deg, cams.azimuths_deg, cams.distance, cams.fov_deg, new_w, new_h)
    return ViewSet(resized[..., :3].copy(), resized[..., 3].copy(), cameras, views.names)
