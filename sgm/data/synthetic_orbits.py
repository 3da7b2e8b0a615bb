"""Procedural textured objects and a CPU sphere tracer that renders their orbits.

An :class:`ObjectSpec` is a smooth union of analytic signed-distance primitives, each with
its own object-space texture. It round-trips through JSON, so a later 3D stage can rebuild
the exact ground-truth surface with :meth:`ObjectSpec.sdf`. :func:`random_object` draws one
from an integer seed and normalises it to the SyncDreamer scale of
:mod:`sgm.recon.cameras` (bounding box centred at the origin, longest side 1), shrinking it
further when needed so it stays inside a sphere of radius :data:`MAX_OBJECT_RADIUS`, which
keeps it uncropped in every view of the default orbit (distance 1.5, fov 49.1 degrees).

Shading: albedo x (ambient + diffuse x max(0, n . l)) with one directional light FIXED IN
CAMERA SPACE (from the upper left, behind the camera), so every view is lit alike, as in the
uniformly lit training renders. Alpha is pixel coverage, supersampled on silhouettes.
Lengths are world units; angles in degrees unless a name says otherwise.
"""
from __future__ import annotations

import colorsys
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from sgm.recon.cameras import OrbitCameras

OBJECT_FORMAT = "hi3d-synthetic-object-v1"
MAX_OBJECT_RADIUS = 0.6
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
        waves = local.new_tensor(self.waves)
        sines = torch.sin(2.0 * math.pi * waves[:, :3] @ local + waves[:, 3:])
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
        return torch.lerp(local.new_tensor(self.color_a)[:, None], local.new_tensor(self.color_b)[:, None], weight)


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
        to_local = points.new_tensor(self.rotation).T
        return torch.addmm(-(to_local @ points.new_tensor(self.center))[:, None], to_local, points)

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


