"""Mesh extraction: depth maps fused into a truncated signed distance volume, then its zero level set.

Why this method: each view's depth map (rendered from the fitted Gaussians, see
:meth:`sgm.recon.rasterize.Rendered.surface_depth`) and its silhouette say, along every
pixel ray, where the surface is and that the space in front of it is empty. A truncated
signed distance function (TSDF) averages these one-view distances over many views, so noise
in single depth maps cancels, and rays that miss the object carve free space, so the
silhouettes are respected. The zero level set of the averaged field is the surface.

Fusion (per voxel centre ``p`` and view): ``d = depth(pixel of p) - z(p)`` (world units).
Background pixels and points outside the image count as ``d = +inf`` (the convention keeps
the object in frame). Where ``d >= -truncation`` the view adds ``clamp(d / truncation, -1,
1)`` to a running mean; where ``d < -truncation`` the point is hidden behind the surface and
the view says nothing.

Robustness to pinholes: a rendered depth map can have pixels that see through a gap in the
surface to the far side. Such a pixel marks a whole line through the solid as free space,
and since every other view sees those voxels as hidden (no vote), that one view would carve
a tunnel. So a voxel is taken as empty only with enough evidence: a silhouette says so (a
background pixel or off-image, reliable since it comes from the masks), or a view puts it in
the surface band, or at least ``min_free_views`` views see it in front of their depth.
Otherwise, including voxels that no view says anything about (hidden everywhere, i.e. deep
inside), it is set to -1. Callers should also drop depth outliers before fusion
(:func:`reject_depth_outliers`; :func:`sgm.recon.reconstruct.fuse_mesh` does).

Surface: marching cubes on the voxel grid (or marching tetrahedra, :mod:`sgm.recon.isosurface`).
Connected components whose face count is below a fraction of the largest one are removed.
Colours come from the views that see each point (:func:`view_colors`): per vertex
(:func:`color_vertices`) and per texel (:mod:`sgm.recon.texture`).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from sgm.common.progress import StepCallback
from sgm.recon.cameras import OrbitCameras
from sgm.recon.export import Mesh
from sgm.recon.gaussians import grid_points, project_view, sample_views
from sgm.recon.isosurface import EXTRACTORS


def component_labels(num_vertices: int, faces: np.ndarray) -> np.ndarray:
    """Connected-component label (smallest vertex id in the component) of each vertex, ``(M,)``.

    Vectorised union-find: hook the larger root of every edge onto the smaller, then
    compress paths fully, until no edge joins two roots.
    """
    labels = np.arange(num_vertices)
    a = np.concatenate([faces[:, 0], faces[:, 1], faces[:, 2]])
    b = np.concatenate([faces[:, 1], faces[:, 2], faces[:, 0]])
    while True:
        la, lb = labels[a], labels[b]
        differ = la != lb
        if not differ.any():
            return labels
        np.minimum.at(labels, np.maximum(la[differ], lb[differ]), np.minimum(la[differ], lb[differ]))
        while True:
            parent = labels[labels]
            if np.array_equal(parent, labels):
                break
            labels = parent


def remove_small_components(mesh: Mesh, min_fraction: float = 0.05) -> Mesh:
    """Drop connected pieces with fewer faces than ``min_fraction`` of the largest piece, and unused vertices."""
    if len(mesh.faces) == 0:
        return mesh
    face_label = component_labels(len(mesh.vertices), mesh.faces)[mesh.faces[:, 0]]
    ids, sizes = np.unique(face_label, return_counts=True)
    kept_faces = mesh.faces[np.isin(face_label, ids[sizes >= min_fraction * sizes.max()])]
    used = np.unique(kept_faces)
    remap = np.full(len(mesh.vertices), -1)
    remap[used] = np.arange(len(used))
    colors = None if mesh.colors is None else mesh.colors[used]
    return Mesh(mesh.vertices[used], remap[kept_faces], colors)


@dataclass(frozen=True)
class TSDFVolume:
    """A fused volume on the voxel centres of ``[-bound, bound]^3``.

    Attributes:
        sdf: ``(R, R, R)`` truncated distance in units of the truncation, in [-1, 1].
        bound: half side of the cube, world units.
    """

    sdf: np.ndarray
    bound: float

    @property
    def spacing(self) -> float:
        return 2.0 * self.bound / self.sdf.shape[0]

    @property
    def origin(self) -> np.ndarray:
        return np.full(3, -self.bound + 0.5 * self.spacing)


def fuse_depths(depths: np.ndarray, foreground: np.ndarray, cameras: OrbitCameras, resolution: int = 128,
                bound: float = 0.75, truncation_voxels: float = 3.0, min_free_views: int = 3,
                callback: StepCallback | None = None) -> TSDFVolume:
    """Fuse per-view depth maps into a TSDF (see the module docstring).

    Args:
        depths: ``(V, H, W)`` camera depth of the surface along each pixel's optical axis, world
            units; NaN on a foreground pixel whose depth is unknown (that pixel then says nothing).
        foreground: ``(V, H, W)`` bool, True where the pixel sees the object (False = free space).
        cameras: the ``V`` cameras.
        resolution: voxels per axis; ``bound``: half side of the cube, world units.
        truncation_voxels: truncation distance in voxels.
        min_free_views: depth maps that must agree before a voxel with no other evidence is empty.
        callback: called as ``callback(view_index, num_views)`` after each view is fused.
    """
    points = grid_points(resolution, bound).reshape(-1, 3)
    truncation = truncation_voxels * 2.0 * bound / resolution
    sdf_sum, weight = np.zeros(len(points)), np.zeros(len(points))
    band_votes, silhouette_votes, depth_free_votes = (np.zeros(len(points), dtype=np.int64) for _ in range(3))
    for view in range(len(cameras)):
        uv, z = project_view(cameras, view, points)
        depth, inside = sample_views(depths[view:view + 1], uv[None])
        fg, _ = sample_views(foreground[view:view + 1], uv[None])
        on_object = inside[0] & fg[0]
        distance = np.where(on_object, depth[0] - z, np.inf)
        silhouette_votes += ~on_object
        depth_free_votes += on_object & (distance > truncation)
        band_votes += np.abs(distance) <= truncation
        informative = distance >= -truncation
        sdf_sum += np.where(informative, np.clip(distance / truncation, -1.0, 1.0), 0.0)
        weight += informative
        if callback is not None:
            callback(view, len(cameras))
    empty_evidence = (band_votes > 0) | (silhouette_votes > 0) | (depth_free_votes >= min_free_views)
    sdf = np.where(empty_evidence, sdf_sum / np.maximum(weight, 1), -1.0)
    return TSDFVolume(sdf.reshape((resolution,) * 3), bound)


def view_colors(points: np.ndarray, normals: np.ndarray, colors: np.ndarray, depths: np.ndarray,
                cameras: OrbitCameras, tolerance: float, sharpness: float = 4.0,
                callback: StepCallback | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Colours of surface points ``(P, 3)`` from the views that see them, and the total weight ``(P,)``.

    A view sees a point when the point faces it (unit ``normals`` ``(P, 3)``) and its camera depth
    is within ``tolerance`` (world units) of the view's depth map at its pixel. The colours of those
    views are averaged with weights ``cos(angle between normal and view ray) ** sharpness``, so
    frontal views dominate and grazing ones, which smear texture, count little. A point no view
    sees gets colour 0 and weight 0.

    Args:
        colors: ``(V, H, W, 3)`` RGB in [0, 1]; depths: ``(V, H, W)`` world units (NaN = unknown).
        callback: called as ``callback(view_index, num_views)`` after each view's colours are gathered.
    """
    total, total_weight = np.zeros((len(points), 3)), np.zeros(len(points))
    for view in range(len(cameras)):
        uv, z = project_view(cameras, view, points)
        depth, inside = sample_views(depths[view:view + 1], uv[None])
        rgb, _ = sample_views(colors[view:view + 1], uv[None])
        to_camera = cameras.centers[view] - points
        cosine = np.einsum("mi,mi->m", normals, to_camera) / np.linalg.norm(to_camera, axis=1)
        seen = inside[0] & (np.abs(depth[0] - z) < tolerance) & (cosine > 0)
        w = np.where(seen, np.clip(cosine, 0.0, 1.0) ** sharpness, 0.0)
        total += w[:, None] * rgb[0]
        total_weight += w
        if callback is not None:
            callback(view, len(cameras))
    result = np.where(total_weight[:, None] > 0, total / np.maximum(total_weight, 1e-12)[:, None], 0.0)
    return result, total_weight


