"""Fitting a Gaussian scene to masked views: photometric loss, Adam, densification and pruning.

Each step renders one training view (views are visited in a seeded random order, every
view once per pass) and minimises

    (1 - lambda_ssim) * L1(render, image) + lambda_ssim * (1 - SSIM(render, image))
    + lambda_mask * L1(rendered alpha, mask)

with images on white and the render composited on white, so the mask term and the
white background together pull Gaussians off the background.

Densification (every ``densify_every`` steps inside ``[densify_from, densify_until)``):
Gaussians whose mean screen-space gradient (in normalised device units, i.e. pixels x
2 / image size, so the threshold does not depend on the resolution) exceeds
``grad_threshold`` are duplicated when small (largest standard deviation at most
``dense_fraction`` of the scene scale) or split in two smaller ones drawn from their own
distribution when large. Pruning removes Gaussians that became nearly transparent or
larger than ``max_scale_fraction`` of the scene scale. The scene scale is the camera
distance. New Gaussians start with zero Adam moments.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from sgm.common.progress import StepCallback
from sgm.recon.gaussians import GaussianScene, init_from_views
from sgm.recon.metrics import ssim
from sgm.recon.rasterize import render, resolve_backend, view_camera
from sgm.recon.views import ViewSet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitConfig:
    """Optimisation settings.

    Learning rates are Adam step sizes in each parameter's own units (``lr_means`` in world
    units, decayed log-linearly to ``lr_means_final``); ``init_bound`` is in world units;
    ``dense_fraction`` and ``max_scale_fraction`` are fractions of the scene scale (the camera
    distance); ``grad_threshold`` is in normalised device units; ``backend`` picks the
    rasteriser (:data:`sgm.recon.rasterize.BACKENDS`).
    """

    iterations: int = 3000
    num_init: int = 20000
    max_gaussians: int = 300_000
    init_resolution: int = 96
    init_bound: float = 0.75
    init_max_misses: int = 1
    lr_means: float = 1e-3
    lr_means_final: float = 1e-5
    lr_log_scales: float = 5e-3
    lr_quats: float = 1e-3
    lr_opacity: float = 5e-2
    lr_color: float = 2e-2
    lambda_ssim: float = 0.2
    lambda_mask: float = 0.5
    densify_from: int = 200
    densify_until_fraction: float = 0.6
    densify_every: int = 100
    grad_threshold: float = 2e-4
    dense_fraction: float = 0.01
    split_factor: float = 1.6
    min_opacity: float = 0.005
    max_scale_fraction: float = 0.1
    seed: int = 0
    backend: str = "auto"

    @property
    def densify_until(self) -> int:
        return int(self.densify_until_fraction * self.iterations)


@dataclass
class FitResult:
    """The fitted scene, the loss of every step, the Gaussian count after each densification, wall time (s)."""

    scene: GaussianScene
    losses: list[float] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    seconds: float = 0.0
    backend: str = "torch"


def _optimizer(scene: GaussianScene, config: FitConfig) -> torch.optim.Adam:
    rates = {"means": config.lr_means, "log_scales": config.lr_log_scales, "quats": config.lr_quats,
             "opacity_logits": config.lr_opacity, "color_logits": config.lr_color}
    groups = [{"params": [tensor], "lr": rates[name], "name": name} for name, tensor in scene.parameters().items()]
    return torch.optim.Adam(groups, eps=1e-15)


def _means_lr(step: int, config: FitConfig) -> float:
    """Log-linear decay from ``lr_means`` to ``lr_means_final`` over the run."""
    t = min(step / max(config.iterations - 1, 1), 1.0)
    return math.exp((1 - t) * math.log(config.lr_means) + t * math.log(config.lr_means_final))


def rebuild(scene: GaussianScene, optimizer: torch.optim.Adam, config: FitConfig, source: torch.Tensor,
            new_params: dict[str, torch.Tensor], fresh: torch.Tensor) -> tuple[GaussianScene, torch.optim.Adam]:
    """Replace the scene's tensors by ``new_params`` and carry the Adam moments over.

    Args:
        source: ``(M,)`` index of the old Gaussian each new one comes from.
        new_params: the new ``(M, ...)`` tensors by parameter name.
        fresh: ``(M,)`` bool, True for Gaussians whose moments start at zero.
    """
    new_scene = GaussianScene(**{k: v.detach().requires_grad_(True) for k, v in new_params.items()})
    new_optimizer = _optimizer(new_scene, config)
    for old_group, new_group in zip(optimizer.param_groups, new_optimizer.param_groups):
        new_group["lr"] = old_group["lr"]
        state = optimizer.state.get(old_group["params"][0])
        if not state:
            continue
        keep = (~fresh).reshape(-1, *[1] * (new_group["params"][0].dim() - 1))
        new_optimizer.state[new_group["params"][0]] = {
            "step": state["step"].clone(),
            "exp_avg": state["exp_avg"][source] * keep,
            "exp_avg_sq": state["exp_avg_sq"][source] * keep,
        }
    return new_scene, new_optimizer


def densify_and_prune(scene: GaussianScene, optimizer: torch.optim.Adam, config: FitConfig, mean_grad: torch.Tensor,
                      scale: float, generator: torch.Generator) -> tuple[GaussianScene, torch.optim.Adam]:
    """One round of cloning, splitting and pruning (see the module docstring); ``mean_grad`` is ``(N,)``."""
    device = scene.means.device
    with torch.no_grad():
        largest = scene.scales().max(dim=1).values
        candidates = mean_grad >= config.grad_threshold
        budget = config.max_gaussians - len(scene)
        if int(candidates.sum()) > max(budget, 0):
            ranked = torch.argsort(mean_grad, descending=True)[:max(budget, 0)]
            candidates = torch.zeros_like(candidates)
            candidates[ranked] = True
        small = largest <= config.dense_fraction * scale
        clone, split = candidates & small, candidates & ~small
        keep = ~split & (scene.opacities() >= config.min_opacity) & (largest <= config.max_scale_fraction * scale)
        keep_idx, clone_idx, split_idx = (torch.nonzero(m).squeeze(1) for m in (keep, clone, split))
        split_twice = split_idx.repeat(2)
        noise = torch.randn(len(split_twice), 3, generator=generator).to(device)
        offsets = (scene.rotations()[split_twice] @ (noise * scene.scales()[split_twice])[..., None])[..., 0]
        source = torch.cat([keep_idx, clone_idx, split_twice])
        new_params = {k: v.detach()[source].clone() for k, v in scene.parameters().items()}
        n_old = len(keep_idx) + len(clone_idx)
        new_params["means"][n_old:] += offsets
        new_params["log_scales"][n_old:] -= math.log(config.split_factor)
        fresh = torch.arange(len(source), device=device) >= len(keep_idx)
        log.debug("densify: %d kept, %d cloned, %d split, %d pruned", len(keep_idx), len(clone_idx), len(split_idx),
                  len(scene) - len(keep_idx) - len(split_idx))
    return rebuild(scene, optimizer, config, source, new_params, fresh)


def photometric_loss(color: torch.Tensor, alpha: torch.Tensor, image: torch.Tensor, mask: torch.Tensor,
                     config: FitConfig) -> torch.Tensor:
    """The training loss of one view: ``color``/``image`` ``(H, W, 3)``, ``alpha``/``mask`` ``(H, W)``."""
    l1 = (color - image).abs().mean()
    structure = 1.0 - ssim(color.permute(2, 0, 1)[None], image.permute(2, 0, 1)[None]).mean()
    silhouette = (alpha - mask).abs().mean()
    return (1 - config.lambda_ssim) * l1 + config.lambda_ssim * structure + config.lambda_mask * silhouette


def fit_gaussians(views: ViewSet, config: FitConfig = FitConfig(), device: torch.device | str = "cpu",
                  progress: bool = True, initial: GaussianScene | None = None,
                  callback: StepCallback | None = None) -> FitResult:
    """Fit a Gaussian scene to ``views`` (initialised from their visual hull unless ``initial`` is given).

    Deterministic for a given ``config.seed`` on the CPU back-end. ``progress`` shows a tqdm bar;
    ``callback`` is called as ``callback(step_index, config.iterations)`` after each optimisation step.
    """
    device = torch.device(device)
    backend = resolve_backend(config.backend, device)
    generator = torch.Generator().manual_seed(config.seed)
    start = time.perf_counter()
    if initial is None:
        initial = init_from_views(views.images, views.masks, views.cameras, config.num_init, generator,
                                  config.init_resolution, config.init_bound, config.init_max_misses)
    scene = initial.to(device).detached(requires_grad=True)
    optimizer = _optimizer(scene, config)
    images = torch.from_numpy(views.images).to(device)
    masks = torch.from_numpy(views.masks).to(device)
    cameras = [view_camera(views.cameras, k, device) for k in range(len(views))]
    background = torch.ones(3, device=device)
    scale = float(views.cameras.distance)
    grad_sum = torch.zeros(len(scene), device=device)
    seen = torch.zeros(len(scene), device=device)
    result = FitResult(scene, backend=backend)
    order: list[int] = []
    bar = tqdm(range(config.iterations), desc="fitting gaussians", unit="step", disable=not progress)
    for step in bar:
        if not order:
            order = torch.randperm(len(views), generator=generator).tolist()
        k = order.pop()
        optimizer.param_groups[0]["lr"] = _means_lr(step, config)
        out = render(scene, cameras[k], background, backend)
        loss = photometric_loss(out.color, out.alpha, images[k], masks[k], config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            visible = out.radii > 0
            half_size = 0.5 * max(cameras[k].width, cameras[k].height)  # pixels per NDC unit
            grad_sum += out.screen_gradient() * half_size * visible
            seen += visible
        optimizer.step()
        result.losses.append(float(loss.detach()))
        if config.densify_from <= step < config.densify_until and (step + 1) % config.densify_every == 0:
            scene, optimizer = densify_and_prune(scene, optimizer, config, grad_sum / seen.clamp(min=1), scale,
                                                 generator)
            grad_sum = torch.zeros(len(scene), device=device)
            seen = torch.zeros(len(scene), device=device)
            result.counts.append(len(scene))
        if callback is not None:
            callback(step, config.iterations)
        if step % 25 == 0:
            bar.set_postfix(loss=f"{result.losses[-1]:.4f}", gaussians=len(scene))
    result.scene = scene.detached()
    result.seconds = time.perf_counter() - start
    log.info("fitted %d Gaussians to %d views in %d steps (%.1f s, %s back-end), final loss %.4f", len(scene),
             len(views), config.iterations, result.seconds, backend, float(np.mean(result.losses[-50:])))
    return result
