"""Triangle meshes with vertex colours: the :class:`Mesh` container and OBJ / GLB files.

Files are written Y-up, as glTF requires and most viewers assume for OBJ: a file point
``(X, Y, Z)`` is the world point ``(x, y, z)`` of :mod:`sgm.recon.cameras` (Z-up) as
``X = y, Y = z, Z = x``, a proper rotation. World +z (up) becomes +Y, and the input view's
camera (azimuth 0, on world +x) looks from file +Z, where viewers put their default
camera, with world +y (right in the input view) on file +X. :func:`read_mesh` undoes it.

OBJ carries colours as the common ``v x y z r g b`` extension (floats in [0, 1]); GLB is
glTF 2.0 binary with ``POSITION``, ``NORMAL``, ``COLOR_0`` and ``uint32`` indices, and an
unlit material (``KHR_materials_unlit``: the colours already hold the views' shading).
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Rows map world (x, y, z) to file axes: file = world @ WORLD_TO_FILE.T
WORLD_TO_FILE = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
GLB_MAGIC, GLB_VERSION = 0x46546C67, 2
CHUNK_JSON, CHUNK_BIN = 0x4E4F534A, 0x004E4942
ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963
FLOAT, UNSIGNED_INT = 5126, 5125


@dataclass(frozen=True)
class Mesh:
    """Triangles in world units (Z-up).

    Attributes:
        vertices: ``(M, 3)`` float.
        faces: ``(F, 3)`` int64 vertex indices, counter-clockwise seen from outside.
        colors: ``(M, 3)`` float RGB in [0, 1], or None.
    """

    vertices: np.ndarray
    faces: np.ndarray
    colors: np.ndarray | None = None

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


def _pad(data: bytes, fill: bytes) -> bytes:
    return data + fill * (-len(data) % 4)


def write_glb(mesh: Mesh, path: str | Path) -> Path:
    """Write ``mesh`` as a binary glTF 2.0 file (Y-up; see the module docstring)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    positions = (mesh.vertices @ WORLD_TO_FILE.T).astype(np.float32)
    normals = (mesh.vertex_normals() @ WORLD_TO_FILE.T).astype(np.float32)
    colors = (np.ones_like(positions) if mesh.colors is None else np.clip(mesh.colors, 0, 1)).astype(np.float32)
    indices = mesh.faces.astype(np.uint32).reshape(-1)
    blobs = [positions.tobytes(), normals.tobytes(), colors.tobytes(), indices.tobytes()]
    offsets = np.cumsum([0] + [len(b) for b in blobs[:-1]]).tolist()
    views = [{"buffer": 0, "byteOffset": o, "byteLength": len(b), "target": t}
             for o, b, t in zip(offsets, blobs, [ARRAY_BUFFER] * 3 + [ELEMENT_ARRAY_BUFFER])]
    accessors = [
        {"bufferView": 0, "componentType": FLOAT, "count": len(positions), "type": "VEC3",
         "min": positions.min(axis=0).tolist(), "max": positions.max(axis=0).tolist()},
        {"bufferView": 1, "componentType": FLOAT, "count": len(normals), "type": "VEC3"},
        {"bufferView": 2, "componentType": FLOAT, "count": len(colors), "type": "VEC3"},
        {"bufferView": 3, "componentType": UNSIGNED_INT, "count": len(indices), "type": "SCALAR"},
    ]
    document = {
        "asset": {"version": "2.0", "generator": "hi3d sgm.recon.export"},
        "extensionsUsed": ["KHR_materials_unlit"],
        "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0, "name": "hi3d"}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0, "NORMAL": 1, "COLOR_0": 2}, "indices": 3,
                                    "material": 0, "mode": 4}]}],
        "materials": [{"pbrMetallicRoughness": {"baseColorFactor": [1, 1, 1, 1], "metallicFactor": 0.0,
                                                "roughnessFactor": 1.0},
                       "extensions": {"KHR_materials_unlit": {}}}],
        "buffers": [{"byteLength": sum(len(b) for b in blobs)}],
        "bufferViews": views, "accessors": accessors,
    }
    json_chunk = _pad(json.dumps(document, separators=(",", ":")).encode(), b" ")
    bin_chunk = _pad(b"".join(blobs), b"\0")
    total = 12 + 8 + len(json_chunk) + 8 + len(bin_chunk)
    with path.open("wb") as handle:
        handle.write(struct.pack("<III", GLB_MAGIC, GLB_VERSION, total))
        handle.write(struct.pack("<II", len(json_chunk), CHUNK_JSON) + json_chunk)
        handle.write(struct.pack("<II", len(bin_chunk), CHUNK_BIN) + bin_chunk)
    return path


def read_glb(path: str | Path) -> Mesh:
    """Read the first triangle primitive of a GLB file (float positions/colours, uint indices, no sparse data).

    Raises:
        ValueError: when the file is not GLB 2.0 or lacks what is read.
    """
    data = Path(path).read_bytes()
    magic, version, _ = struct.unpack_from("<III", data, 0)
    if magic != GLB_MAGIC or version != GLB_VERSION:
        raise ValueError(f"{path} is not a binary glTF 2.0 file")
    json_len, _ = struct.unpack_from("<II", data, 12)
    document = json.loads(data[20:20 + json_len])
    bin_start = 20 + json_len + 8
    dtypes = {FLOAT: np.float32, UNSIGNED_INT: np.uint32, 5123: np.uint16, 5121: np.uint8}
    widths = {"SCALAR": 1, "VEC3": 3, "VEC4": 4}

    def accessor(index: int) -> np.ndarray:
        acc = document["accessors"][index]
        view = document["bufferViews"][acc["bufferView"]]
        start = bin_start + view.get("byteOffset", 0) + acc.get("byteOffset", 0)
        width = widths[acc["type"]]
        values = np.frombuffer(data, dtypes[acc["componentType"]], acc["count"] * width, start)
        return values.reshape(acc["count"], width) if width > 1 else values

    try:
        primitive = document["meshes"][0]["primitives"][0]
        vertices = accessor(primitive["attributes"]["POSITION"]).astype(np.float64)
        faces = accessor(primitive["indices"]).astype(np.int64).reshape(-1, 3)
    except (KeyError, IndexError) as err:
        raise ValueError(f"{path} has no indexed triangle primitive ({err})") from err
    colors = None
    if "COLOR_0" in primitive["attributes"]:
        raw = accessor(primitive["attributes"]["COLOR_0"])[:, :3]
        colors = raw.astype(np.float64) / (np.iinfo(raw.dtype).max if raw.dtype.kind == "u" else 1.0)
    return Mesh(vertices @ WORLD_TO_FILE, faces, colors)


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
