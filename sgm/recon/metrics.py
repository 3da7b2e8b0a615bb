"""The paper's 3D measures: PSNR / SSIM of views, Chamfer distance and volume IoU of meshes.

Image measures take RGB in [0, 1] (views composited on white, as the pipeline writes them).
SSIM is Wang et al. (2004): an 11 x 11 Gaussian window of standard deviation 1.5 pixels,
``C1 = 0.01^2``, ``C2 = 0.03^2``, computed per channel over the valid (unpadded) window
positions and averaged.

Mesh measures first apply the standard normalisation of image-to-3D evaluations
(SyncDreamer, Wonder3D, Hi3D): each mesh is translated so that its axis-aligned bounding box
is centred at the origin and scaled uniformly so that the box's longest side is 1 (also the
object scale of the camera convention). No rotation is fitted: both meshes are in the
camera convention's world frame. Then

* Chamfer distance: ``N`` points are drawn on each surface (uniform by area, seeded), and
  the distance is the mean of the two one-way means of nearest-neighbour Euclidean
  distances, ``(mean_a min_b |a - b| + mean_b min_a |a - b|) / 2``, in normalised units.
* Volume IoU: both solids are voxelised on the same ``R^3`` grid over ``[-0.55, 0.55]^3``
  (inside = odd number of surface crossings along the +z line through the voxel centre),
  and IoU = |A and B| / |A or B|.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from sgm.recon.export import Mesh
from sgm.recon.mesh import mesh_from_sdf

IOU_BOUND = 0.55


def psnr(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> np.ndarray:
    """PSNR in dB of each image pair, ``(V, H, W, 3)`` in [0, 1] -> ``(V,)``."""
    pred, target = torch.as_tensor(pred, dtype=torch.float64), torch.as_tensor(target, dtype=torch.float64)
    mse = ((pred - target) ** 2).flatten(1).mean(dim=1).clamp(min=1e-12)
    return (-10.0 * torch.log10(mse)).numpy()


def _gaussian_window(size: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    x = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    return g / g.sum()


def ssim(pred: torch.Tensor, target: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Differentiable mean SSIM of each image pair, ``(B, C, H, W)`` in [0, 1] -> ``(B,)``."""
    g = _gaussian_window(window, sigma, pred)
    channels = pred.shape[1]
    kernel_x = g.reshape(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    kernel_y = g.reshape(1, 1, -1, 1).repeat(channels, 1, 1, 1)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(x, kernel_x, groups=channels), kernel_y, groups=channels)

    mu_p, mu_t = blur(pred), blur(target)
    var_p = blur(pred * pred) - mu_p ** 2
    var_t = blur(target * target) - mu_t ** 2
    cov = blur(pred * target) - mu_p * mu_t
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    value = ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p ** 2 + mu_t ** 2 + c1) * (var_p + var_t + c2))
    return value.flatten(1).mean(dim=1)


