"""Held-out objects rendered by ``scripts/render_synthetic_orbits.py``: their ring views, cameras and true surface.

An object folder holds ``cameras.json`` (per-file cameras in ring-major, azimuth-minor order,
``ring_elevations_deg`` and ``num_azimuths``), ``object.json`` (the procedural object, whose
exact SDF gives the true surface) and one straight-alpha RGBA PNG per view.

Views of a ring follow the clip convention of :mod:`sgm.data.video_dataset`: frame ``k`` of a
ring ``r`` started at azimuth index ``s`` is file ``num_azimuths * r + (s + k) mod num_azimuths``.
Each view is composited on white (the training loader's rounding, ``"truncate"``) at file size,
then resized to the size asked for with PIL's bicubic filter, exactly as the training clips are
made, so a model sees the same pixels here as in training.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sgm.common.errors import UsageError
from sgm.data.synthetic_orbits import ObjectSpec
from sgm.data.video_dataset import clip_positions, on_white, read_rgba
from sgm.recon.cameras import OrbitCameras, cameras_at
from sgm.recon.export import Mesh
from sgm.recon.metrics import sdf_surface


class HeldOutDataError(UsageError):
    """The held-out data folder, or one of its objects, is missing or unusable; the message names it."""


@dataclass(frozen=True)
class HeldOutObject:
    """One rendered object folder and its ``cameras.json`` record."""

    folder: Path
    record: dict

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def num_rings(self) -> int:
        return len(self.record["ring_elevations_deg"])

    @property
    def num_azimuths(self) -> int:
        return int(self.record["num_azimuths"])

    def ring_elevation(self, ring: int) -> float:
        """Elevation of ``ring`` in degrees."""
        self._check_ring(ring)
        return float(self.record["ring_elevations_deg"][ring])

    def positions(self, ring: int, start: int, count: int | None = None) -> list[int]:
        """File positions of ``count`` (default: one turn) consecutive azimuths of ``ring`` from azimuth ``start``."""
        self._check_ring(ring)
        return clip_positions(ring, start, count or self.num_azimuths, self.num_azimuths)

    def files(self, ring: int, start: int, count: int | None = None) -> list[Path]:
        """The PNG files of :meth:`positions`."""
        return [self.folder / self.record["files"][k] for k in self.positions(ring, start, count)]

    def views(self, ring: int, start: int, size: int, count: int | None = None) -> np.ndarray:
        """The ring's views on white at ``size`` x ``size`` px, uint8 ``(count, size, size, 3)`` (module doc)."""
        return np.stack([view_on_white(path, size) for path in self.files(ring, start, count)])

    def cameras(self, ring: int, start: int, size: int, count: int | None = None) -> OrbitCameras:
        """Cameras of :meth:`views` (angles from ``cameras.json``, intrinsics for ``size`` px)."""
        picked = self.positions(ring, start, count)
        elevations = np.asarray(self.record["elevations_deg"], dtype=np.float64)[picked]
        azimuths = np.asarray(self.record["azimuths_deg"], dtype=np.float64)[picked]
        return cameras_at(elevations, azimuths, float(self.record["distance"]), float(self.record["fov_deg"]),
                          size, size)

    def spec(self) -> ObjectSpec:
        """The procedural object of ``object.json``."""
        path = self.folder / "object.json"
        try:
            return ObjectSpec.from_json(json.loads(path.read_text()))
        except FileNotFoundError:
            raise HeldOutDataError(f"{path} not found: the true geometry of {self.name} is unknown") from None
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise HeldOutDataError(f"cannot read {path} as an object description ({type(err).__name__}: {err})") \
                from None

    def true_surface(self, resolution: int) -> Mesh:
        """The object's surface from its exact SDF (:func:`~sgm.recon.metrics.sdf_surface`), world units."""
        return sdf_surface(self.spec(), resolution)

    def _check_ring(self, ring: int) -> None:
        if not 0 <= ring < self.num_rings:
            raise HeldOutDataError(f"{self.name} has rings 0..{self.num_rings - 1} "
                                   f"(elevations {self.record['ring_elevations_deg']}), not ring {ring}")


def view_on_white(path: Path, size: int) -> np.ndarray:
    """One RGBA view composited on white and resized (bicubic) to ``size`` x ``size``: uint8 ``(size, size, 3)``."""
    if not path.is_file():
        raise HeldOutDataError(f"view {path} not found")
    return on_white(read_rgba(path), size, size)


REQUIRED_KEYS = ("files", "ring_elevations_deg", "num_azimuths", "elevations_deg", "azimuths_deg", "distance",
                 "fov_deg")


def read_object(folder: Path) -> HeldOutObject:
    """The object of ``folder``, its ``cameras.json`` checked for the ring layout.

    Raises:
        HeldOutDataError: ``cameras.json`` missing, malformed, or not rings x azimuths files.
    """
    path = folder / "cameras.json"
    if not path.is_file():
        raise HeldOutDataError(f"{path} not found: not an object folder of scripts/render_synthetic_orbits.py")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise HeldOutDataError(f"{path} is not valid JSON ({err})") from None
    missing = [key for key in REQUIRED_KEYS if key not in record]
    if missing:
        raise HeldOutDataError(f"{path} lacks {', '.join(missing)}: render it with scripts/render_synthetic_orbits.py")
    expected = len(record["ring_elevations_deg"]) * int(record["num_azimuths"])
    if not len(record["files"]) == len(record["elevations_deg"]) == len(record["azimuths_deg"]) == expected:
        raise HeldOutDataError(f"{path} lists {len(record['files'])} files, expected {expected} "
                               f"({len(record['ring_elevations_deg'])} rings x {record['num_azimuths']} azimuths)")
    return HeldOutObject(folder, record)


def scan_held_out(data: Path, num_objects: int | None = None) -> tuple[list[HeldOutObject], int]:
    """The first ``num_objects`` (all when None) object folders of ``data`` in name order, and how many it holds.

    Object folders are the sub-folders with a ``cameras.json``; other entries are ignored.

    Raises:
        HeldOutDataError: ``data`` is not a folder, holds no object folder, or fewer than ``num_objects``.
    """
    if not data.is_dir():
        raise HeldOutDataError(f"held-out data folder not found: {data}")
    folders = sorted(p for p in data.iterdir() if p.is_dir() and (p / "cameras.json").is_file())
    if not folders:
        raise HeldOutDataError(f"{data} holds no object folder (sub-folders with cameras.json); render held-out "
                               "objects with scripts/render_synthetic_orbits.py --seed <a seed not used for training>")
    if num_objects is not None and num_objects > len(folders):
        raise HeldOutDataError(f"--num-objects {num_objects} but {data} holds only {len(folders)} object folders")
    return [read_object(folder) for folder in folders[:num_objects]], len(folders)
