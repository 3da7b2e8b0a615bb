"""Procedural object descriptions: textured analytic SDF primitives and their smooth union.

An :class:`ObjectSpec` is a smooth union of analytic signed-distance primitives, each with
its own object-space texture. It round-trips through JSON, so a later 3D stage can rebuild
the exact ground-truth surface with :meth:`ObjectSpec.sdf`. Point sets are stored as rows
``(3, N)`` wherever speed matters (see :meth:`Primitive.sdf`). Lengths are world units.

Every method runs on the device (and in the dtype) of the points it is given. The objects'
constants become tensors once per (values, dtype, device) (:func:`constant`), so a GPU
evaluation waits for no host-to-device copy, and small matrix products go through
:func:`linear_rows`, which is exact float32 on a GPU whatever torch's TF32 settings are.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

OBJECT_FORMAT = "hi3d-synthetic-object-v1"
# Size parameters of each primitive in its local frame (axis = local z), world units.
SIZE_FIELDS: dict[str, tuple[str, ...]] = {
    "sphere": ("radius",),
    "box": ("half_x", "half_y", "half_z"),
    "round_box": ("half_x", "half_y", "half_z", "rounding"),
    "torus": ("major_radius", "minor_radius"),
    "capsule": ("half_length", "radius"),
    "cylinder": ("half_height", "radius"),
}
TEXTURE_KINDS = ("solid", "stripes", "checker", "noise")


@functools.lru_cache(maxsize=4096)
def _cached_constant(values: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype, device=device)


def constant(values, like: torch.Tensor) -> torch.Tensor:
    """``like.new_tensor(values)``, made once per ``(values, like.dtype, like.device)`` and reused.

    ``values`` is a (nested) tuple of numbers, e.g. a primitive's rotation ``(3, 3)``. Reusing
    the tensor spares a host-to-device copy (a host sync on CUDA) at every SDF evaluation;
    the values are those of ``new_tensor``, bit for bit. Callers must not modify the result
    in place. Unhashable values (lists) are converted afresh.
    """
    try:
        return _cached_constant(values, like.dtype, like.device)
    except TypeError:
        return like.new_tensor(values)


def linear_rows(matrix: torch.Tensor, rows: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``matrix @ rows (+ bias)`` for a small ``(R, K)`` matrix and rows ``(K, N)`` -> ``(R, N)``.

    ``bias`` is ``(R, 1)``. On the CPU this is the plain matrix product (``addmm`` with a
    bias), as the renders have always been computed. Elsewhere it is a sum of ``K`` rank-one
    products in the points' dtype, so a GPU never rounds the points to TF32 (which would move
    surfaces by about a pixel at 1024 px), whatever the global matmul precision is.
    """
    if rows.device.type == "cpu":
        return matrix @ rows if bias is None else torch.addmm(bias, matrix, rows)
    out = matrix[:, :1] * rows[:1] if bias is None else torch.addcmul(bias, matrix[:, :1], rows[:1])
    for k in range(1, matrix.shape[1]):
        out = torch.addcmul(out, matrix[:, k:k + 1], rows[k:k + 1])
    return out


