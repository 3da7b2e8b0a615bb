"""The project's one camera convention: orbit rings around an object at the origin.

Everything that places a camera (the synthetic renderer, the orbit data loader, the 3D
reconstruction) goes through this module; the angles of the views (rings, azimuth order, the
camera of each generated frame) come from :mod:`sgm.common.orbit`; nothing else defines poses.

Convention ``hi3d-orbit-v1``
----------------------------
World
    Right-handed, +z up. The object is centred at the origin. Render defaults follow the
    SyncDreamer Blender set-up that Hi3D's training renders come from: the object is
    scaled so the longest side of its axis-aligned bounding box is 1 and that box is
    centred at the origin (our procedural objects are additionally kept inside a sphere of
    radius 0.6 so no view crops them, see :mod:`sgm.data.synthetic_orbits`).
Camera placement
    On a sphere of radius ``distance`` (default 1.5, world units) looking at the origin,
    world +z projecting to image-up. For elevation ``e`` and azimuth ``a`` (both in
    DEGREES) the camera centre is ``distance * (cos e cos a, cos e sin a, sin e)``
    (:func:`sgm.common.orbit.camera_direction`).
Orbit
    As :mod:`sgm.common.orbit` defines it: ``n`` azimuths evenly spaced (16 -> 22.5 degrees
    apart), counter-clockwise seen from above, starting at the input view: frame 0 of a ring
    is azimuth 0. Training rings are at elevations -10, 0, 10, 20, 30 and 40 degrees; an
    object folder stores them ring-major, azimuth-minor.
Camera axes (OpenCV)
    x right, y down, z forward (along the viewing direction). World-to-camera maps a world
    point ``X`` to ``R @ X + t``; the camera centre is ``-R.T @ t``.
Intrinsics
    Pinhole, square pixels, vertical field of view ``fov_deg``. Pixel ``(row i, col j)``
    has its centre at ``(u, v) = (j + 0.5, i + 0.5)``; the principal point is the image
    centre ``(W / 2, H / 2)``. The default fov is that of a 35 mm lens on a 32 mm sensor,
    ``2 atan(16 / 35) = 49.13`` degrees (Blender's horizontal sensor fit gives the same
    angle vertically for the square renders used here).
Sanity examples (elevation 0, see the tests): a point at +y shows right of centre at
azimuth 0 and left of centre at azimuth 180; a point at +x shows left of centre at
azimuth 90 and right of centre at azimuth 270; a point at +z shows above centre.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sgm.common.orbit import RING_ELEVATIONS_DEG, VIEWS_PER_RING, camera_direction, orbit_azimuths_deg

CONVENTION = "hi3d-orbit-v1"
DEFAULT_DISTANCE = 1.5
DEFAULT_FOV_DEG = math.degrees(2.0 * math.atan(16.0 / 35.0))
WORLD_UP = (0.0, 0.0, 1.0)


def camera_position(elevation_deg: Any, azimuth_deg: Any, distance: float = DEFAULT_DISTANCE) -> np.ndarray:
    """Camera centre(s) in world units, ``(..., 3)``; angles in degrees, broadcast together."""
    return distance * camera_direction(elevation_deg, azimuth_deg)


def look_at(
    eye: Any, target: Sequence[float] = (0.0, 0.0, 0.0), up: Sequence[float] = WORLD_UP
) -> tuple[np.ndarray, np.ndarray]:
    """World-to-camera rotation ``(..., 3, 3)`` and translation ``(..., 3)`` (OpenCV axes).

    The camera at ``eye`` (``(..., 3)``) looks at ``target``; ``up`` projects to image-up.
    Rows of the rotation are the camera's right, down and forward axes in world coordinates.

    Raises:
        ValueError: when the viewing direction is (nearly) parallel to ``up``.
    """
    eye = np.asarray(eye, dtype=np.float64)
    forward = np.asarray(target, dtype=np.float64) - eye
    forward = forward / np.linalg.norm(forward, axis=-1, keepdims=True)
    right = np.cross(forward, np.asarray(up, dtype=np.float64))
    norm = np.linalg.norm(right, axis=-1, keepdims=True)
    if np.any(norm < 1e-9):
        raise ValueError("look_at: viewing direction is parallel to 'up' (elevation +-90 degrees)")
    right = right / norm
    down = np.cross(forward, right)
    rotation = np.stack([right, down, forward], axis=-2)
    translation = -np.einsum("...ij,...j->...i", rotation, eye)
    return rotation, translation


def intrinsics(fov_deg: float, width: int, height: int) -> np.ndarray:
    """Pinhole matrix ``(3, 3)`` for a vertical field of view in degrees and square pixels."""
    if not 0.0 < fov_deg < 180.0:
        raise ValueError(f"fov_deg must be in (0, 180), got {fov_deg}")
    focal = 0.5 * height / math.tan(math.radians(fov_deg) / 2.0)
    return np.array([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]])


@dataclass(frozen=True)
class OrbitCameras:
    """``n`` cameras of this module's convention, listed in frame order.

    Attributes:
        elevations_deg: ``(n,)`` degrees.
        azimuths_deg: ``(n,)`` degrees.
        distance: camera distance from the origin, world units.
        fov_deg: vertical field of view, degrees.
        width, height: image size in pixels.
        K: ``(n, 3, 3)`` intrinsics.
        world_to_camera: ``(n, 4, 4)`` OpenCV extrinsics.
    """

    elevations_deg: np.ndarray
    azimuths_deg: np.ndarray
    distance: float
    fov_deg: float
    width: int
    height: int
    K: np.ndarray
    world_to_camera: np.ndarray

    def __len__(self) -> int:
        return len(self.azimuths_deg)

    @property
    def centers(self) -> np.ndarray:
        """Camera centres in world units, ``(n, 3)``."""
        rotation, translation = self.world_to_camera[:, :3, :3], self.world_to_camera[:, :3, 3]
        return -np.einsum("nji,nj->ni", rotation, translation)

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Project world points ``(P, 3)`` -> pixel coordinates ``(n, P, 2)`` as (u, v), depths ``(n, P)``."""
        points = np.asarray(points, dtype=np.float64)
        cam = np.einsum("nij,pj->npi", self.world_to_camera[:, :3, :3], points) + self.world_to_camera[:, None, :3, 3]
        pix = np.einsum("nij,npj->npi", self.K, cam)
        return pix[..., :2] / pix[..., 2:3], cam[..., 2]

    def to_json(self) -> dict:
        """A JSON-serialisable dict (lists and floats) that :meth:`from_json` reads back."""
        return {
            "convention": CONVENTION,
            "distance": float(self.distance),
            "fov_deg": float(self.fov_deg),
            "width": int(self.width),
            "height": int(self.height),
            "elevations_deg": self.elevations_deg.tolist(),
            "azimuths_deg": self.azimuths_deg.tolist(),
            "K": self.K.tolist(),
            "world_to_camera": self.world_to_camera.tolist(),
        }

    @classmethod
    def from_json(cls, data: dict) -> "OrbitCameras":
        """Inverse of :meth:`to_json`.

        Raises:
            ValueError: when the dict names another convention.
        """
        if data.get("convention") != CONVENTION:
            raise ValueError(f"cameras use convention {data.get('convention')!r}, expected {CONVENTION!r}")
        return cls(
            elevations_deg=np.asarray(data["elevations_deg"], dtype=np.float64),
            azimuths_deg=np.asarray(data["azimuths_deg"], dtype=np.float64),
            distance=float(data["distance"]),
            fov_deg=float(data["fov_deg"]),
            width=int(data["width"]),
            height=int(data["height"]),
            K=np.asarray(data["K"], dtype=np.float64),
            world_to_camera=np.asarray(data["world_to_camera"], dtype=np.float64),
        )


