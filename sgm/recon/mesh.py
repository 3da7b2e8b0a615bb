"""Mesh extraction: depth maps fused into a truncated signed distance volume, then marching tetrahedra.

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

Surface: marching tetrahedra on the voxel grid (each cube cut into the six tetrahedra around
its main diagonal, the same cut in every cube, so neighbouring cubes share faces and the
mesh is closed). It needs only a 16-case table, derived below instead of tabulated.
Connected components whose face count is below a fraction of the largest one are removed.
Vertex colours come from the views that see each vertex (:func:`color_vertices`).
"""
from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from sgm.modules.diffusionmodules.sampling import StepCallback
from sgm.recon.cameras import OrbitCameras
from sgm.recon.export import Mesh
from sgm.recon.gaussians import grid_points, project_view, sample_views

# Cube corners as (dx, dy, dz); the six tetrahedra around the diagonal corner 0 -> corner 7.
CUBE_CORNERS = np.array([[i, j, k] for k in (0, 1) for j in (0, 1) for i in (0, 1)])
CUBE_TETRAHEDRA = np.array([
    [0, 1 << a, (1 << a) | (1 << b), 7] for a, b in itertools.permutations(range(3), 2)
])


def _tetra_cases() -> list[list[tuple[tuple[int, int], ...]]]:
    """For each of the 16 inside/outside patterns of a tetrahedron's corners, its triangles as edge triples.

    Bit ``i`` of the pattern is set when corner ``i`` is outside (value above the level).
    An edge is a pair of corner numbers (outside, inside). Orientation is fixed later.
    """
    cases = []
    for pattern in range(16):
        out = [i for i in range(4) if pattern >> i & 1]
        ins = [i for i in range(4) if not pattern >> i & 1]
        if len(out) in (0, 4):
            cases.append([])
        elif len(out) == 1 or len(ins) == 1:
            lone, rest = (out[0], ins) if len(out) == 1 else (ins[0], out)
            cases.append([tuple((lone, r) if len(out) == 1 else (r, lone) for r in rest)])
        else:  # two and two: a quadrilateral o0i0, o0i1, o1i1, o1i0 cut in two triangles
            (o0, o1), (i0, i1) = out, ins
            cases.append([((o0, i0), (o0, i1), (o1, i1)), ((o0, i0), (o1, i1), (o1, i0))])
    return cases


TETRA_CASES = _tetra_cases()


