"""Preconditioning of the network input and output as a function of the noise level sigma.

Each scaling maps sigma (any shape) to ``(c_skip, c_out, c_in, c_noise)`` so that the
denoiser is ``D(x) = c_skip * x + c_out * F(c_in * x, c_noise)`` (Karras et al. 2022, EDM).
All four are pure functions of sigma.
"""
from __future__ import annotations

import torch

Scalings = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


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
