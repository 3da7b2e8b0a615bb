"""Per-sample loss weights lambda(sigma) for the denoising objective."""
from __future__ import annotations

import torch


class UnitWeighting:
    """lambda = 1."""

    def __call__(self, sigma: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(sigma)


class EDMWeighting:
    """lambda = (sigma^2 + sd^2) / (sigma sd)^2, the EDM weighting for data std ``sigma_data``."""

    def __init__(self, sigma_data: float = 0.5):
        self.sigma_data = sigma_data

    def __call__(self, sigma: torch.Tensor) -> torch.Tensor:
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2


class VWeighting(EDMWeighting):
    """EDM weighting with sigma_data = 1: lambda = (sigma^2 + 1) / sigma^2 (v-prediction)."""

    def __init__(self):
        super().__init__(sigma_data=1.0)


class EpsWeighting:
    """lambda = sigma^-2 (epsilon-prediction)."""

    def __call__(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma**-2.0
