"""A UV atlas for a mesh (``xatlas``) and a colour texture baked into it from the views.

Texture convention (glTF through trimesh): ``uv`` in [0, 1], ``v`` upwards; texel ``(row, col)`` of
a ``size`` x ``size`` image has its centre at ``u = (col + 0.5) / size``, ``v = 1 - (row + 0.5) / size``.

Baking: every texel that a triangle of the atlas covers (its centre inside the triangle) is the
image of one surface point; that point takes the colour of the views that see it
(:func:`sgm.recon.mesh.view_colors`, the same rule as the vertex colours), or, where no view sees
it, the vertex colours interpolated across its triangle (the fallback). Texels outside every
triangle take the colour of the nearest covered texel, so filtering and mipmaps do not bleed the
background into the seams.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from sgm.common.progress import StepCallback
from sgm.recon.cameras import OrbitCameras
from sgm.recon.export import Mesh
from sgm.recon.mesh import view_colors


def unwrap(mesh: Mesh) -> Mesh:
    """``mesh`` with a UV atlas: vertices are split along the atlas seams (vertex colours follow).

    Returns:
        A :class:`Mesh` with ``uv`` ``(M', 2)`` in [0, 1] (``v`` up) and ``M' >= M`` vertices.
    """
    import xatlas

    mapping, faces, uv = xatlas.parametrize(mesh.vertices.astype(np.float32), mesh.faces.astype(np.uint32))
    colors = None if mesh.colors is None else mesh.colors[mapping]
    return Mesh(mesh.vertices[mapping], faces.astype(np.int64), colors, uv=uv.astype(np.float64))


@dataclass(frozen=True)
class Texels:
    """The texels covered by a mesh's UV triangles.

    Attributes:
        rows, cols: ``(K,)`` texel coordinates.
        faces: ``(K,)`` the triangle covering each texel.
        weights: ``(K, 3)`` barycentric weights of the texel centre in that triangle.
    """

    rows: np.ndarray
    cols: np.ndarray
    faces: np.ndarray
    weights: np.ndarray

    def interpolate(self, faces: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Per-vertex ``values`` ``(M, C)`` interpolated at the texels, ``(K, C)``."""
        return np.einsum("kc,kcd->kd", self.weights, values[faces[self.faces]])


def covered_texels(uv: np.ndarray, faces: np.ndarray, size: int) -> Texels:
    """The texels of a ``size`` x ``size`` image whose centres lie in a UV triangle (edges included).

    Vectorised over triangles: each triangle's bounding box of texel centres is enumerated and
    tested with barycentric coordinates.
    """
    # texel-centre coordinates: x = u * size - 0.5 (column), y = (1 - v) * size - 0.5 (row)
    corners = np.stack([uv[faces][..., 0] * size - 0.5, (1.0 - uv[faces][..., 1]) * size - 0.5], axis=-1)
    low = np.clip(np.ceil(corners.min(axis=1) - 1e-9), 0, size - 1).astype(np.int64)
    high = np.clip(np.floor(corners.max(axis=1) + 1e-9), 0, size - 1).astype(np.int64)
    extent = np.maximum(high - low + 1, 0)
    counts = extent[:, 0] * extent[:, 1]
    face = np.repeat(np.arange(len(faces)), counts)
    offset = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    cols = low[face, 0] + offset % extent[face, 0]
    rows = low[face, 1] + offset // extent[face, 0]
    a, b, c = corners[face, 0], corners[face, 1], corners[face, 2]
    point = np.stack([cols, rows], axis=-1).astype(np.float64)
    e1, e2, d = b - a, c - a, point - a
    det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    safe = np.where(np.abs(det) > 1e-12, det, 1.0)
    w1 = (d[:, 0] * e2[:, 1] - d[:, 1] * e2[:, 0]) / safe
    w2 = (e1[:, 0] * d[:, 1] - e1[:, 1] * d[:, 0]) / safe
    weights = np.stack([1.0 - w1 - w2, w1, w2], axis=-1)
    inside = (np.abs(det) > 1e-12) & np.all(weights >= -1e-6, axis=-1)
    return Texels(rows[inside], cols[inside], face[inside], weights[inside])


def fill_gutters(texture: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """Give every texel outside ``covered`` ``(S, S)`` the value of the nearest covered texel."""
    if covered.all() or not covered.any():
        return texture
    _, (rows, cols) = ndimage.distance_transform_edt(~covered, return_indices=True)
    return texture[rows, cols]


def bake_texture(mesh: Mesh, colors: np.ndarray, depths: np.ndarray, cameras: OrbitCameras, tolerance: float,
                 size: int = 1024, callback: StepCallback | None = None) -> Mesh:
    """Bake the views' colours into a texture over the UV atlas of ``mesh`` (see the module docstring).

    Args:
        mesh: a mesh with ``uv`` (:func:`unwrap`) and vertex colours (the fallback where no view sees).
        colors: ``(V, H, W, 3)`` RGB in [0, 1]; depths: ``(V, H, W)`` world units (NaN = unknown).
        cameras: the ``V`` cameras; tolerance: depth test, world units.
        size: texture side, texels.
        callback: called as ``callback(view_index, num_views)`` after each view.

    Returns:
        ``mesh`` with ``texture`` uint8 ``(size, size, 3)``.
    """
    if mesh.uv is None:
        raise ValueError("bake_texture needs a mesh with UV coordinates (unwrap it first)")
    texels = covered_texels(mesh.uv, mesh.faces, size)
    points = texels.interpolate(mesh.faces, mesh.vertices)
    normals = mesh.face_normals()[texels.faces]
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    rgb, weight = view_colors(points, normals, colors, depths, cameras, tolerance, callback=callback)
    if mesh.colors is not None:
        fallback = texels.interpolate(mesh.faces, mesh.colors)
        rgb = np.where(weight[:, None] > 0, rgb, fallback)
    texture = np.zeros((size, size, 3))
    covered = np.zeros((size, size), dtype=bool)
    texture[texels.rows, texels.cols] = rgb
    covered[texels.rows, texels.cols] = True
    pixels = np.round(np.clip(fill_gutters(texture, covered), 0.0, 1.0) * 255).astype(np.uint8)
    return Mesh(mesh.vertices, mesh.faces, mesh.colors, uv=mesh.uv, texture=pixels)
