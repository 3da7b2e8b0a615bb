"""Preconditioning of the network input and output as a function of the noise level sigma.

Each scaling maps sigma (any shape) to ``(c_skip, c_out, c_in, c_noise)`` so that the
denoiser is ``D(x) = c_skip * x + c_out * F(c_in * x, c_noise)`` (Karras et al. 2022, EDM).
All four are pure functions of sigma.
"""
from __future__ import annotations

import torch

Scalings = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class EDMScaling:
    """EDM preconditioning with data standard deviation ``sigma_data``.

    c_skip = sd^2 / (s^2 + sd^2), c_out = s sd / sqrt(s^2 + sd^2), c_in = 1 / sqrt(s^2 + sd^2),
    c_noise = ln(s) / 4.
    """

    def __init__(self, sigma_data: float = 0.5):
        self.sigma_data = sigma_data

    def __call__(self, sigma: torch.Tensor) -> Scalings:
        total = sigma**2 + self.sigma_data**2
        c_skip = self.sigma_data**2 / total
        c_out = sigma * self.sigma_data / total.sqrt()
        c_in = 1.0 / total.sqrt()
        c_noise = 0.25 * sigma.log()
        return c_skip, c_out, c_in, c_noise


class EpsScaling:
    """Epsilon prediction: c_skip = 1, c_out = -s, c_in = 1 / sqrt(s^2 + 1), c_noise = s."""

    def __call__(self, sigma: torch.Tensor) -> Scalings:
        c_skip = torch.ones_like(sigma)
        c_out = -sigma
        c_in = 1.0 / (sigma**2 + 1.0).sqrt()
        c_noise = sigma.clone()
        return c_skip, c_out, c_in, c_noise


class VScaling:
    """v prediction: c_skip = 1 / (s^2 + 1), c_out = -s / sqrt(s^2 + 1), c_in = 1 / sqrt(s^2 + 1), c_noise = s."""

    def __call__(self, sigma: torch.Tensor) -> Scalings:
        c_skip = 1.0 / (sigma**2 + 1.0)
        c_out = -sigma / (sigma**2 + 1.0).sqrt()
        c_in = 1.0 / (sigma**2 + 1.0).sqrt()
        c_noise = sigma.clone()
        return c_skip, c_out, c_in, c_noise


class VScalingWithEDMcNoise(VScaling):
    """v prediction with the EDM noise conditioning c_noise = ln(s) / 4 (used by SVD and Hi3D)."""

    def __call__(self, sigma: torch.Tensor) -> Scalings:
        c_skip, c_out, c_in, _ = super().__call__(sigma)
        return c_skip, c_out, c_in, 0.25 * sigma.log()
