"""Differentiable rendering of a :class:`~sgm.recon.gaussians.GaussianScene` from one camera.

Two back-ends produce the same quantities:

``torch``
    Plain PyTorch, any device, differentiable by autograd. Each Gaussian is projected to an
    image-space ellipse (the perspective map linearised at its centre, plus
    :data:`BLUR_PX2` square pixels of isotropic blur so no splat is thinner than a pixel).
    Every (Gaussian, pixel) pair where the Gaussian's opacity is at least 1/255 (within at
    most three standard deviations) is listed, the pairs are sorted by pixel and then by
    camera depth, and each pixel composites its list front to back: weight ``alpha_i *
    prod_{j<i} (1 - alpha_j)``. The product is an exclusive cumulative sum of ``log(1 -
    alpha)`` in float64 within each pixel's run. Per-pixel (rather than per-tile) sorting
    makes the order exact. It also gives the median depth (where the transmittance drops
    through 0.5). Memory and time grow with the number of pairs, so it is meant for small
    images.
``gsplat``
    The CUDA kernels of the ``gsplat`` package when it is importable and the scene is on a
    CUDA device (same projection, blur and pixel-centre convention).

Pixel ``(row i, col j)`` is sampled at ``(u, v) = (j + 0.5, i + 0.5)`` as in
:mod:`sgm.recon.cameras`; camera axes are OpenCV (x right, y down, z forward).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import numpy as np
import torch

from sgm.common.progress import StepCallback
from sgm.recon.cameras import OrbitCameras
from sgm.recon.gaussians import GaussianScene

BLUR_PX2 = 0.3
NEAR_PLANE = 0.01
MIN_ALPHA = 1.0 / 255.0
MAX_ALPHA = 0.99
EXTENT_SIGMAS = 3.0
BACKENDS = ("auto", "torch", "gsplat")


@dataclass(frozen=True)
class ViewCamera:
    """One pinhole camera as tensors: ``world_to_camera`` ``(4, 4)``, ``K`` ``(3, 3)``, size in pixels."""

    world_to_camera: torch.Tensor
    K: torch.Tensor
    width: int
    height: int


def view_camera(cameras: OrbitCameras, index: int, device: torch.device | str = "cpu") -> ViewCamera:
    """Camera ``index`` of ``cameras`` as float32 tensors on ``device``."""
    return ViewCamera(torch.tensor(cameras.world_to_camera[index], dtype=torch.float32, device=device),
                      torch.tensor(cameras.K[index], dtype=torch.float32, device=device),
                      cameras.width, cameras.height)


@dataclass
class Rendered:
    """One rendered view.

    Attributes:
        color: ``(H, W, 3)`` RGB composited over the background.
        alpha: ``(H, W)`` accumulated opacity in [0, 1].
        depth: ``(H, W)`` opacity-weighted camera depth (sum of weight x z, world units);
            divide by ``alpha`` for the expected depth of the visible surface.
        means2d: ``(N, 2)`` (or ``(1, N, 2)`` from gsplat) projected centres in pixels; its
            ``.grad`` after ``backward`` drives densification.
        radii: ``(N,)`` screen radius in pixels, 0 for Gaussians that were not drawn.
        median_depth: ``(H, W)`` camera depth of the Gaussian at which the transmittance
            drops through 0.5, 0 where alpha < 0.5 (not differentiable; torch back-end only).
            Unlike the expected depth it does not mix a front surface with one seen through
            a thin gap behind it.
    """

    color: torch.Tensor
    alpha: torch.Tensor
    depth: torch.Tensor
    means2d: torch.Tensor
    radii: torch.Tensor
    median_depth: torch.Tensor | None = None

    def expected_depth(self, min_alpha: float = 0.5) -> torch.Tensor:
        """``depth / alpha`` where ``alpha >= min_alpha``, else 0, ``(H, W)`` world units."""
        return torch.where(self.alpha >= min_alpha, self.depth / self.alpha.clamp(min=1e-6),
                           torch.zeros_like(self.depth))

    def surface_depth(self) -> torch.Tensor:
        """The median depth when the back-end gives one, else the expected depth, ``(H, W)`` world units."""
        return self.expected_depth() if self.median_depth is None else self.median_depth

    def screen_gradient(self) -> torch.Tensor:
        """Norm of the loss gradient w.r.t. each projected centre in pixels, ``(N,)`` (zeros before backward)."""
        if self.means2d.grad is None:
            return torch.zeros(self.radii.shape[0], device=self.radii.device)
        return self.means2d.grad.reshape(-1, 2).norm(dim=-1)


def gsplat_available() -> bool:
    """Whether the optional ``gsplat`` package can be imported."""
    return importlib.util.find_spec("gsplat") is not None


def resolve_backend(backend: str, device: torch.device) -> str:
    """``torch`` or ``gsplat`` for a requested ``backend`` (``auto`` prefers gsplat on CUDA).

    Raises:
        ValueError: unknown name, or gsplat asked for where it cannot run.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown rasteriser backend {backend!r}; choose from {BACKENDS}")
    usable = device.type == "cuda" and gsplat_available()
    if backend == "gsplat" and not usable:
        raise ValueError("the gsplat backend needs a CUDA device and the gsplat package (pip install gsplat)")
    if backend == "auto":
        return "gsplat" if usable else "torch"
    return backend


