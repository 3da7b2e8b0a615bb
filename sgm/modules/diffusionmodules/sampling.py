"""Euler sampler of the EDM probability-flow ODE with optional churn, and a guided denoise call.

The denoiser is any callable ``denoiser(x, sigma, cond) -> x0_estimate`` taking the guider's
batched inputs; the diffusion engine builds it by binding the network and the model kwargs.

Everything that may change between two calls is an argument of the call, not sampler state:
the guider (``guider=``; default the config's), the generator of every random draw, and the
step callback, which receives a :class:`StepInfo` dict after each step (as k-diffusion's does).
"""
from __future__ import annotations

from typing import Callable, TypedDict

import torch
from tqdm.auto import tqdm

from ...util import append_dims, instantiate_from_config
from .guiders import IdentityGuider
from .sampling_utils import churn_gamma, euler_step, to_d

DenoiserFn = Callable[[torch.Tensor, torch.Tensor, dict], torch.Tensor]


class StepInfo(TypedDict):
    """What a sampling step reports: ``step`` (0-based) of ``total``; ``sigma`` the noise level
    the step started from and ``sigma_next`` the one it reached (0-dim tensors); ``x`` the latents
    after the step and ``denoised`` the guided x0 estimate it used, both (N, C, h, w)."""

    step: int
    total: int
    sigma: torch.Tensor
    sigma_next: torch.Tensor
    x: torch.Tensor
    denoised: torch.Tensor


SamplingCallback = Callable[[StepInfo], None]


class EulerEDMSampler:
    """First-order (Euler) EDM sampler.

    Args:
        discretization_config: config node of the sigma schedule (e.g. ``EDMDiscretization``).
        num_steps: default number of steps.
        guider_config: config node of the guider (default: no guidance).
        s_churn, s_tmin, s_tmax, s_noise: EDM stochasticity (Hi3D: 0, 0, inf, 1: deterministic).
        verbose: show a tqdm progress bar over the steps.
    """

    def __init__(
        self,
        discretization_config: dict,
        num_steps: int | None = None,
        guider_config: dict | None = None,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
        verbose: bool = False,
    ):
        self.discretization = instantiate_from_config(discretization_config)
        self.num_steps = num_steps
        self.guider = instantiate_from_config(guider_config) if guider_config is not None else IdentityGuider()
        self.s_churn = s_churn
        self.s_tmin = s_tmin
        self.s_tmax = s_tmax
        self.s_noise = s_noise
        self.verbose = verbose

    def sigmas(self, num_steps: int | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
        """The (n + 1,) schedule, ending in 0."""
        n = num_steps if num_steps is not None else self.num_steps
        if n is None:
            raise ValueError("number of sampling steps not given and no num_steps in the sampler config")
        return self.discretization(n, device=device)

    def denoise(self, denoiser: DenoiserFn, x: torch.Tensor, sigma: torch.Tensor, cond: dict, uc: dict,
                guider=None) -> torch.Tensor:
        """Guided x0 estimate at per-sample noise levels ``sigma`` (N,) (``guider`` None: the config's)."""
        guider = self.guider if guider is None else guider
        return guider(denoiser(*guider.prepare_inputs(x, sigma, cond, uc)), sigma)

    def step(
        self,
        denoiser: DenoiserFn,
        x: torch.Tensor,
        sigma: torch.Tensor,
        next_sigma: torch.Tensor,
        cond: dict,
        uc: dict,
        gamma: float = 0.0,
        generator: torch.Generator | None = None,
        guider=None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step from per-sample noise level ``sigma`` (N,) to ``next_sigma`` (N,).

        With ``gamma > 0`` noise is first added to raise sigma to ``sigma * (1 + gamma)``.

        Returns:
            The latents after the step and the guided x0 estimate, both shaped like ``x``.
        """
        sigma_hat = sigma * (gamma + 1.0)
        if gamma > 0:
            eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) * self.s_noise
            x = x + eps * append_dims(sigma_hat**2 - sigma**2, x.ndim) ** 0.5
        denoised = self.denoise(denoiser, x, sigma_hat, cond, uc, guider)
        d = to_d(x, sigma_hat, denoised)
        return euler_step(x, d, append_dims(next_sigma - sigma_hat, x.ndim)), denoised

    def step_at(
        self,
        denoiser: DenoiserFn,
        x: torch.Tensor,
        sigmas: torch.Tensor,
        i: int,
        cond: dict,
        uc: dict,
        generator: torch.Generator | None = None,
        guider=None,
        callback: SamplingCallback | None = None,
    ) -> torch.Tensor:
        """Step ``i`` of the schedule ``sigmas`` (n + 1,) for every sample of ``x``; the latents after it.

        ``callback`` receives the step's :class:`StepInfo`. Used by :meth:`__call__` and the stage-2 loop.
        """
        num_steps = len(sigmas) - 1
        gamma = churn_gamma(float(sigmas[i]), num_steps, self.s_churn, self.s_tmin, self.s_tmax)
        ones = x.new_ones(x.shape[0])
        x, denoised = self.step(denoiser, x, ones * sigmas[i], ones * sigmas[i + 1], cond, uc, gamma, generator,
                                guider)
        if callback is not None:
            callback(StepInfo(step=i, total=num_steps, sigma=sigmas[i], sigma_next=sigmas[i + 1], x=x,
                              denoised=denoised))
        return x

    def __call__(
        self,
        denoiser: DenoiserFn,
        noise: torch.Tensor,
        cond: dict,
        uc: dict | None = None,
        num_steps: int | None = None,
        generator: torch.Generator | None = None,
        callback: SamplingCallback | None = None,
        guider=None,
    ) -> torch.Tensor:
        """Sample from unit-variance ``noise`` (N, C, H, W); it is scaled by sqrt(1 + sigma_0^2) here.

        Args:
            generator: RNG of every random draw of the steps (churn noise).
            callback: receives a :class:`StepInfo` after each step.
            guider: guidance of this call (default: the config's ``guider_config``).
        """
        sigmas = self.sigmas(num_steps, device=noise.device)
        uc = cond if uc is None else uc
        x = noise * torch.sqrt(1.0 + sigmas[0] ** 2)
        n = len(sigmas) - 1
        for i in tqdm(range(n), desc="sampling", disable=not self.verbose, leave=False):
            x = self.step_at(denoiser, x, sigmas, i, cond, uc, generator, guider, callback)
        return x
