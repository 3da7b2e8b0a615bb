"""Sphere tracer (CPU or GPU) that renders an :class:`ObjectSpec` from :class:`OrbitCameras`.

Shading: albedo x (ambient + diffuse x max(0, n . l)) with one directional light FIXED IN
CAMERA SPACE (from the upper left, behind the camera), so every view is lit alike, as in the
uniformly lit training renders. Alpha is pixel coverage, supersampled on silhouettes.
Lengths are world units; rays and points are stored as rows ``(3, N)``.

Every tensor op runs on the device given to :func:`render_views` (resolved by
:func:`sgm.common.devices.resolve_device`); the views come back on the CPU. On a CUDA
device the marching and the normals' field evaluations run as fused Triton kernels
(:mod:`.fused_trace`, when triton imports; ``RenderSettings.fused_kernels``), the rest as
torch ops. On a GPU the images match the CPU's within antialiasing tolerance, not bit for
bit: rays that graze a silhouette can land on the other side of the hit threshold after a
last-bit difference.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType

import torch
import torch.nn.functional as F

from sgm.common.devices import resolve_device
from sgm.data.synthetic_orbits.spec import ObjectSpec, constant, linear_rows, one_thread
from sgm.recon.cameras import OrbitCameras

CPU_RAYS_PER_CHUNK = 1 << 20
GPU_RAYS_PER_CHUNK = 1 << 24


@dataclass(frozen=True)
class RenderSettings:
    """Sphere-tracer and shading knobs.

    One ray goes through each pixel centre; pixels on a silhouette (hit and missed rays in
    their 3x3 neighbourhood) are re-rendered with ``edge_samples**2`` sub-pixel rays, so alpha
    is the pixel's coverage there. A ray hits when the distance field falls below
    ``hit_pixels`` of its (sub-)pixel footprint. ``light_dir_camera`` points from the surface
    towards the light in OpenCV camera axes (x right, y down, z forward): upper left, behind
    the viewer.

    ``rays_per_chunk`` bounds how many rays are traced together (``None``: about 1M on the CPU,
    16M elsewhere, see :meth:`chunk_rays`). The tracer's per-step cost is mostly fixed on a
    GPU, so larger chunks are faster there; its memory grows with the chunk.
    ``fused_kernels``: on a CUDA device, march rays and evaluate the normals' field with the
    Triton kernels of :mod:`.fused_trace` (one launch per chunk instead of ~150 small ops per
    step); False, or no triton, runs the torch ops there too. The CPU always runs the torch ops.
    """

    edge_samples: int = 4
    max_steps: int = 256
    step_relaxation: float = 0.95
    hit_pixels: float = 0.25
    ambient: float = 0.35
    diffuse: float = 0.65
    light_dir_camera: tuple[float, float, float] = (-0.4, -0.6, -1.0)
    rays_per_chunk: int | None = None
    fused_kernels: bool = True

    def chunk_rays(self, device: torch.device) -> int:
        """Rays traced together on ``device``: :attr:`rays_per_chunk`, else the device's default."""
        if self.rays_per_chunk is not None:
            return self.rays_per_chunk
        return CPU_RAYS_PER_CHUNK if device.type == "cpu" else GPU_RAYS_PER_CHUNK


@dataclass(frozen=True)
class _RayBundle:
    """Per-ray origins, unit directions and world light directions, each stored as rows ``(3, N)``."""

    origins: torch.Tensor
    dirs: torch.Tensor
    lights: torch.Tensor

    @classmethod
    def through_pixels(cls, cameras: OrbitCameras, light_cam: torch.Tensor, view: torch.Tensor,
                       u: torch.Tensor, v: torch.Tensor) -> "_RayBundle":
        """float32 rays of camera ``view[m]`` through pixel coordinates ``(u[m], v[m])`` (all ``(M,)``).

        ``u``, ``v`` are float64 pixels; ``light_cam`` ``(3,)`` float64; the rays live on ``view``'s device.
        """
        device = view.device
        K = torch.as_tensor(cameras.K, dtype=torch.float64, device=device)[view]
        rot = torch.as_tensor(cameras.world_to_camera[:, :3, :3], dtype=torch.float64, device=device)[view]
        trans = torch.as_tensor(cameras.world_to_camera[:, :3, 3], dtype=torch.float64, device=device)[view]
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
        offset = rays.origins - constant(prim.center, rays.origins)[:, None]
        b = (offset * rays.dirs).sum(dim=0)
        disc = b * b - (offset * offset).sum(dim=0) + (prim.extent() + spec.blend + 1e-3) ** 2
        root = disc.clamp(min=0.0).sqrt()
        t_near = torch.where(disc > 0, torch.minimum(t_near, (-b - root).clamp(min=0.0)), t_near)
        t_far = torch.where(disc > 0, torch.maximum(t_far, -b + root), t_far)
    return t_near, t_far