def render(scene: GaussianScene, camera: ViewCamera, background: torch.Tensor | None = None,
           backend: str = "auto") -> Rendered:
    """Render ``scene`` from ``camera`` over ``background`` (RGB ``(3,)``, default white)."""
    device = scene.means.device
    if background is None:
        background = torch.ones(3, device=device)
    if resolve_backend(backend, device) == "gsplat":
        return _render_gsplat(scene, camera, background)
    return _render_torch(scene, camera, background)


def project(scene: GaussianScene, camera: ViewCamera) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Image-space footprint of every Gaussian.

    Returns:
        centres ``(N, 2)`` in pixels, 2D covariances ``(N, 2, 2)`` in square pixels (blur
        included) and camera depths ``(N,)`` in world units.
    """
    rotation, translation = camera.world_to_camera[:3, :3], camera.world_to_camera[:3, 3]
    cam = scene.means @ rotation.T + translation
    z = cam[:, 2]
    safe_z = torch.where(z > NEAR_PLANE, z, torch.full_like(z, NEAR_PLANE))
    fx, fy, cx, cy = camera.K[0, 0], camera.K[1, 1], camera.K[0, 2], camera.K[1, 2]
    centres = torch.stack([fx * cam[:, 0] / safe_z + cx, fy * cam[:, 1] / safe_z + cy], dim=-1)
    # Linearise the projection with the direction clamped to 15 % beyond the image border, so
    # Gaussians far outside the frustum do not produce huge, unstable footprints.
    margin_x, margin_y = 0.15 * camera.width, 0.15 * camera.height
    tx = (cam[:, 0] / safe_z).clamp((-margin_x - cx) / fx, (camera.width + margin_x - cx) / fx)
    ty = (cam[:, 1] / safe_z).clamp((-margin_y - cy) / fy, (camera.height + margin_y - cy) / fy)
    zero = torch.zeros_like(z)
    jacobian = torch.stack([
        torch.stack([fx / safe_z, zero, -fx * tx / safe_z], dim=-1),
        torch.stack([zero, fy / safe_z, -fy * ty / safe_z], dim=-1),
    ], dim=1)
    to_image = jacobian @ rotation
    cov2d = to_image @ scene.covariances() @ to_image.transpose(1, 2)
    cov2d = cov2d + BLUR_PX2 * torch.eye(2, device=cov2d.device, dtype=cov2d.dtype)
    return centres, cov2d, z


def _pixel_pairs(centres: torch.Tensor, half_sides: torch.Tensor, order: torch.Tensor, width: int,
                 height: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All (Gaussian, pixel) pairs inside each Gaussian's box, clipped to the image.

    The box of Gaussian ``i`` spans ``centres[i] +- half_sides[i]`` (``(N, 2)`` pixels, u then v);
    a zero half-side skips the Gaussian.

    Gaussians are enumerated in the given ``order`` (``(N,)``), so pairs come out in that order.

    Returns:
        Gaussian index ``(P,)``, pixel column ``(P,)`` and pixel row ``(P,)`` (int64).
    """
    c, r = centres[order], half_sides[order]
    x0 = (c[:, 0] - r[:, 0]).floor().clamp(0, width).long()
    x1 = (c[:, 0] + r[:, 0]).ceil().clamp(0, width).long()
    y0 = (c[:, 1] - r[:, 1]).floor().clamp(0, height).long()
    y1 = (c[:, 1] + r[:, 1]).ceil().clamp(0, height).long()
    span_x = x1 - x0
    counts = span_x * (y1 - y0) * (r[:, 0] > 0)
    slot = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)
    local = torch.arange(slot.shape[0], device=counts.device) - (torch.cumsum(counts, 0) - counts)[slot]
    cols = x0[slot] + local % span_x[slot]
    rows = y0[slot] + torch.div(local, span_x[slot], rounding_mode="floor")
    return order[slot], cols, rows


