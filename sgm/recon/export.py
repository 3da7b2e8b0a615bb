"""Triangle meshes with vertex colours or a texture: the :class:`Mesh` container and OBJ / GLB files.

Files are written Y-up, as glTF requires and most viewers assume for OBJ: a file point
``(X, Y, Z)`` is the world point ``(x, y, z)`` of :mod:`sgm.recon.cameras` (Z-up) as
``X = y, Y = z, Z = x``, a proper rotation. World +z (up) becomes +Y, and the input view's
camera (azimuth 0, on world +x) looks from file +Z, where viewers put their default
camera, with world +y (right in the input view) on file +X. :func:`read_mesh` undoes it.

OBJ carries colours as the common ``v x y z r g b`` extension (floats in [0, 1]). GLB is glTF 2.0
binary written through ``trimesh``: ``POSITION``, ``NORMAL``, indices, and either ``TEXCOORD_0``
with the texture as the material's base-colour PNG, or (a mesh without texture) ``COLOR_0`` vertex
colours; the material is unlit (``KHR_materials_unlit``: the colours already hold the views' shading).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Rows map world (x, y, z) to file axes: file = world @ WORLD_TO_FILE.T
WORLD_TO_FILE = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
UNLIT = "KHR_materials_unlit"


@dataclass(frozen=True)
class Mesh:
    """Triangles in world units (Z-up).

    Attributes:
        vertices: ``(M, 3)`` float.
        faces: ``(F, 3)`` int64 vertex indices, counter-clockwise seen from outside.
        colors: ``(M, 3)`` float RGB in [0, 1], or None.
        uv: ``(M, 2)`` texture coordinates in [0, 1] (``v`` up), or None.
        texture: ``(S, S, 3)`` uint8 RGB image that ``uv`` points into, or None.
    """

    vertices: np.ndarray
    faces: np.ndarray
    colors: np.ndarray | None = None
    uv: np.ndarray | None = None
    texture: np.ndarray | None = None

    def face_normals(self) -> np.ndarray:
        """Unnormalised face normals ``(F, 3)`` (length = twice the triangle area)."""
        v = self.vertices[self.faces]
        return np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])

    def area(self) -> float:
        """Total surface area, world units squared."""
        return float(0.5 * np.linalg.norm(self.face_normals(), axis=1).sum())

    def volume(self) -> float:
        """Enclosed signed volume (divergence theorem; meaningful for closed meshes), world units cubed."""
        v = self.vertices[self.faces]
        return float(np.einsum("fi,fi->f", v[:, 0], np.cross(v[:, 1], v[:, 2])).sum() / 6.0)

    def vertex_normals(self) -> np.ndarray:
        """Area-weighted unit vertex normals ``(M, 3)``."""
        normals = np.zeros_like(self.vertices, dtype=np.float64)
        face_n = self.face_normals()
        for corner in range(3):
            np.add.at(normals, self.faces[:, corner], face_n)
        return normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)


def write_obj(mesh: Mesh, path: str | Path) -> Path:
    """Write ``mesh`` as Wavefront OBJ (Y-up, vertex colours as ``v x y z r g b``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    points = mesh.vertices @ WORLD_TO_FILE.T
    with path.open("w") as handle:
        handle.write(f"# hi3d mesh: {len(points)} vertices, {len(mesh.faces)} faces, Y-up\n")
        if mesh.colors is None:
            np.savetxt(handle, points, fmt="v %.6f %.6f %.6f")
        else:
            np.savetxt(handle, np.hstack([points, np.clip(mesh.colors, 0, 1)]), fmt="v %.6f %.6f %.6f %.4f %.4f %.4f")
        np.savetxt(handle, mesh.faces + 1, fmt="f %d %d %d")
    return path


def read_obj(path: str | Path) -> Mesh:
    """Read vertices, optional vertex colours and faces (polygons fanned into triangles) of an OBJ file.

    Raises:
        ValueError: when the file has no vertex or no face.
    """
    vertices, colors, faces = [], [], []
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "v":
            vertices.append([float(x) for x in parts[1:4]])
            colors.append([float(x) for x in parts[4:7]] if len(parts) >= 7 else None)
        elif parts[0] == "f":
            ids = [int(p.split("/")[0]) for p in parts[1:]]
            ids = [i - 1 if i > 0 else len(vertices) + i for i in ids]
            faces.extend([ids[0], ids[k], ids[k + 1]] for k in range(1, len(ids) - 1))
    if not vertices or not faces:
        raise ValueError(f"{path} holds no triangle mesh ({len(vertices)} vertices, {len(faces)} faces)")
    has_colors = all(c is not None for c in colors)
    return Mesh(np.asarray(vertices) @ WORLD_TO_FILE, np.asarray(faces, dtype=np.int64),
                np.asarray(colors) if has_colors else None)


def _unlit(tree: dict) -> None:
    """trimesh ``tree_postprocessor``: mark every material unlit."""
    for material in tree.get("materials", []):
        material.setdefault("extensions", {})[UNLIT] = {}
    if tree.get("materials"):
        tree["extensionsUsed"] = sorted(set(tree.get("extensionsUsed", [])) | {UNLIT})


def write_glb(mesh: Mesh, path: str | Path) -> Path:
    """Write ``mesh`` as a binary glTF 2.0 file (Y-up; textured when it has ``uv`` and ``texture``,
    else with vertex colours; see the module docstring)."""
    import trimesh
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    points = mesh.vertices @ WORLD_TO_FILE.T
    if mesh.uv is not None and mesh.texture is not None:
        material = trimesh.visual.material.PBRMaterial(baseColorTexture=Image.fromarray(mesh.texture, "RGB"),
                                                       metallicFactor=0.0, roughnessFactor=1.0)
        visual = trimesh.visual.TextureVisuals(uv=mesh.uv, material=material)
    else:
        colors = np.ones_like(points) if mesh.colors is None else np.clip(mesh.colors, 0, 1)
        visual = trimesh.visual.ColorVisuals(vertex_colors=np.round(colors * 255).astype(np.uint8))
    shape = trimesh.Trimesh(points, mesh.faces, visual=visual, process=False)
    path.write_bytes(trimesh.exchange.gltf.export_glb(shape, include_normals=True, tree_postprocessor=_unlit))
    return path


def read_glb(path: str | Path) -> Mesh:
    """Read a GLB file's triangles (all of its meshes, merged) with their colours, UVs and texture.

    Vertex colours come from ``COLOR_0``, or are sampled from the texture at each vertex's UV.

    Raises:
        ValueError: when the file is not a glTF binary holding triangles.
    """
    import trimesh

    try:
        shape = trimesh.load(Path(path), file_type="glb", force="mesh", process=False)
    except Exception as err:  # noqa: BLE001 - trimesh raises many types for a damaged file
        raise ValueError(f"{path} is not a readable binary glTF file ({type(err).__name__}: {err})") from err
    if not isinstance(shape, trimesh.Trimesh) or len(shape.faces) == 0:
        raise ValueError(f"{path} holds no triangle mesh")
    visual, uv, texture = shape.visual, None, None
    if visual.kind == "texture" and getattr(visual, "uv", None) is not None:
        uv = np.asarray(visual.uv, dtype=np.float64)
        image = getattr(visual.material, "baseColorTexture", None)
        texture = None if image is None else np.asarray(image.convert("RGB"))
        visual = visual.to_color()
    colors = None
    if visual.kind == "vertex":
        colors = np.asarray(visual.vertex_colors)[:, :3].astype(np.float64) / 255.0
    return Mesh(np.asarray(shape.vertices, dtype=np.float64) @ WORLD_TO_FILE, np.asarray(shape.faces, dtype=np.int64),
                colors, uv, texture)


def read_mesh(path: str | Path) -> Mesh:
    """Read an ``.obj`` or ``.glb`` written Y-up, back in world (Z-up) coordinates.

    Raises:
        ValueError: for another suffix or an unreadable file.
        FileNotFoundError: when the file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mesh not found: {path}")
    if path.suffix.lower() == ".obj":
        return read_obj(path)
    if path.suffix.lower() == ".glb":
        return read_glb(path)
    raise ValueError(f"cannot read {path}: expected a .obj or .glb file")
