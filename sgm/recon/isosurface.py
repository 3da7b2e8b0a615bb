"""Surfaces of sampled scalar fields: the level set ``values == level`` of a voxel grid as triangles.

Two extractors with one signature, ``(values, origin, spacing, level) -> Mesh``, both giving
faces counter-clockwise seen from outside (values above the level are outside):

- :func:`marching_cubes` (the default of the 3D step): scikit-image's Lewiner marching cubes,
  compiled; 8-18x faster than the tetrahedra on 128^3 and 256^3 grids with a third of the faces
  (``benchmarks/bench_marching.py``, BENCHMARKS.md).
- :func:`marching_tetrahedra`: each cube cut into the six tetrahedra around its main diagonal
  (the same cut in every cube, so neighbouring cubes share faces and the mesh is closed); it
  needs only a 16-case table, derived below instead of tabulated. Plain numpy.
"""
from __future__ import annotations

import itertools

import numpy as np

from sgm.recon.export import Mesh

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


def marching_cubes(values: np.ndarray, origin: np.ndarray, spacing: float, level: float = 0.0) -> Mesh:
    """Triangle mesh of the level set ``values == level`` by scikit-image's marching cubes (Lewiner).

    Args:
        values: ``(X, Y, Z)`` samples at ``origin + spacing * (i, j, k)`` (world units); values
            above ``level`` are outside.
        origin: ``(3,)`` position of sample ``(0, 0, 0)``.
        spacing: distance between samples.

    Returns:
        A :class:`Mesh` without colours, faces counter-clockwise seen from outside (empty arrays
        when the field never crosses the level).
    """
    from skimage.measure import marching_cubes as lewiner

    if not values.min() < level < values.max():
        return Mesh(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64))
    # 'descent': the gradient points from the inside (low values) to the outside, so faces face outward
    vertices, faces, _, _ = lewiner(np.asarray(values, dtype=np.float32), level, spacing=(spacing,) * 3,
                                    gradient_direction="descent")
    return Mesh(np.asarray(origin, dtype=np.float64) + vertices.astype(np.float64), faces.astype(np.int64))


EXTRACTORS = {"cubes": marching_cubes, "tetrahedra": marching_tetrahedra}