def _grid_coords(flat_ids: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Integer grid coordinates ``(..., 3)`` (as float) of flat sample indices ``(...)``."""
    return np.stack(np.unravel_index(flat_ids, shape), axis=-1).astype(np.float64)


def marching_tetrahedra(values: np.ndarray, origin: np.ndarray, spacing: float, level: float = 0.0) -> Mesh:
    """Closed triangle mesh of the level set ``values == level`` of a sampled field.

    Args:
        values: ``(X, Y, Z)`` samples at ``origin + spacing * (i, j, k)`` (world units);
            values above ``level`` are outside. Samples exactly at the level are nudged
            outward by 1e-9 so every crossing lies strictly inside an edge.
        origin: ``(3,)`` position of sample ``(0, 0, 0)``.
        spacing: distance between samples.

    Returns:
        A :class:`Mesh` without colours, faces counter-clockwise seen from outside (empty
        arrays when the field never crosses the level).
    """
    v = np.where(values == level, level + 1e-9, values).astype(np.float64)
    outside = v > level
    shape = np.array(v.shape)
    corner_flags = np.stack([outside[dx:shape[0] - 1 + dx, dy:shape[1] - 1 + dy, dz:shape[2] - 1 + dz]
                             for dx, dy, dz in CUBE_CORNERS], axis=-1)
    active = np.argwhere(corner_flags.any(axis=-1) & ~corner_flags.all(axis=-1))
    if len(active) == 0:
        return Mesh(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64))
    strides = np.array([shape[1] * shape[2], shape[2], 1])
    corner_ids = (active[:, None, :] + CUBE_CORNERS[None]) @ strides  # (C, 8) flat sample ids
    tet_ids = corner_ids[:, CUBE_TETRAHEDRA].reshape(-1, 4)  # (T, 4)
    flat_out, flat_v = outside.reshape(-1), v.reshape(-1)
    pattern = (flat_out[tet_ids] * (1 << np.arange(4))).sum(axis=1)
    edges_a, edges_b, tet_of_face = [], [], []
    for case, triangles in enumerate(TETRA_CASES):
        tets = np.nonzero(pattern == case)[0]
        for triangle in triangles:
            edges_a.append(np.stack([tet_ids[tets, o] for o, _ in triangle], axis=1))
            edges_b.append(np.stack([tet_ids[tets, i] for _, i in triangle], axis=1))
            tet_of_face.append(tets)
    out_ids, in_ids, tet_of_face = np.concatenate(edges_a), np.concatenate(edges_b), np.concatenate(tet_of_face)
    # One vertex per crossed grid edge, shared by every triangle that uses the edge.
    keys = out_ids.astype(np.int64) * flat_v.size + in_ids
    unique_keys, faces = np.unique(keys.reshape(-1), return_inverse=True)
    faces = faces.reshape(-1, 3)
    a, b = unique_keys // flat_v.size, unique_keys % flat_v.size
    t = (level - flat_v[b]) / (flat_v[a] - flat_v[b])
    coords_a, coords_b = _grid_coords(a, v.shape), _grid_coords(b, v.shape)
    vertices = origin + spacing * (coords_b + t[:, None] * (coords_a - coords_b))
    # Orient each triangle so its normal points from the tetrahedron's inside corners to its outside ones.
    tet_corners = _grid_coords(tet_ids[tet_of_face], v.shape)  # (F, 4, 3)
    tet_out = flat_out[tet_ids[tet_of_face]][..., None]
    direction = ((tet_corners * tet_out).sum(1) / tet_out.sum(1) - (tet_corners * ~tet_out).sum(1) / (~tet_out).sum(1))
    tri = vertices[faces]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    flip = np.einsum("fi,fi->f", normal, direction) < 0
    faces[flip] = faces[flip][:, ::-1]
    return Mesh(vertices, faces.astype(np.int64))


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


def color_vertices(mesh: Mesh, colors: np.ndarray, depths: np.ndarray, cameras: OrbitCameras,
                   tolerance: float, sharpness: float = 4.0, callback: StepCallback | None = None) -> np.ndarray:
    """Vertex colours ``(M, 3)`` from the views that see each vertex.

    A view sees a vertex when the vertex faces it and its camera depth is within ``tolerance``
    (world units) of the view's depth map at its pixel. The colours of those views are
    averaged with weights ``cos(angle between normal and view ray) ** sharpness``, so
    frontal views dominate and grazing ones, which smear texture, count little. Vertices
    that no view sees take the mean colour of their coloured neighbours, spread over the
    mesh until all are coloured (mid grey if none is).

    Args:
        colors: ``(V, H, W, 3)`` RGB in [0, 1]; depths: ``(V, H, W)`` world units (NaN = unknown).
        callback: called as ``callback(view_index, num_views)`` after each view's colours are gathered.
    """
    normals = mesh.vertex_normals()
    total, total_weight = np.zeros((len(mesh.vertices), 3)), np.zeros(len(mesh.vertices))
    for view in range(len(cameras)):
        uv, z = project_view(cameras, view, mesh.vertices)
        depth, inside = sample_views(depths[view:view + 1], uv[None])
        rgb, _ = sample_views(colors[view:view + 1], uv[None])
        to_camera = cameras.centers[view] - mesh.vertices
        cosine = np.einsum("mi,mi->m", normals, to_camera) / np.linalg.norm(to_camera, axis=1)
        seen = inside[0] & (np.abs(depth[0] - z) < tolerance) & (cosine > 0)
        w = np.where(seen, np.clip(cosine, 0.0, 1.0) ** sharpness, 0.0)
        total += w[:, None] * rgb[0]
        total_weight += w
        if callback is not None:
            callback(view, len(cameras))
    result = np.where(total_weight[:, None] > 0, total / np.maximum(total_weight, 1e-12)[:, None], 0.0)
    return _spread_colors(mesh.faces, result, total_weight > 0)


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


def mesh_from_volume(volume: TSDFVolume, min_component_fraction: float = 0.05) -> Mesh:
    """Zero level set of a fused volume (no colours), small fragments removed.

    Raises:
        ValueError: when the volume holds no surface.
    """
    mesh = marching_tetrahedra(volume.sdf, volume.origin, volume.spacing)
    if len(mesh.faces) == 0:
        raise ValueError("the fused volume holds no surface: no view saw the object in front of the background")
    return remove_small_components(mesh, min_component_fraction)


def mesh_from_sdf(sdf: Callable[[np.ndarray], np.ndarray], resolution: int = 128, bound: float = 0.75) -> Mesh:
    """Mesh of the zero level set of a signed distance function (negative inside) sampled on voxel centres.

    Args:
        sdf: maps world points ``(P, 3)`` to distances ``(P,)``.
        resolution: samples per axis over ``[-bound, bound]`` (world units).
    """
    points = grid_points(resolution, bound)
    values = sdf(points.reshape(-1, 3)).reshape(points.shape[:3])
    spacing = 2.0 * bound / resolution
    return marching_tetrahedra(values, np.full(3, -bound + 0.5 * spacing), spacing)