def _fused(rows: torch.Tensor, settings: RenderSettings) -> ModuleType | None:
    """:mod:`.fused_trace` when its kernels serve tensors like ``rows`` (CUDA, triton present, enabled)."""
    if not (settings.fused_kernels and rows.is_cuda):
        return None
    from sgm.data.synthetic_orbits import fused_trace  # imports triton: only when a GPU is used

    return fused_trace if fused_trace.available() else None


def _sphere_trace(spec: ObjectSpec, rays: _RayBundle, footprint: float,
                  settings: RenderSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """March rays to the surface; returns hit mask ``(N,)`` and hit distance ``(N,)``.

    ``footprint`` is a ray's width per unit distance (radians per pixel). Rays still marching
    after ``settings.max_steps`` count as misses. With torch ops, each step evaluates the
    field at the rays still marching only and costs one host sync (the compaction of that
    set); the fused kernel (:func:`.fused_trace.march`) does the same per ray in one launch.
    """
    t, t_far = _ray_interval(spec, rays)
    fused = _fused(rays.origins, settings)
    if fused is not None:
        return fused.march(spec, rays.origins, rays.dirs, t, t_far, settings.hit_pixels * footprint,
                           settings.step_relaxation, settings.max_steps)
    hit = torch.zeros_like(t, dtype=torch.bool)
    active = torch.nonzero(t < t_far).squeeze(1)
    for _ in range(settings.max_steps):
        if active.numel() == 0:
            break
        t_act = t[active]
        dist = spec.field(rays.origins[:, active] + t_act * rays.dirs[:, active])
        done = dist < settings.hit_pixels * footprint * t_act
        hit[active] = done  # an active ray has not hit yet; a ray that hits leaves the set
        t_act = t_act + settings.step_relaxation * dist * ~done
        t[active] = t_act
        active = active[~done & (t_act < t_far[active])]
    return hit, t


def _normals(field: Callable[[torch.Tensor], torch.Tensor], rows: torch.Tensor, step: float = 1e-4) -> torch.Tensor:
    """Unit outward normals ``(3, N)`` at points ``(3, N)`` by a four-point (tetrahedral) difference of ``field``."""
    offsets = constant(((1, -1, -1), (-1, -1, 1), (-1, 1, -1), (1, 1, 1)), rows)
    values = torch.stack([field(rows + step * o[:, None]) for o in offsets])
    return F.normalize(linear_rows(offsets.T, values), dim=0)


def _shade(spec: ObjectSpec, rays: _RayBundle, footprint: float, settings: RenderSettings) -> torch.Tensor:
    """Premultiplied RGBA ``(N, 4)`` of ``N`` rays, traced in chunks (on the rays' device)."""
    out = []
    fused = _fused(rays.origins, settings)
    field = spec.field if fused is None else (lambda rows: fused.field(spec, rows))
    for chunk in rays.chunks(settings.chunk_rays(rays.origins.device)):
        hit, t = _sphere_trace(spec, chunk, footprint, settings)
        rgba = chunk.origins.new_zeros(chunk.origins.shape[1], 4)
        points = chunk.origins[:, hit] + t[hit] * chunk.dirs[:, hit]
        lambert = (_normals(field, points) * chunk.lights[:, hit]).sum(dim=0).clamp(min=0.0)
        shade = settings.ambient + settings.diffuse * lambert
        rgba[hit, :3] = (spec.albedo(points) * shade).clamp(0.0, 1.0).T
        rgba[hit, 3] = 1.0
        out.append(rgba)
    return torch.cat(out)


def _render_group(spec: ObjectSpec, cameras: OrbitCameras, group: torch.Tensor,
                  settings: RenderSettings) -> torch.Tensor:
    """Straight-alpha RGBA ``(V, 4, H, W)`` of the views ``group`` ``(V,)``, traced as one batch.

    Runs on ``group``'s device and returns there.
    """
    h, w, s = cameras.height, cameras.width, settings.edge_samples
    device = group.device
    light_cam = F.normalize(torch.tensor(settings.light_dir_camera, dtype=torch.float64, device=device), dim=0)
    footprint = 1.0 / float(cameras.K[0, 1, 1])
    rows, cols = (x.reshape(-1) + 0.5 for x in torch.meshgrid(
        torch.arange(h, dtype=torch.float64, device=device), torch.arange(w, dtype=torch.float64, device=device),
        indexing="ij"))
    rays = _RayBundle.through_pixels(cameras, light_cam, group.repeat_interleave(h * w),
                                     cols.repeat(len(group)), rows.repeat(len(group)))
    rgba = _shade(spec, rays, footprint, settings).reshape(len(group), h, w, 4)
    hit = rgba[None, ..., 3]
    edge = (F.max_pool2d(hit, 3, 1, 1) + F.max_pool2d(-hit, 3, 1, 1))[0] > 0
    if s > 1 and edge.any():
        k, i, j = torch.nonzero(edge).unbind(1)
        sub = (torch.arange(s, dtype=torch.float64, device=device) + 0.5) / s
        sub_v, sub_u = (x.reshape(-1) for x in torch.meshgrid(sub, sub, indexing="ij"))
        sub_rays = _RayBundle.through_pixels(cameras, light_cam, group[k].repeat_interleave(s * s),
                                             (j[:, None] + sub_u).reshape(-1), (i[:, None] + sub_v).reshape(-1))
        rgba[edge] = _shade(spec, sub_rays, footprint / s, settings).reshape(-1, s * s, 4).mean(dim=1)
    rgba = rgba.permute(0, 3, 1, 2)
    alpha = rgba[:, 3:]
    rgb = torch.where(alpha > 0, rgba[:, :3] / alpha.clamp(min=1e-8), torch.zeros_like(rgba[:, :3]))
    return torch.cat([rgb.clamp(0.0, 1.0), alpha], dim=1)


def render_views(spec: ObjectSpec, cameras: OrbitCameras, settings: RenderSettings = RenderSettings(),
                 indices: Sequence[int] | None = None,
                 device: torch.device | str | None = "cpu") -> Iterator[torch.Tensor]:
    """Render the cameras' views (all, or ``indices``) in order as straight-alpha RGBA ``(4, H, W)``.

    float32 in [0, 1], on the CPU whatever ``device`` is; background pixels are (0, 0, 0, 0).
    ``device`` is where the tracing and shading run: a ``torch.device`` or its name (cpu, the
    default; cuda or cuda:N), or auto/``None`` for CUDA when available. Views are traced
    together in batches of about ``settings.chunk_rays(device)`` rays so that small images
    render quickly; on the CPU torch runs single-threaded while a batch is traced (see
    :func:`.spec.one_thread`).

    Raises:
        sgm.pipelines.loading.DeviceError: CUDA requested on a machine without it (at the
            call, before any view is rendered).
    """
    device = resolve_device(None if device is None else str(device))
    order = torch.as_tensor(range(len(cameras)) if indices is None else list(indices), dtype=torch.long)
    return _render_groups(spec, cameras, settings, order, device)


def _render_groups(spec: ObjectSpec, cameras: OrbitCameras, settings: RenderSettings, order: torch.Tensor,
                   device: torch.device) -> Iterator[torch.Tensor]:
    """The views ``order`` ``(V,)`` one by one as CPU RGBA ``(4, H, W)``, traced in groups on ``device``."""
    for group in order.split(max(1, settings.chunk_rays(device) // (cameras.height * cameras.width))):
        with one_thread(device):
            views = _render_group(spec, cameras, group.to(device), settings).cpu()
        yield from views