# ----------------------------------------------------------------------------------------
# Random objects


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch single-threaded inside the block (restoring the previous count afterwards).

    The tracer's (and the normalisation grid's) many small tensor ops gain nothing from a
    second thread on an idle machine (measured) and slow down by an order of magnitude when
    another process holds a core.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _random_rotation(rng: np.random.Generator) -> tuple[tuple[float, float, float], ...]:
    """Uniformly distributed rotation matrix (QR of a Gaussian matrix, signs fixed, det +1)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    q[:, 0] *= np.linalg.det(q)
    return tuple(tuple(row) for row in q.tolist())


def _unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _random_colour(rng: np.random.Generator, hue: float) -> tuple[float, float, float]:
    rgb = colorsys.hsv_to_rgb(hue % 1.0, rng.uniform(0.45, 0.9), rng.uniform(0.55, 1.0))
    return tuple(float(c) for c in rgb)


def _random_texture(rng: np.random.Generator) -> Texture:
    kind = str(rng.choice(TEXTURE_KINDS, p=[0.15, 0.3, 0.25, 0.3]))
    hue = rng.uniform()
    color_a, color_b = _random_colour(rng, hue), _random_colour(rng, hue + rng.uniform(0.25, 0.75))
    phases = rng.uniform(0.0, 2.0 * math.pi, size=4)
    if kind == "stripes":
        vectors = _unit_vectors(rng, 1) * rng.uniform(3.0, 8.0)
    elif kind == "checker":
        vectors = np.eye(3) * rng.uniform(2.0, 5.0)
    elif kind == "noise":
        vectors = _unit_vectors(rng, 4) * rng.uniform(1.5, 4.0, size=(4, 1))
    else:
        vectors = np.zeros((0, 3))
    waves = tuple(tuple(float(v) for v in (*k, phase)) for k, phase in zip(vectors, phases))
    return Texture(kind, color_a, color_b, waves)


def _random_size(rng: np.random.Generator, kind: str) -> tuple[float, ...]:
    base = rng.uniform(0.12, 0.35)
    if kind == "sphere":
        return (base,)
    if kind in ("box", "round_box"):
        half = base * rng.uniform(0.5, 1.3, size=3)
        return (*half,) if kind == "box" else (*half, float(rng.uniform(0.1, 0.4) * half.min()))
    if kind == "torus":
        return (base, base * rng.uniform(0.2, 0.45))
    return (base * rng.uniform(0.6, 1.4), base * rng.uniform(0.3, 0.6))  # capsule, cylinder


def _normalised(spec: ObjectSpec, grid_size: int = 80) -> ObjectSpec:
    """Centre the bounding box at the origin with longest side 1, then fit in MAX_OBJECT_RADIUS."""
    bound = spec.bounding_radius()
    axis = torch.linspace(-bound, bound, grid_size, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij")).reshape(3, -1)
    inside = torch.cat([rows[:, spec.field(rows) <= 0.0] for rows in grid.split(1 << 16, dim=1)], dim=1).T
    if inside.shape[0] == 0:
        raise ValueError(f"object {spec.name!r} is too thin to normalise on a {grid_size}^3 grid")
    half_cell = bound / (grid_size - 1)
    lo, hi = inside.min(dim=0).values - half_cell, inside.max(dim=0).values + half_cell
    shift = ((lo + hi) / 2).numpy()
    scale = 1.0 / float((hi - lo).max())
    radius = scale * (float(torch.linalg.vector_norm(inside - inside.new_tensor(shift), dim=1).max()) + 2 * half_cell)
    scale *= min(1.0, MAX_OBJECT_RADIUS / radius)
    prims = tuple(p.transformed(scale, shift) for p in spec.primitives)
    return ObjectSpec(spec.name, spec.seed, spec.blend * scale, prims)


def random_object(seed: int, name: str | None = None, num_primitives: tuple[int, int] = (2, 6)) -> ObjectSpec:
    """A random, normalised object drawn deterministically from ``seed``.

    Parts are attached one by one near the surface of an earlier part and joined with a
    smooth union; each gets its own random rotation and texture, so views differ.
    """
    rng = np.random.default_rng(seed)
    kinds = tuple(SIZE_FIELDS)
    prims: list[Primitive] = []
    for _ in range(rng.integers(num_primitives[0], num_primitives[1] + 1)):
        kind = str(rng.choice(kinds))
        if prims:
            anchor = prims[rng.integers(len(prims))]
            offset = _unit_vectors(rng, 1)[0] * anchor.extent() * rng.uniform(0.6, 1.1)
            center = tuple(float(v) for v in np.asarray(anchor.center) + offset)
        else:
            center = (0.0, 0.0, 0.0)
        prims.append(Primitive(kind, center, _random_rotation(rng), _random_size(rng, kind), _random_texture(rng)))
    spec = ObjectSpec(name or f"object_{seed}", int(seed), float(rng.uniform(0.02, 0.1)), tuple(prims))
    with _one_thread():
        return _normalised(spec)


# ----------------------------------------------------------------------------------------
# Rendering


@dataclass(frozen=True)
class RenderSettings:
    """Sphere-tracer and shading knobs.

    One ray goes through each pixel centre; pixels on a silhouette (hit and missed rays in
    their 3x3 neighbourhood) are re-rendered with ``edge_samples**2`` sub-pixel rays, so alpha
    is the pixel's coverage there. A ray hits when the distance field falls below
    ``hit_pixels`` of its (sub-)pixel footprint. ``light_dir_camera`` points from the surface
    towards the light in OpenCV camera axes (x right, y down, z forward): upper left, behind
    the viewer.
    """

    edge_samples: int = 4
    max_steps: int = 256
    step_relaxation: float = 0.95
    hit_pixels: float = 0.25
    ambient: float = 0.35
    diffuse: float = 0.65
    light_dir_camera: tuple[float, float, float] = (-0.4, -0.6, -1.0)
    rays_per_chunk: int = 1 << 20


@dataclass(frozen=True)
class _RayBundle:
    """Per-ray origins, unit directions and world light directions, each stored as rows ``(3, N)``."""

    origins: torch.Tensor
    dirs: torch.Tensor
    lights: torch.Tensor

    @classmethod
    def through_pixels(cls, cameras: OrbitCameras, light_cam: torch.Tensor, view: torch.Tensor,
                       u: torch.Tensor, v: torch.Tensor) -> "_RayBundle":
        """float32 rays of camera ``view[m]`` through pixel coordinates ``(u[m], v[m])`` (all ``(M,)``)."""
        K = torch.as_tensor(cameras.K, dtype=torch.float64)[view]
        rot = torch.as_tensor(cameras.world_to_camera[:, :3, :3], dtype=torch.float64)[view]
        trans = torch.as_tensor(cameras.world_to_camera[:, :3, 3], dtype=torch.float64)[view]
        dirs_cam = torch.stack([(u - K[:, 0, 2]) / K[:, 0, 0], (v - K[:, 1, 2]) / K[:, 1, 1], torch.ones_like(u)])
        light = light_cam[:, None].expand_as(dirs_cam)
        origins, dirs, lights = (torch.einsum("mji,jm->im", rot, x) for x in (trans.T, dirs_cam, light))  # R^T x
        return cls(*(x.float().contiguous() for x in (-origins, F.normalize(dirs, dim=0), lights)))

    def chunks(self, size: int) -> Iterator["_RayBundle"]:
        """Consecutive sub-bundles of at most ``size`` rays."""
        for parts in zip(*(x.split(size, dim=1) for x in (self.origins, self.dirs, self.lights))):
            yield _RayBundle(*(x.contiguous() for x in parts))


def _ray_interval(spec: ObjectSpec, rays: _RayBundle) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances ``(N,)`` where each ray enters and leaves the union of the parts' bounding spheres.

    Each sphere is padded by ``blend``, which bounds the smooth union's bulge; rays that
    miss every sphere get an empty interval (entry > exit).
    """
    t_near = torch.full_like(rays.origins[0], math.inf)
    t_far = torch.full_like(t_near, -math.inf)
    for prim in spec.primitives:
        offset = rays.origins - rays.origins.new_tensor(prim.center)[:, None]
        b = (offset * rays.dirs).sum(dim=0)
        disc = b * b - (offset * offset).sum(dim=0) + (prim.extent() + spec.blend + 1e-3) ** 2
        root = disc.clamp(min=0.0).sqrt()
        t_near = torch.where(disc > 0, torch.minimum(t_near, (-b - root).clamp(min=0.0)), t_near)
        t_far = torch.where(disc > 0, torch.maximum(t_far, -b + root), t_far)
    return t_near, t_far


