"""Per-sample loss weights lambda(sigma) for the denoising objective."""
from __future__ import annotations

import torch


class EDMWeighting:
    """EDM weighting for data std ``sd``: lambda = (sigma^2 + sd^2) / (sigma sd)^2 = 1/sigma^2 + 1/sd^2."""

    def __init__(self, sigma_data: float = 0.5):
        self.inv_data_var = 1.0 / sigma_data**2

    def __call__(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma.pow(-2) + self.inv_data_var


class VWeighting(EDMWeighting):
    """The EDM weighting at sd = 1, lambda = 1 + 1/sigma^2: the weighting of v-prediction training."""

    def __init__(self):
        EDMWeighting.__init__(self, 1.0)

