"""The orbit convention: which camera (elevation, azimuth) each view and each generated frame has.

The one place these angles are defined; the renderer (``scripts/render_synthetic_orbits.py``),
the training data (:mod:`sgm.data.video_dataset` and its stage-2 subclass), the cameras of the 3D
step (:mod:`sgm.recon.cameras`, :mod:`sgm.recon.views`) and the range checks of the pipelines
and the web app import it. All angles are in DEGREES.

Rings
    Training renders are rings of :data:`VIEWS_PER_RING` (16) views at the elevations
    :data:`RING_ELEVATIONS_DEG` (-10, 0, 10, 20, 30, 40): whole degrees, since the data
    loader hands them to the model as integer conditions. Positive elevation puts the camera
    above the equator, looking down. An object folder stores its views ring-major,
    azimuth-minor (:func:`view_position`).
Azimuth
    Azimuth 0 is the +x axis; azimuth grows COUNTER-CLOCKWISE SEEN FROM ABOVE (looking down
    -z), from +x towards +y (:func:`camera_direction`). Along a ring the azimuth grows with
    the frame index (:data:`AZIMUTH_DIRECTION` = +1): the camera circles counter-clockwise
    and the object appears to turn clockwise, a point on its front moving towards the image
    left.
Generated frames
    A stage-1 or stage-2 video of ``n`` frames (16) is one ring at the input view's elevation:
    frame 0 is the input view at azimuth :data:`FIRST_FRAME_AZIMUTH_DEG` (0), frame ``k`` at
    ``k * 360 / n`` (:func:`frame_camera_deg`). A training clip starting at azimuth index
    ``s`` of a ring holds the ring's views ``s, s + 1, ...`` (wrapping, :func:`clip_azimuth_indices`),
    so its frame ``k`` also lies ``k * 360 / n`` degrees past its frame 0.
"""
from __future__ import annotations

from typing import Any

import numpy as np

RING_ELEVATIONS_DEG: tuple[int, ...] = (-10, 0, 10, 20, 30, 40)
VIEWS_PER_RING = 16
FIRST_FRAME_AZIMUTH_DEG = 0.0
AZIMUTH_DIRECTION = 1  # +1: the azimuth of frame k + 1 is larger, counter-clockwise seen from above
# (lowest, highest) elevation of the training rings, degrees: the models have seen no other.
TRAINED_ELEVATION_RANGE_DEG: tuple[float, float] = (float(min(RING_ELEVATIONS_DEG)), float(max(RING_ELEVATIONS_DEG)))


def frame_azimuths_deg(frames: Any, num_frames: int = VIEWS_PER_RING) -> np.ndarray:
    """Azimuths in degrees of frame indices ``frames`` (int or int array, any shape) of an ``num_frames``-frame
    ring: ``FIRST_FRAME_AZIMUTH_DEG + AZIMUTH_DIRECTION * k * 360 / num_frames``, not wrapped to [0, 360).

    Raises:
        ValueError: for ``num_frames`` < 1.
    """
    if num_frames < 1:
        raise ValueError(f"an orbit needs at least one azimuth, got n={num_frames}")
    step = 360.0 / num_frames
    return FIRST_FRAME_AZIMUTH_DEG + AZIMUTH_DIRECTION * (np.asarray(frames, dtype=np.float64) * step)


def orbit_azimuths_deg(n: int = VIEWS_PER_RING) -> np.ndarray:
    """Azimuths of one ring in frame order, degrees, ``(n,)``: ``0, 360/n, ..., 360 (n-1)/n``."""
    return frame_azimuths_deg(np.arange(n), n)


def frame_camera_deg(frame: int, elevation_deg: float, num_frames: int = VIEWS_PER_RING) -> tuple[float, float]:
    """(elevation, azimuth) in degrees of frame ``frame`` (0-based) of a generated ``num_frames``-frame video
    whose input view (frame 0) is at ``elevation_deg``; every frame keeps the input's elevation."""
    if not 0 <= frame < num_frames:
        raise ValueError(f"frame {frame} is not in 0..{num_frames - 1}")
    return float(elevation_deg), float(frame_azimuths_deg(frame, num_frames))


def camera_direction(elevation_deg: Any, azimuth_deg: Any) -> np.ndarray:
    """Unit vector(s) from the origin towards the camera, ``(..., 3)``: ``(cos e cos a, cos e sin a, sin e)``
    for elevation ``e`` and azimuth ``a`` in degrees (broadcast together), world +z up."""
    elev = np.radians(np.asarray(elevation_deg, dtype=np.float64))
    azim = np.radians(np.asarray(azimuth_deg, dtype=np.float64))
    elev, azim = np.broadcast_arrays(elev, azim)
    return np.stack([np.cos(elev) * np.cos(azim), np.cos(elev) * np.sin(azim), np.sin(elev)], axis=-1)


def view_position(ring: int, azimuth_index: int, views_per_ring: int = VIEWS_PER_RING) -> int:
    """Position of view (ring, azimuth index) among an object folder's sorted files: ring-major, azimuth-minor."""
    return ring * views_per_ring + azimuth_index


def clip_azimuth_indices(start: int, num_frames: int, views_per_ring: int = VIEWS_PER_RING) -> list[int]:
    """Azimuth indices of the ``num_frames`` frames of a clip starting at azimuth index ``start``: consecutive
    in the ring's azimuth order, wrapping around it."""
    return [(start + k) % views_per_ring for k in range(num_frames)]
