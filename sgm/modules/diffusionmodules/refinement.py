"""The stage-2 refinement loop: an SDEdit-like sampler pinned to the encoded input video.

At step ``i`` every frame's latent is blended toward the input latent noised to ``sigma_i``
by ``alpha_i = (0.5 * (1 + cos(i / n)))^p``, then one guided Euler step is taken. With the
official power p = 40 the first steps stay on the noised input (alpha_0 = 1) and the last
ones are free (alpha_24 ~ 1e-4). The cosine argument is ``i / n`` radians, without pi,
exactly as the official release computes it.
"""
from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from .sampling import DenoiserFn, EulerEDMSampler, SamplingCallback


def refinement_alpha(step: int, num_steps: int, power: float = 40.0) -> float:
    """``(0.5 * (1 + cos(step / num_steps)))^power`` (cosine of radians, no pi)."""
    return (0.5 * (1.0 + math.cos(step / num_steps))) ** power


def blend_toward_input(
    latents: torch.Tensor, noise: torch.Tensor, z_input: torch.Tensor, sigma: torch.Tensor | float, alpha: float
) -> torch.Tensor:
    """``(1 - alpha) * latents + alpha * (noise * sigma + z_input)``, all (T, C, h, w)."""
    return latents * (1.0 - alpha) + (noise * sigma + z_input) * alpha


def refine_latents(
    sampler: EulerEDMSampler,
    denoiser: DenoiserFn,
    noise: torch.Tensor,
    z_input: torch.Tensor,
    cond: dict,
    uc: dict,
    num_steps: int | None = None,
    alpha_power: float = 40.0,
    generator: torch.Generator | None = None,
    callback: SamplingCallback | None = None,
    guider=None,
) -> torch.Tensor:
    """Run the refinement loop.

    Args:
        sampler: provides the sigma schedule and the guided Euler step.
        denoiser: ``denoiser(x, sigma, cond)`` on guider-batched inputs.
        noise: (T, C, h, w) unit Gaussian noise, reused at every step.
        z_input: (T, C, h, w) scaled latents of the input frames.
        num_steps: sampling steps (default: the sampler's).
        alpha_power: exponent p of the alpha schedule.
        generator: RNG of the steps' random draws (churn noise; none at Hi3D's settings).
        callback: receives the :class:`~.sampling.StepInfo` of each step (its ``x``: the latents after it).
        guider: guidance of this call (default: the sampler config's).

    Returns:
        Final latents (T, C, h, w).
    """
    if noise.shape != z_input.shape:
        raise ValueError(f"noise {tuple(noise.shape)} and input latents {tuple(z_input.shape)} differ in shape")
    sigmas = sampler.sigmas(num_steps, device=noise.device)
    n = len(sigmas) - 1
    latents = noise * torch.sqrt(1.0 + sigmas[0] ** 2)
    for i in tqdm(range(n), desc="refining", disable=not sampler.verbose, leave=False):
        latents = blend_toward_input(latents, noise, z_input, sigmas[i], refinement_alpha(i, n, alpha_power))
        latents = sampler.step_at(denoiser, latents, sigmas, i, cond, uc, generator, guider, callback)
    return latents