def color_vertices(mesh: Mesh, colors: np.ndarray, depths: np.ndarray, cameras: OrbitCameras,
                   tolerance: float, sharpness: float = 4.0, callback: StepCallback | None = None) -> np.ndarray:
    """Vertex colours ``(M, 3)`` from the views that see each vertex (:func:`view_colors`).

    Vertices that no view sees take the mean colour of their coloured neighbours, spread over the
    mesh until all are coloured (mid grey if none is).

    Args:
        colors: ``(V, H, W, 3)`` RGB in [0, 1]; depths: ``(V, H, W)`` world units (NaN = unknown).
        callback: called as ``callback(view_index, num_views)`` after each view's colours are gathered.
    """
    result, weight = view_colors(mesh.vertices, mesh.vertex_normals(), colors, depths, cameras, tolerance,
                                 sharpness, callback)
    return _spread_colors(mesh.faces, result, weight > 0)


def _spread_colors(faces: np.ndarray, colors: np.ndarray, known: np.ndarray, max_rounds: int = 100) -> np.ndarray:
    """Give uncoloured vertices the mean of their coloured neighbours, round after round."""
    colors, known = colors.copy(), known.copy()
    a = np.concatenate([faces[:, 0], faces[:, 1], faces[:, 2], faces[:, 1], faces[:, 2], faces[:, 0]])
    b = np.concatenate([faces[:, 1], faces[:, 2], faces[:, 0], faces[:, 0], faces[:, 1], faces[:, 2]])
    for _ in range(max_rounds):
        if known.all() or not known.any():
            break
        sums, counts = np.zeros_like(colors), np.zeros(len(colors))
        np.add.at(sums, a, colors[b] * known[b, None])
        np.add.at(counts, a, known[b])
        newly = ~known & (counts > 0)
        colors[newly] = sums[newly] / counts[newly, None]
        known |= newly
    colors[~known] = 0.5
    return colors


