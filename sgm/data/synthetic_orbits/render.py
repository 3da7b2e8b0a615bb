"""CPU sphere tracer that renders an :class:`ObjectSpec` from :class:`OrbitCameras`.

Shading: albedo x (ambient + diffuse x max(0, n . l)) with one directional light FIXED IN
CAMERA SPACE (from the upper left, behind the camera), so every view is lit alike, as in the
uniformly lit training renders. Alpha is pixel coverage, supersampled on silhouettes.
Lengths are world units; rays and points are stored as rows ``(3, N)``.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sgm.data.synthetic_orbits.spec import ObjectSpec, one_thread
from sgm.recon.cameras import OrbitCameras


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
    torch runs single-threaded while a batch is traced (see :func:`.spec.one_thread`).
    """
    order = torch.as_tensor(range(len(cameras)) if indices is None else list(indices), dtype=torch.long)
    for group in order.split(max(1, settings.rays_per_chunk // (cameras.height * cameras.width))):
        with one_thread():
            views = _render_group(spec, cameras, group, settings)
        yield from views