def image_metrics(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Mean PSNR (dB) and SSIM over view pairs ``(V, H, W, 3)`` in [0, 1]."""
    ssim_values = ssim(torch.as_tensor(pred, dtype=torch.float64).permute(0, 3, 1, 2),
                       torch.as_tensor(target, dtype=torch.float64).permute(0, 3, 1, 2))
    return {"psnr": float(psnr(pred, target).mean()), "ssim": float(ssim_values.mean()), "num_views": len(pred)}


def normalize_mesh(mesh: Mesh) -> Mesh:
    """The mesh with its bounding box centred at the origin and its longest side scaled to 1."""
    lo, hi = mesh.vertices.min(axis=0), mesh.vertices.max(axis=0)
    extent = float((hi - lo).max())
    if extent <= 0:
        raise ValueError("cannot normalise a mesh whose bounding box is a point")
    return Mesh((mesh.vertices - (lo + hi) / 2) / extent, mesh.faces, mesh.colors)


def sdf_surface(spec, resolution: int = 128) -> Mesh:
    """The true surface of a procedural object: the zero level set of ``spec.sdf`` (an
    :class:`~sgm.data.synthetic_orbits.ObjectSpec`, world units) through marching tetrahedra on a
    ``resolution^3`` grid (:func:`~sgm.recon.mesh.mesh_from_sdf`)."""
    return mesh_from_sdf(lambda p: spec.sdf(torch.as_tensor(p, dtype=torch.float64)).numpy(), resolution)


def sample_surface(mesh: Mesh, count: int, generator: torch.Generator) -> np.ndarray:
    """``count`` points drawn uniformly by area on the triangles, ``(count, 3)``."""
    areas = np.linalg.norm(mesh.face_normals(), axis=1)
    if areas.sum() <= 0:
        raise ValueError("cannot sample a mesh of zero area")
    face = torch.multinomial(torch.as_tensor(areas), count, replacement=True, generator=generator).numpy()
    r = torch.rand(count, 2, generator=generator, dtype=torch.float64).numpy()
    flip = r.sum(axis=1) > 1
    r[flip] = 1 - r[flip]
    v = mesh.vertices[mesh.faces[face]]
    return v[:, 0] + r[:, :1] * (v[:, 1] - v[:, 0]) + r[:, 1:] * (v[:, 2] - v[:, 0])


def nearest_distances(source: np.ndarray, target: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Distance from each ``source`` point ``(P, 3)`` to its nearest ``target`` point ``(Q, 3)`` -> ``(P,)``."""
    target_t = torch.as_tensor(target, dtype=torch.float32)
    out = [torch.cdist(torch.as_tensor(part, dtype=torch.float32), target_t).min(dim=1).values
           for part in np.array_split(source, max(1, len(source) // chunk))]
    return torch.cat(out).double().numpy()


def chamfer_distance(points_a: np.ndarray, points_b: np.ndarray) -> float:
    """Symmetric mean nearest-neighbour distance between point sets ``(P, 3)`` and ``(Q, 3)``."""
    return float(0.5 * (nearest_distances(points_a, points_b).mean() + nearest_distances(points_b, points_a).mean()))


def voxelize(mesh: Mesh, resolution: int, bound: float = IOU_BOUND) -> np.ndarray:
    """Solid occupancy of a closed mesh on the voxel centres of ``[-bound, bound]^3``, bool ``(R, R, R)`` [x, y, z].

    Each column of voxel centres (fixed x, y) is a line along +z; a voxel is inside when
    the surface crosses the line an odd number of times above it. Column positions are
    shifted by a tiny irrational fraction of a voxel so lines miss mesh edges.
    """
    step = 2.0 * bound / resolution
    axis = (np.arange(resolution) + 0.5) * step - bound
    tri = mesh.vertices[mesh.faces]
    xy = tri[..., :2] + np.array([1e-4 * np.sqrt(2), 1e-4 * np.sqrt(3)]) * step
    lo = np.ceil((xy.min(axis=1) + bound) / step - 0.5).astype(np.int64).clip(0, resolution)
    hi = np.floor((xy.max(axis=1) + bound) / step - 0.5).astype(np.int64).clip(-1, resolution - 1)
    nx, ny = (hi - lo + 1).clip(min=0).T
    counts = nx * ny
    face = np.repeat(np.arange(len(tri)), counts)
    local = np.arange(len(face)) - np.repeat(np.cumsum(counts) - counts, counts)
    ix, iy = lo[face, 0] + local % nx[face], lo[face, 1] + local // nx[face]
    px, py = axis[ix], axis[iy]
    a, b, c = (xy[face, k] for k in range(3))
    # Barycentric coordinates of the column in the triangle's xy projection.
    det = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (c[:, 0] - a[:, 0]) * (b[:, 1] - a[:, 1])
    ok = np.abs(det) > 1e-18
    det = np.where(ok, det, 1.0)
    w1 = ((px - a[:, 0]) * (c[:, 1] - a[:, 1]) - (c[:, 0] - a[:, 0]) * (py - a[:, 1])) / det
    w2 = ((b[:, 0] - a[:, 0]) * (py - a[:, 1]) - (px - a[:, 0]) * (b[:, 1] - a[:, 1])) / det
    hit = ok & (w1 >= 0) & (w2 >= 0) & (w1 + w2 <= 1)
    z = (tri[face, 0, 2] + w1 * (tri[face, 1, 2] - tri[face, 0, 2]) + w2 * (tri[face, 2, 2] - tri[face, 0, 2]))[hit]
    # Crossings at height z lie above the voxels with centre below z: count them per column.
    first_above = np.searchsorted(axis, z)
    crossings = np.zeros((resolution, resolution, resolution + 1), dtype=np.int64)
    np.add.at(crossings, (ix[hit], iy[hit], first_above), 1)
    above = np.cumsum(crossings[..., ::-1], axis=-1)[..., ::-1][..., 1:]
    return above % 2 == 1


def volume_iou(mesh_a: Mesh, mesh_b: Mesh, resolution: int = 64, bound: float = IOU_BOUND) -> float:
    """IoU of the voxelised solids of two closed meshes on a shared grid."""
    a, b = voxelize(mesh_a, resolution, bound), voxelize(mesh_b, resolution, bound)
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def mesh_metrics(pred: Mesh, target: Mesh, num_points: int = 20000, resolution: int = 64, seed: int = 0,
                 normalize: bool = True) -> dict[str, float]:
    """Chamfer distance and volume IoU of ``pred`` against ``target`` (normalised first unless told not to)."""
    if normalize:
        pred, target = normalize_mesh(pred), normalize_mesh(target)
    generator = torch.Generator().manual_seed(seed)
    points_pred, points_target = (sample_surface(m, num_points, generator) for m in (pred, target))
    chamfer = chamfer_distance(points_pred, points_target)
    return {"chamfer": chamfer, "volume_iou": volume_iou(pred, target, resolution), "num_points": num_points,
            "iou_resolution": resolution, "normalized": normalize}