@functools.lru_cache(maxsize=4096)
def _to_local(rotation: tuple, center: tuple, dtype: torch.dtype,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """World-to-local matrix ``(3, 3)`` (= rotation^T) and offset ``(3, 1)``: ``local = m @ world + offset``."""
    to_local = _cached_constant(rotation, dtype, device).T
    center_t = _cached_constant(center, dtype, device)
    if device.type == "cpu":
        return to_local, -(to_local @ center_t)[:, None]
    return to_local, -(to_local * center_t).sum(dim=1, keepdim=True)


@dataclass(frozen=True)
class Texture:
    """Two colours mixed by a pattern of sinusoidal waves in the primitive's local frame.

    ``waves`` rows are ``(kx, ky, kz, phase)``: wave vector in cycles per world unit and
    phase in radians. stripes: one wave; checker: three (sign of their product);
    noise: several (smoothed sum); solid: none (``color_a`` only). Colours are RGB in [0, 1].
    """

    kind: str
    color_a: tuple[float, float, float]
    color_b: tuple[float, float, float]
    waves: tuple[tuple[float, float, float, float], ...] = ()

    def mix_weight(self, local: torch.Tensor) -> torch.Tensor:
        """Weight of ``color_b`` at local points stored as rows ``(3, N)`` -> ``(N,)`` in [0, 1]."""
        if self.kind == "solid":
            return local.new_zeros(local.shape[1])
        waves = constant(self.waves, local)
        sines = torch.sin(linear_rows(2.0 * math.pi * waves[:, :3], local) + waves[:, 3:])
        if self.kind == "stripes":
            return (0.5 + 3.0 * sines[0]).clamp(0.0, 1.0)
        if self.kind == "checker":
            return (sines.prod(dim=0) > 0).to(local.dtype)
        if self.kind == "noise":
            return 0.5 + 0.5 * torch.tanh(2.0 * sines.mean(dim=0))
        raise ValueError(f"unknown texture kind {self.kind!r}; expected one of {TEXTURE_KINDS}")

    def albedo(self, local: torch.Tensor) -> torch.Tensor:
        """RGB rows ``(3, N)`` at local points stored as rows ``(3, N)``."""
        weight = self.mix_weight(local)
        return torch.lerp(constant(self.color_a, local)[:, None], constant(self.color_b, local)[:, None], weight)


@dataclass(frozen=True)
class Primitive:
    """One analytic solid: ``world = rotation @ local + center``; ``size`` follows :data:`SIZE_FIELDS`."""

    kind: str
    center: tuple[float, float, float]
    rotation: tuple[tuple[float, float, float], ...]
    size: tuple[float, ...]
    texture: Texture

    def local(self, points: torch.Tensor) -> torch.Tensor:
        """World points stored as rows ``(3, N)`` -> the same points in the local frame, ``(3, N)``."""
        try:
            to_local, offset = _to_local(self.rotation, self.center, points.dtype, points.device)
        except TypeError:  # a rotation or centre given as lists: no caching
            to_local = points.new_tensor(self.rotation).T
            offset = -(to_local @ points.new_tensor(self.center))[:, None]
        return linear_rows(to_local, points, offset)

    def sdf(self, points: torch.Tensor) -> torch.Tensor:
        """Signed distance (negative inside) at world points stored as rows ``(3, N)`` -> ``(N,)``.

        Rows rather than ``(N, 3)`` keep every coordinate contiguous, several times faster on CPU.
        """
        x, y, z = self.local(points)
        s = self.size
        radial = (x * x + y * y).sqrt()
        if self.kind == "sphere":
            return (x * x + y * y + z * z).sqrt() - s[0]
        if self.kind in ("box", "round_box"):
            rounding = s[3] if self.kind == "round_box" else 0.0
            qx, qy, qz = (c.abs() - (h - rounding) for c, h in zip((x, y, z), s[:3]))
            outside = (qx.clamp(min=0.0).square() + qy.clamp(min=0.0).square() + qz.clamp(min=0.0).square()).sqrt()
            return outside + torch.maximum(qx, torch.maximum(qy, qz)).clamp(max=0.0) - rounding
        if self.kind == "torus":
            return torch.hypot(radial - s[0], z) - s[1]
        if self.kind == "capsule":
            return torch.hypot(radial, z - z.clamp(-s[0], s[0])) - s[1]
        if self.kind == "cylinder":
            qr, qz = radial - s[1], z.abs() - s[0]
            return torch.maximum(qr, qz).clamp(max=0.0) + torch.hypot(qr.clamp(min=0.0), qz.clamp(min=0.0))
        raise ValueError(f"unknown primitive kind {self.kind!r}; expected one of {tuple(SIZE_FIELDS)}")

    def extent(self) -> float:
        """Radius of a sphere about :attr:`center` that contains the primitive."""
        s = self.size
        if self.kind == "sphere":
            return s[0]
        if self.kind in ("torus", "capsule"):
            return s[0] + s[1]
        return math.hypot(*s[:3])  # boxes: half-diagonal; cylinder: hypot(half_height, radius)

    def transformed(self, scale: float, shift: np.ndarray) -> "Primitive":
        """The primitive after ``x -> scale * (x - shift)``; its texture stays attached to it."""
        center = tuple(float(v) for v in scale * (np.asarray(self.center) - shift))
        waves = tuple((kx / scale, ky / scale, kz / scale, ph) for kx, ky, kz, ph in self.texture.waves)
        texture = Texture(self.texture.kind, self.texture.color_a, self.texture.color_b, waves)
        return Primitive(self.kind, center, self.rotation, tuple(scale * v for v in self.size), texture)


def smooth_union(a: torch.Tensor, b: torch.Tensor, blend: float) -> torch.Tensor:
    """Polynomial smooth minimum of two distance fields; ``blend`` (world units) 0 gives ``min``."""
    if blend <= 0.0:
        return torch.minimum(a, b)
    h = (0.5 + 0.5 * (b - a) / blend).clamp(0.0, 1.0)
    return torch.lerp(b, a, h) - blend * h * (1.0 - h)


@dataclass(frozen=True)
class ObjectSpec:
    """A procedural object: the smooth union (radius ``blend``) of ``primitives``, in list order."""

    name: str
    seed: int
    blend: float
    primitives: tuple[Primitive, ...]

    def sdf(self, points: torch.Tensor) -> torch.Tensor:
        """Signed distance in world units at ``(..., 3)`` points -> ``(...,)``; negative inside."""
        return self.field(points.reshape(-1, 3).T.contiguous()).reshape(points.shape[:-1])

    def field(self, rows: torch.Tensor) -> torch.Tensor:
        """:meth:`sdf` for points stored as rows ``(3, N)`` -> ``(N,)`` (the tracer's layout)."""
        dist = self.primitives[0].sdf(rows)
        for prim in self.primitives[1:]:
            dist = smooth_union(dist, prim.sdf(rows), self.blend)
        return dist

    def albedo(self, rows: torch.Tensor) -> torch.Tensor:
        """Surface colour ``(3, N)`` at world points stored as rows ``(3, N)``; parts blend near seams."""
        dists = torch.stack([prim.sdf(rows) for prim in self.primitives])
        weights = torch.softmax(-dists / (0.25 * self.blend + 1e-3), dim=0)
        colours = torch.stack([prim.texture.albedo(prim.local(rows)) for prim in self.primitives])
        return (weights[:, None] * colours).sum(dim=0)

    def bounding_radius(self) -> float:
        """Radius of a sphere about the origin that contains the whole object."""
        return max(float(np.linalg.norm(p.center)) + p.extent() for p in self.primitives) + self.blend

    def to_json(self) -> dict:
        """JSON-serialisable description; sizes are named by :data:`SIZE_FIELDS`."""
        return {
            "format": OBJECT_FORMAT,
            "name": self.name,
            "seed": self.seed,
            "blend": self.blend,
            "primitives": [
                {
                    "kind": p.kind,
                    "center": list(p.center),
                    "rotation_local_to_world": [list(row) for row in p.rotation],
                    "size": dict(zip(SIZE_FIELDS[p.kind], p.size)),
                    "texture": dataclasses.asdict(p.texture),
                }
                for p in self.primitives
            ],
        }

    @classmethod
    def from_json(cls, data: dict) -> "ObjectSpec":
        """Inverse of :meth:`to_json`.

        Raises:
            ValueError: for another format or an unknown primitive/texture kind.
        """
        if data.get("format") != OBJECT_FORMAT:
            raise ValueError(f"object format {data.get('format')!r}, expected {OBJECT_FORMAT!r}")
        prims = []
        for p in data["primitives"]:
            if p["kind"] not in SIZE_FIELDS or p["texture"]["kind"] not in TEXTURE_KINDS:
                raise ValueError(f"unknown primitive or texture kind in {p['kind']!r}/{p['texture']['kind']!r}")
            t = p["texture"]
            texture = Texture(t["kind"], tuple(t["color_a"]), tuple(t["color_b"]), tuple(tuple(w) for w in t["waves"]))
            rotation = tuple(tuple(row) for row in p["rotation_local_to_world"])
            size = tuple(float(p["size"][k]) for k in SIZE_FIELDS[p["kind"]])
            prims.append(Primitive(p["kind"], tuple(p["center"]), rotation, size, texture))
        return cls(data["name"], int(data["seed"]), float(data["blend"]), tuple(prims))


@contextmanager
def one_thread(device: torch.device | str | None = None) -> Iterator[None]:
    """Run torch single-threaded inside the block (restoring the previous count afterwards).

    Evaluating :meth:`ObjectSpec.field` in many small tensor ops (the tracer, the
    normalisation grid of :mod:`.random_objects`) gains nothing from a second thread on an
    idle machine (measured) and slows down by an order of magnitude when another process
    holds a core. ``device`` is where that work runs: for any device but the CPU (``None``
    means the CPU) the block runs unchanged, since CPU threads play no part there.
    """
    if device is not None and torch.device(device).type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