def _pair_alpha(footprint: torch.Tensor, cols: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Opacity of each (Gaussian, pixel) pair from gathered attribute rows ``(P, >= 6)``.

    A row holds the centre ``(u, v)``, the inverse 2D covariance ``(xx, xy, yy)`` and the opacity.
    """
    dx = cols.to(footprint.dtype) + 0.5 - footprint[:, 0]
    dy = rows.to(footprint.dtype) + 0.5 - footprint[:, 1]
    power = -0.5 * (footprint[:, 2] * dx * dx + 2.0 * footprint[:, 3] * dx * dy + footprint[:, 4] * dy * dy)
    return (footprint[:, 5] * power.clamp(max=0.0).exp()).clamp(max=MAX_ALPHA)


def _sorted_pairs(attributes: torch.Tensor, z: torch.Tensor, cov2d: torch.Tensor, width: int,
                  height: int) -> tuple[torch.Tensor, ...]:
    """The (Gaussian, pixel) pairs to composite, grouped by pixel, nearest Gaussian first (no gradients).

    Args:
        attributes: ``(N, >= 6)`` rows as in :func:`_pair_alpha`; z: ``(N,)`` camera depths;
            cov2d: ``(N, 2, 2)`` image covariances.

    Returns:
        Gaussian ``(P,)``, column ``(P,)``, row ``(P,)``, flat pixel index ``(P,)``, the first and
        last pair of each pixel's run ``(R,)`` each, and screen radii ``(N,)`` (0 = not drawn).
    """
    opacity = attributes[:, 5]
    # The drawn box bounds the ellipse where the opacity stays above MIN_ALPHA, at most
    # EXTENT_SIGMAS standard deviations.
    sigmas = torch.sqrt(2.0 * torch.log((opacity / MIN_ALPHA).clamp(min=1.0))).clamp(max=EXTENT_SIGMAS)
    drawn = (z > NEAR_PLANE) & (sigmas > 0)
    half_sides = torch.where(drawn[:, None], sigmas[:, None] * torch.stack([cov2d[:, 0, 0], cov2d[:, 1, 1]], 1).sqrt(),
                             0.0)
    gaussian, cols, rows = _pixel_pairs(attributes[:, :2], half_sides, torch.argsort(z), width, height)
    kept = torch.nonzero(_pair_alpha(attributes.index_select(0, gaussian), cols, rows) >= MIN_ALPHA)[:, 0]
    # Pairs were listed nearest Gaussian first; a stable sort by pixel keeps that order per pixel.
    pixel, order = torch.sort((rows * width + cols).index_select(0, kept), stable=True)
    kept = kept.index_select(0, order)
    gaussian, cols, rows = (x.index_select(0, kept) for x in (gaussian, cols, rows))
    boundary = pixel[1:] != pixel[:-1]
    edge = boundary.new_ones(min(len(pixel), 1))
    starts = torch.nonzero(torch.cat([edge, boundary]))[:, 0]
    ends = torch.nonzero(torch.cat([boundary, edge]))[:, 0]
    return gaussian, cols, rows, pixel, starts, ends, half_sides.max(dim=1).values.ceil()


def _render_torch(scene: GaussianScene, camera: ViewCamera, background: torch.Tensor) -> Rendered:
    width, height = camera.width, camera.height
    centres, cov2d, z = project(scene, camera)
    if centres.requires_grad:
        centres.retain_grad()
    a, b, c = cov2d[:, 0, 0], cov2d[:, 0, 1], cov2d[:, 1, 1]
    det = (a * c - b * b).clamp(min=1e-12)
    # Per-Gaussian rows: centre (u, v), inverse 2D covariance (xx, xy, yy), opacity, RGB, depth.
    attributes = torch.cat([torch.stack([centres[:, 0], centres[:, 1], c / det, -b / det, a / det,
                                         scene.opacities()], dim=1), scene.colors(), z[:, None]], dim=1)
    with torch.no_grad():
        gaussian, cols, rows, pixel, starts, ends, radii = _sorted_pairs(attributes.detach(), z.detach(),
                                                                         cov2d.detach(), width, height)
        first = torch.repeat_interleave(starts, ends - starts + 1)

    pairs = attributes.index_select(0, gaussian)
    alpha = _pair_alpha(pairs, cols, rows)
    # Front-to-back transmittance: exclusive cumulative sum of log(1 - alpha) within each pixel's run.
    log_keep = torch.log1p(-alpha).double()
    exclusive = torch.cumsum(log_keep, 0) - log_keep
    transmittance = (exclusive - exclusive.index_select(0, first)).exp()
    weight = alpha * transmittance.to(alpha.dtype)
    values = weight[:, None] * torch.cat([pairs[:, 6:9], torch.ones_like(weight)[:, None], pairs[:, 9:]], dim=1)
    # Sum each pixel's run: differences of one float64 running sum at the run's ends.
    running = torch.cumsum(values.double(), 0)
    totals = running.index_select(0, ends) - running.index_select(0, starts) + values.double().index_select(0, starts)
    image = torch.zeros(width * height, 5, dtype=values.dtype, device=values.device)
    image = image.index_put((pixel.index_select(0, starts),), totals.to(values.dtype)).reshape(height, width, 5)
    with torch.no_grad():
        after = transmittance * (1.0 - alpha.double())
        crossing = torch.nonzero((transmittance > 0.5) & (after <= 0.5))[:, 0]
        median = torch.zeros(width * height, dtype=z.dtype, device=z.device)
        median[pixel.index_select(0, crossing)] = pairs[:, 9].index_select(0, crossing)
    alpha_img = image[..., 3]
    color = image[..., :3] + (1.0 - alpha_img)[..., None] * background
    return Rendered(color, alpha_img, image[..., 4], centres, radii, median.reshape(height, width))


def _render_gsplat(scene: GaussianScene, camera: ViewCamera, background: torch.Tensor) -> Rendered:
    from gsplat import rasterization

    colors, alphas, meta = rasterization(
        means=scene.means, quats=scene.unit_quats(), scales=scene.scales(), opacities=scene.opacities(),
        colors=scene.colors(), viewmats=camera.world_to_camera[None], Ks=camera.K[None],
        width=camera.width, height=camera.height, near_plane=NEAR_PLANE, eps2d=BLUR_PX2,
        render_mode="RGB+D", packed=False,
    )
    means2d = meta["means2d"]
    if means2d.requires_grad:
        means2d.retain_grad()
    radii = meta["radii"][0]
    radii = radii.max(dim=-1).values if radii.dim() == 2 else radii
    alpha = alphas[0, ..., 0]
    color = colors[0, ..., :3] + (1.0 - alpha)[..., None] * background
    return Rendered(color, alpha, colors[0, ..., 3], means2d, radii.float())


def render_views(scene: GaussianScene, cameras: OrbitCameras, background: torch.Tensor | None = None,
                 backend: str = "auto", callback: StepCallback | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render every camera without gradients; ``callback(view_index, num_views)`` after each view.

    Returns:
        colours ``(V, H, W, 3)`` in [0, 1], alphas ``(V, H, W)`` and surface depths
        ``(V, H, W)`` (:meth:`Rendered.surface_depth`, world units, 0 where alpha < 0.5), all
        float32 numpy.
    """
    out = []
    with torch.no_grad():
        for index in range(len(cameras)):
            view = render(scene, view_camera(cameras, index, scene.means.device), background, backend)
            out.append((view.color.clamp(0, 1), view.alpha, view.surface_depth()))
            if callback is not None:
                callback(index, len(cameras))
    return tuple(np.stack([o[i].float().cpu().numpy() for o in out]) for i in range(3))
