"""Novel-view augmentation: cameras between and beside the input orbit, rendered from the fitted scene.

Layout of ``count`` extra cameras around an input ring of ``num_input`` views at elevation
``e`` (all angles in degrees):

* the first ``ceil(count / 2)`` stay at elevation ``e``, at azimuths halfway between input
  views, ``(k + 0.5) * 360 / num_input``, for ``k`` spread evenly over the ring;
* the rest alternate between elevations ``e + offset`` and ``e - offset`` (clamped to
  [-80, 80]), their azimuths spread evenly over the circle starting a quarter of the input
  step past azimuth 0 (so, when their number divides the ring, none looks along an input
  view's direction).

The views are written next to the inputs in one folder that :func:`sgm.recon.views.load_views`
reads back: ``views/view_XX.png`` (inputs) and ``views/view_novel_XX.png``, masks as
``masks/mask_*.png`` (255 = object, rendered opacity >= 0.5) and ``views/cameras.json``
(convention ``hi3d-orbit-v1``, with ``files`` and each view's ``roles`` entry).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sgm.common.orbit import VIEWS_PER_RING, frame_azimuths_deg
from sgm.common.progress import StepCallback
from sgm.recon.cameras import DEFAULT_DISTANCE, DEFAULT_FOV_DEG, OrbitCameras, cameras_at
from sgm.recon.gaussians import GaussianScene
from sgm.recon.rasterize import render_views

MAX_ELEVATION_DEG = 80.0


def novel_view_angles(elevation_deg: float, count: int, num_input: int = VIEWS_PER_RING,
                      offset_deg: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    """Elevations and azimuths (degrees, ``(count,)`` each) of the extra views (see the module docstring)."""
    if count < 0:
        raise ValueError(f"the number of novel views must be >= 0, got {count}")
    step = 360.0 / num_input
    same_ring = math.ceil(count / 2)
    slots = np.floor(np.arange(same_ring) * num_input / max(same_ring, 1))
    azim_same = frame_azimuths_deg(slots + 0.5, num_input)  # halfway between input frames
    others = count - same_ring
    azim_other = (np.arange(others) * 360.0 / max(others, 1) + 0.25 * step) % 360.0
    signs = np.where(np.arange(others) % 2 == 0, 1.0, -1.0)
    elev_other = np.clip(elevation_deg + signs * offset_deg, -MAX_ELEVATION_DEG, MAX_ELEVATION_DEG)
    return (np.concatenate([np.full(same_ring, float(elevation_deg)), elev_other]),
            np.concatenate([azim_same, azim_other]))


def novel_view_cameras(elevation_deg: float, count: int, width: int, height: int, num_input: int = VIEWS_PER_RING,
                       offset_deg: float = 20.0, distance: float = DEFAULT_DISTANCE,
                       fov_deg: float = DEFAULT_FOV_DEG) -> OrbitCameras:
    """The ``count`` extra cameras as :class:`OrbitCameras` of ``width`` x ``height`` pixels."""
    elevations, azimuths = novel_view_angles(elevation_deg, count, num_input, offset_deg)
    return cameras_at(elevations, azimuths, distance, fov_deg, width, height)


@dataclass(frozen=True)
class NovelViews:
    """Rendered extra views.

    Attributes:
        cameras: the ``N`` cameras.
        colors: ``(N, H, W, 3)`` RGB in [0, 1] on white.
        masks: ``(N, H, W)`` float32, 1 where the rendered opacity is at least 0.5.
        depths: ``(N, H, W)`` surface depth (world units, 0 off the object).
    """

    cameras: OrbitCameras
    colors: np.ndarray
    masks: np.ndarray
    depths: np.ndarray


def render_novel_views(scene: GaussianScene, cameras: OrbitCameras, backend: str = "auto",
                       callback: StepCallback | None = None) -> NovelViews:
    """Render ``cameras`` from the fitted ``scene`` over white; ``callback(view_index, num_views)`` after each."""
    colors, alphas, depths = render_views(scene, cameras, torch.ones(3, device=scene.means.device), backend,
                                          callback)
    return NovelViews(cameras, colors, (alphas >= 0.5).astype(np.float32), depths)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return (np.clip(values, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def write_view_folder(root: str | Path, images: np.ndarray, masks: np.ndarray, cameras: OrbitCameras,
                      names: list[str], roles: list[str]) -> Path:
    """Write views and masks as ``root/views/NAME`` and ``root/masks/mask_*``, with ``root/views/cameras.json``.

    Args:
        images: ``(V, H, W, 3)`` in [0, 1]; masks: ``(V, H, W)`` in [0, 1].
        names: ``V`` file names starting with ``view_``; roles: ``V`` labels (``input`` / ``novel``).

    Returns:
        The ``views`` folder.
    """
    if not all(n.startswith("view_") and n.endswith(".png") for n in names):
        raise ValueError(f"view names must look like view_*.png, got {names[:3]}")
    views_dir, masks_dir = Path(root) / "views", Path(root) / "masks"
    views_dir.mkdir(parents=True, exist_ok=True)
    masks_dir.mkdir(parents=True, exist_ok=True)
    for name, image, mask in zip(names, _to_uint8(images), _to_uint8(masks)):
        Image.fromarray(image).save(views_dir / name)
        Image.fromarray(mask).save(masks_dir / name.replace("view_", "mask_", 1))
    record = {**cameras.to_json(), "files": list(names), "roles": list(roles)}
    (views_dir / "cameras.json").write_text(json.dumps(record, indent=1))
    return views_dir