def _sphere_trace(spec: ObjectSpec, rays: _RayBundle, footprint: float,
                  settings: RenderSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """March rays to the surface; returns hit mask ``(N,)`` and hit distance ``(N,)``.

    ``footprint`` is a ray's width per unit distance (radians per pixel). Rays still marching
    after ``settings.max_steps`` count as misses.
    """
    t, t_far = _ray_interval(spec, rays)
    hit = torch.zeros_like(t, dtype=torch.bool)
    active = torch.nonzero(t < t_far).squeeze(1)
    for _ in range(settings.max_steps):
        if active.numel() == 0:
            break
        t_act = t[active]
        dist = spec.field(rays.origins[:, active] + t_act * rays.dirs[:, active])
        done = dist < settings.hit_pixels * footprint * t_act
        hit[active[done]] = True
        t_act = t_act + settings.step_relaxation * dist * ~done
        t[active] = t_act
        active = active[~done & (t_act < t_far[active])]
    return hit, t


def _normals(spec: ObjectSpec, rows: torch.Tensor, step: float = 1e-4) -> torch.Tensor:
    """Unit outward normals ``(3, N)`` at points ``(3, N)`` by a four-point (tetrahedral) SDF difference."""
    offsets = rows.new_tensor([[1, -1, -1], [-1, -1, 1], [-1, 1, -1], [1, 1, 1]])
    values = torch.stack([spec.field(rows + step * o[:, None]) for o in offsets])
    return F.normalize(offsets.T @ values, dim=0)


def _shade(spec: ObjectSpec, rays: _RayBundle, footprint: float, settings: RenderSettings) -> torch.Tensor:
    """Premultiplied RGBA ``(N, 4)`` of ``N`` rays, traced in chunks."""
    out = []
    for chunk in rays.chunks(settings.rays_per_chunk):
        hit, t = _sphere_trace(spec, chunk, footprint, settings)
        rgba = chunk.origins.new_zeros(chunk.origins.shape[1], 4)
        points = chunk.origins[:, hit] + t[hit] * chunk.dirs[:, hit]
        lambert = (_normals(spec, points) * chunk.lights[:, hit]).sum(dim=0).clamp(min=0.0)
        shade = settings.ambient + settings.diffuse * lambert
        rgba[hit, :3] = (spec.albedo(points) * shade).clamp(0.0, 1.0).T
        rgba[hit, 3] = 1.0
        out.append(rgba)
    return torch.cat(out)


def _render_group(spec: ObjectSpec, cameras: OrbitCameras, group: torch.Tensor,
                  settings: RenderSettings) -> torch.Tensor:
    """Straight-alpha RGBA ``(V, 4, H, W)`` of the views ``group`` ``(V,)``, traced as one batch."""
    h, w, s = cameras.height, cameras.width, settings.edge_samples
    light_cam = F.normalize(torch.tensor(settings.light_dir_camera, dtype=torch.float64), dim=0)
    footprint = 1.0 / float(cameras.K[0, 1, 1])
    rows, cols = (x.reshape(-1) + 0.5 for x in torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"))
    rays = _RayBundle.through_pixels(cameras, light_cam, group.repeat_interleave(h * w),
                                     cols.repeat(len(group)), rows.repeat(len(group)))
    rgba = _shade(spec, rays, footprint, settings).reshape(len(group), h, w, 4)
    hit = rgba[None, ..., 3]
    edge = (F.max_pool2d(hit, 3, 1, 1) + F.max_pool2d(-hit, 3, 1, 1))[0] > 0
    if s > 1 and edge.any():
        k, i, j = torch.nonzero(edge).unbind(1)
        sub = (torch.arange(s, dtype=torch.float64) + 0.5) / s
        sub_v, sub_u = (x.reshape(-1) for x in torch.meshgrid(sub, sub, indexing="ij"))
        sub_rays = _RayBundle.through_pixels(cameras, light_cam, group[k].repeat_interleave(s * s),
                                             (j[:, None] + sub_u).reshape(-1), (i[:, None] + sub_v).reshape(-1))
        rgba[edge] = _shade(spec, sub_rays, footprint / s, settings).reshape(-1, s * s, 4).mean(dim=1)
    rgba = rgba.permute(0, 3, 1, 2)
    alpha = rgba[:, 3:]
    rgb = torch.where(alpha > 0, rgba[:, :3] / alpha.clamp(min=1e-8), torch.zeros_like(rgba[:, :3]))
    return torch.cat([rgb.clamp(0.0, 1.0), alpha], dim=1)


def render_views(spec: ObjectSpec, cameras: OrbitCameras, settings: RenderSettings = RenderSettings(),
                 indices: Sequence[int] | None = None) -> Iterator[torch.Tensor]:
    """Render the cameras' views (all, or ``indices``) in order as straight-alpha RGBA ``(4, H, W)``.

    float32 in [0, 1]; background pixels are (0, 0, 0, 0). Views are traced together in
    batches of about ``settings.rays_per_chunk`` rays so that small images render quickly;
    torch runs single-threaded while a batch is traced (see :func:`_one_thread`).
    """
    order = torch.as_tensor(range(len(cameras)) if indices is None else list(indices), dtype=torch.long)
    for group in order.split(max(1, settings.rays_per_chunk // (cameras.height * cameras.width))):
        with _one_thread():
            views = _render_group(spec, cameras, group, settings)
        yield from views