def reject_depth_outliers(depths: np.ndarray, window: int = 9, tolerance: float = 0.05) -> np.ndarray:
    """Mark as unknown (NaN) the depths that lie far behind their neighbourhood.

    A pinhole in a rendered surface lets a pixel see the far side of the object; fused as is,
    its ray would carve a tunnel through the solid. A depth more than ``tolerance`` (world
    units) beyond the median of the known depths in its ``window`` x ``window`` neighbourhood
    becomes NaN. Depths in front of their neighbourhood are kept: they only add surface.

    Args:
        depths: ``(V, H, W)`` world units, NaN = unknown, values for background pixels are ignored
            only if they are NaN too (pass background as NaN).

    Returns:
        ``(V, H, W)`` float32 copy with the outliers set to NaN.
    """
    x = torch.from_numpy(np.ascontiguousarray(depths, dtype=np.float32))[:, None]
    pad = window // 2
    patches = F.unfold(F.pad(x, (pad, pad, pad, pad), value=float("nan")), window)
    median = patches.nanmedian(dim=1).values.reshape(depths.shape).numpy()
    return np.where(depths > median + tolerance, np.nan, depths).astype(np.float32)


def mesh_from_volume(volume: TSDFVolume, min_component_fraction: float = 0.05, method: str = "cubes") -> Mesh:
    """Zero level set of a fused volume (no colours), small fragments removed.

    ``method``: "cubes" or "tetrahedra" (:data:`sgm.recon.isosurface.EXTRACTORS`).

    Raises:
        ValueError: when the volume holds no surface, or for an unknown method.
    """
    mesh = _extractor(method)(volume.sdf, volume.origin, volume.spacing)
    if len(mesh.faces) == 0:
        raise ValueError("the fused volume holds no surface: no view saw the object in front of the background")
    return remove_small_components(mesh, min_component_fraction)


def mesh_from_sdf(sdf: Callable[[np.ndarray], np.ndarray], resolution: int = 128, bound: float = 0.75,
                  method: str = "tetrahedra") -> Mesh:
    """Mesh of the zero level set of a signed distance function (negative inside) sampled on voxel centres.

    Args:
        sdf: maps world points ``(P, 3)`` to distances ``(P,)``.
        resolution: samples per axis over ``[-bound, bound]`` (world units).
        method: "tetrahedra" or "cubes" (:data:`sgm.recon.isosurface.EXTRACTORS`).
    """
    points = grid_points(resolution, bound)
    values = sdf(points.reshape(-1, 3)).reshape(points.shape[:3])
    spacing = 2.0 * bound / resolution
    return _extractor(method)(values, np.full(3, -bound + 0.5 * spacing), spacing)


def _extractor(method: str):
    try:
        return EXTRACTORS[method]
    except KeyError:
        raise ValueError(f"unknown surface extraction {method!r}: choose one of {sorted(EXTRACTORS)}") from None
