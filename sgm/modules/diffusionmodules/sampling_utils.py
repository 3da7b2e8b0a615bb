"""Pure functions of one sampler step (Karras et al. 2022, Algorithm 2 without Heun)."""
from __future__ import annotations

import math

import torch

from ...util import append_dims


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """ODE derivative ``dx/dsigma = (x - D(x)) / sigma``; ``sigma`` is per sample (N,)."""
    return (x - denoised) / append_dims(sigma, x.ndim)


def euler_step(x: torch.Tensor, d: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
    """``x + dt * d``; ``dt`` is broadcastable against ``x``."""
    return x + dt * d


def churn_gamma(sigma: float, num_steps: int, s_churn: float, s_tmin: float, s_tmax: float) -> float:
    """Stochastic 'churn' factor: ``min(s_churn / n, sqrt(2) - 1)`` inside [s_tmin, s_tmax], else 0."""
    if s_tmin <= sigma <= s_tmax:
        return min(s_churn / num_steps, math.sqrt(2.0) - 1.0)
    return 0.0
