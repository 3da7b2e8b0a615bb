"""The 3D Gaussian scene and its initialisation from the view masks (visual hull).

A scene is ``N`` anisotropic Gaussians in world units (convention ``hi3d-orbit-v1``). Each
stores unconstrained parameters, mapped to their meaning by smooth functions so that the
optimiser may move them freely:

==================  ==========  =====================================================
parameter           shape       meaning
==================  ==========  =====================================================
``means``           ``(N, 3)``  centres, world units
``log_scales``      ``(N, 3)``  ``exp`` -> standard deviations along the local axes
``quats``           ``(N, 4)``  rotation as a quaternion ``(w, x, y, z)``, normalised on use
``opacity_logits``  ``(N,)``    ``sigmoid`` -> peak opacity in (0, 1)
``color_logits``    ``(N, 3)``  ``sigmoid`` -> RGB in (0, 1), the same from every direction
==================  ==========  =====================================================

Colour does not depend on the viewing direction: the refined views are lit alike, and with
one ring of 16 views a direction-dependent colour would mostly learn to explain away
errors in the geometry.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sgm.recon.cameras import OrbitCameras

PARAMETER_NAMES = ("means", "log_scales", "quats", "opacity_logits", "color_logits")


@dataclass
class GaussianScene:
    """The parameters of ``N`` Gaussians (see the module docstring for shapes and meanings)."""

    means: torch.Tensor
    log_scales: torch.Tensor
    quats: torch.Tensor
    opacity_logits: torch.Tensor
    color_logits: torch.Tensor

    def __len__(self) -> int:
        return self.means.shape[0]

    def parameters(self) -> dict[str, torch.Tensor]:
        """The five parameter tensors by name, in :data:`PARAMETER_NAMES` order."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def scales(self) -> torch.Tensor:
        """Standard deviations along the local axes, world units, ``(N, 3)``."""
        return self.log_scales.exp()

    def opacities(self) -> torch.Tensor:
        """Peak opacities in (0, 1), ``(N,)``."""
        return torch.sigmoid(self.opacity_logits)

    def colors(self) -> torch.Tensor:
        """RGB in (0, 1), ``(N, 3)``."""
        return torch.sigmoid(self.color_logits)

    def unit_quats(self) -> torch.Tensor:
        """Normalised quaternions ``(w, x, y, z)``, ``(N, 4)``."""
        return F.normalize(self.quats, dim=-1)

    def rotations(self) -> torch.Tensor:
        """Local-to-world rotation matrices ``(N, 3, 3)``."""
        return quaternion_to_matrix(self.unit_quats())

    def covariances(self) -> torch.Tensor:
        """World covariance matrices ``R diag(s^2) R^T``, ``(N, 3, 3)``, world units squared."""
        m = self.rotations() * self.scales()[:, None, :]
        return m @ m.transpose(1, 2)

    def detached(self, requires_grad: bool = False) -> "GaussianScene":
        """A copy with fresh leaf tensors (optionally requiring gradients)."""
        return GaussianScene(**{k: v.detach().clone().requires_grad_(requires_grad)
                                for k, v in self.parameters().items()})

    def to(self, device: torch.device | str) -> "GaussianScene":
        """The same Gaussians on ``device`` (leaf tensors without gradients)."""
        return GaussianScene(**{k: v.detach().to(device) for k, v in self.parameters().items()})

    def save(self, path: str | Path) -> Path:
        """Write the parameters to a ``.pt`` file readable by :meth:`load`."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"format": "hi3d-gaussians-v1", **{k: v.detach().cpu() for k, v in self.parameters().items()}},
                   path)
        return path

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> "GaussianScene":
        """Read a file written by :meth:`save`.

        Raises:
            ValueError: when the file holds something else.
        """
        data = torch.load(Path(path), map_location=device, weights_only=True)
        if not isinstance(data, dict) or data.get("format") != "hi3d-gaussians-v1":
            raise ValueError(f"{path} is not a Gaussian scene written by GaussianScene.save")
        return cls(**{name: data[name] for name in PARAMETER_NAMES})


def quaternion_to_matrix(quats: torch.Tensor) -> torch.Tensor:
    """Unit quaternions ``(..., 4)`` as ``(w, x, y, z)`` -> rotation matrices ``(..., 3, 3)``."""
    w, x, y, z = quats.unbind(-1)
    rows = (
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    )
    return torch.stack(rows, dim=-1).reshape(*quats.shape[:-1], 3, 3)


def _logit(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-4, 1 - 1e-4)
    return torch.log(p / (1 - p))


def grid_points(resolution: int, bound: float) -> np.ndarray:
    """Centres of a ``resolution^3`` voxel grid filling ``[-bound, bound]^3``, ``(R, R, R, 3)`` indexed [x, y, z]."""
    axis = (np.arange(resolution) + 0.5) * (2.0 * bound / resolution) - bound
    return np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1)


def sample_views(values: np.ndarray, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-pixel look-up of per-view images at projected points.

    Args:
        values: ``(V, H, W, ...)`` per-view images.
        uv: ``(V, P, 2)`` pixel coordinates (u = column + 0.5, v = row + 0.5).

    Returns:
        ``(V, P, ...)`` values of the input dtype (zero / False where outside) and the
        ``(V, P)`` in-image flags.
    """
    height, width = values.shape[1:3]
    cols, rows = np.floor(uv[..., 0]).astype(np.int64), np.floor(uv[..., 1]).astype(np.int64)
    inside = (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height)
    view = np.broadcast_to(np.arange(len(values))[:, None], cols.shape)
    picked = values[view, rows.clip(0, height - 1), cols.clip(0, width - 1)]
    flags = inside.reshape(*inside.shape, *([1] * (picked.ndim - 2)))
    return np.where(flags, picked, np.zeros((), dtype=picked.dtype)), inside


