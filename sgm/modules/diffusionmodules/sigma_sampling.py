"""Training-time noise-level distributions."""
from __future__ import annotations

import torch


class EDMSampling:
    """Log-normal sigma: ``ln(sigma) ~ N(p_mean, p_std^2)`` (Karras et al. 2022)."""

    def __init__(self, p_mean: float = -1.2, p_std: float = 1.2):
        self.p_mean = p_mean
        self.p_std = p_std

    def __call__(
        self, n: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """(n,) float32 sigmas."""
        z = torch.randn(n, device=device, generator=generator)
        return (self.p_mean + self.p_std * z).exp()