def cameras_at(
    elevations_deg: Any,
    azimuths_deg: Any,
    distance: float = DEFAULT_DISTANCE,
    fov_deg: float = DEFAULT_FOV_DEG,
    width: int = 512,
    height: int = 512,
) -> OrbitCameras:
    """Cameras at paired elevation/azimuth lists (degrees, ``(n,)`` each) looking at the origin."""
    elev, azim = np.broadcast_arrays(
        np.asarray(elevations_deg, dtype=np.float64).reshape(-1), np.asarray(azimuths_deg, dtype=np.float64).reshape(-1)
    )
    rotation, translation = look_at(camera_position(elev, azim, distance))
    extrinsics = np.tile(np.eye(4), (len(azim), 1, 1))
    extrinsics[:, :3, :3] = rotation
    extrinsics[:, :3, 3] = translation
    K = np.tile(intrinsics(fov_deg, width, height), (len(azim), 1, 1))
    return OrbitCameras(elev.copy(), azim.copy(), float(distance), float(fov_deg), int(width), int(height),
                        K, extrinsics)


def orbit_cameras(
    elevation_deg: float,
    n: int = VIEWS_PER_RING,
    distance: float = DEFAULT_DISTANCE,
    fov_deg: float = DEFAULT_FOV_DEG,
    width: int = 512,
    height: int = 512,
) -> OrbitCameras:
    """One ring: ``n`` cameras at ``elevation_deg`` (degrees), frame 0 at azimuth 0."""
    return cameras_at(elevation_deg, orbit_azimuths_deg(n), distance, fov_deg, width, height)


def orbit_rings(
    elevations_deg: Sequence[float] = RING_ELEVATIONS_DEG,
    n: int = VIEWS_PER_RING,
    distance: float = DEFAULT_DISTANCE,
    fov_deg: float = DEFAULT_FOV_DEG,
    width: int = 512,
    height: int = 512,
) -> OrbitCameras:
    """All rings of an object folder, ring-major: frame ``r * n + k`` is ring ``r``, azimuth index ``k``."""
    elev = np.repeat(np.asarray(elevations_deg, dtype=np.float64), n)
    azim = np.tile(orbit_azimuths_deg(n), len(elevations_deg))
    return cameras_at(elev, azim, distance, fov_deg, width, height)