def project_view(cameras: OrbitCameras, view: int, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates ``(P, 2)`` (u, v) and camera depths ``(P,)`` of world points ``(P, 3)`` in one view.

    One view at a time keeps memory at ``O(P)`` for large voxel grids.
    """
    cam = points @ cameras.world_to_camera[view, :3, :3].T + cameras.world_to_camera[view, :3, 3]
    pix = cam @ cameras.K[view].T
    return pix[:, :2] / pix[:, 2:3], cam[:, 2]


def visual_hull(masks: np.ndarray, cameras: OrbitCameras, resolution: int, bound: float,
                max_misses: int = 0) -> np.ndarray:
    """Space carving: voxels whose centre projects onto the object in (almost) every view.

    A voxel that falls outside an image counts as a miss too (the convention keeps the
    object in frame).

    Args:
        masks: ``(V, H, W)`` in [0, 1].
        cameras: the ``V`` cameras.
        resolution: voxels per axis over ``[-bound, bound]`` (world units).
        max_misses: views allowed to disagree (tolerates a few imperfect masks).

    Returns:
        bool occupancy ``(R, R, R)`` indexed ``[x, y, z]`` as :func:`grid_points`.
    """
    points = grid_points(resolution, bound).reshape(-1, 3)
    misses = np.zeros(len(points), dtype=np.int64)
    for view in range(len(masks)):
        on_object, _ = sample_views(masks[view:view + 1] > 0.5, project_view(cameras, view, points)[0][None])
        misses += ~on_object[0]
    return (misses <= max_misses).reshape(resolution, resolution, resolution)


def hull_surface(occupancy: np.ndarray) -> np.ndarray:
    """Occupied voxels with at least one empty 6-neighbour (grid borders count as empty), bool ``(R, R, R)``."""
    padded = np.pad(occupancy, 1)
    interior = occupancy.copy()
    for axis in range(3):
        for shift in (-1, 1):
            interior &= np.roll(padded, shift, axis=axis)[1:-1, 1:-1, 1:-1]
    return occupancy & ~interior


def init_from_views(images: np.ndarray, masks: np.ndarray, cameras: OrbitCameras, count: int,
                    generator: torch.Generator, resolution: int = 64, bound: float = 0.75,
                    max_misses: int = 1, opacity: float = 0.5) -> GaussianScene:
    """Gaussians on the surface of the masks' visual hull, coloured from the views.

    ``count`` surface voxels are drawn (all of them when there are fewer), each Gaussian
    jittered uniformly inside its voxel, isotropic with a standard deviation of the voxel
    size, and coloured with the mean colour of the views that see the voxel on the object
    (occlusion ignored: optimisation corrects the colours within a few steps).

    Args:
        images: ``(V, H, W, 3)`` in [0, 1] on white.
        masks: ``(V, H, W)`` in [0, 1].
        cameras: the ``V`` cameras.
        count: the most Gaussians to create.
        generator: source of all randomness (CPU generator).
        resolution, bound: carving grid, voxels per axis over ``[-bound, bound]`` world units.
        max_misses: see :func:`visual_hull`.
        opacity: initial opacity of every Gaussian.

    Raises:
        ValueError: when the hull is empty (the masks and cameras contradict each other).
    """
    occupancy = visual_hull(masks, cameras, resolution, bound, max_misses)
    surface = np.argwhere(hull_surface(occupancy))
    if len(surface) == 0:
        raise ValueError(f"the visual hull of the {len(masks)} masks is empty: the masks and cameras disagree "
                         "(check the elevation and the camera convention hi3d-orbit-v1)")
    pick = torch.randperm(len(surface), generator=generator)[:count].numpy()
    voxel = 2.0 * bound / resolution
    jitter = torch.rand(len(pick), 3, generator=generator, dtype=torch.float64).numpy() - 0.5
    centres = (surface[pick] + 0.5 + jitter) * voxel - bound
    uv, _ = cameras.project(centres)
    colours, _ = sample_views(images, uv)
    on_object, _ = sample_views(masks > 0.5, uv)
    weight = on_object[..., None].astype(np.float64)
    mean_colour = (colours * weight).sum(axis=0) / np.maximum(weight.sum(axis=0), 1.0)
    n = len(pick)
    return GaussianScene(
        means=torch.tensor(centres, dtype=torch.float32),
        log_scales=torch.full((n, 3), math.log(voxel), dtype=torch.float32),
        quats=torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(n, 1),
        opacity_logits=_logit(torch.full((n,), opacity)),
        color_logits=_logit(torch.tensor(mean_colour, dtype=torch.float32)),
    )
