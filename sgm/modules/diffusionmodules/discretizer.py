"""Noise-level schedules for sampling: ``n`` descending sigmas with a final zero appended."""
from __future__ import annotations

import torch


def edm_sigmas(
    n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Karras et al. (2022) schedule, without the trailing zero.

    ``sigma_i = (sigma_max^(1/rho) + i / (n - 1) * (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``
    for ``i = 0 .. n-1`` (float32), so ``sigma_0 = sigma_max`` and ``sigma_{n-1} = sigma_min``.

    Returns:
        (n,) float32, strictly decreasing for n >= 2.
    """
    if n < 1:
        raise ValueError(f"number of sampling steps must be >= 1, got {n}")
    ramp = torch.linspace(0, 1, n, device=device)
    max_inv_rho = sigma_max ** (1.0 / rho)
    min_inv_rho = sigma_min ** (1.0 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


class EDMDiscretization:
    """Callable schedule ``(n, device) -> (n + 1,)`` sigmas ending with 0.

    Args:
        sigma_min, sigma_max, rho: EDM schedule parameters (Hi3D: 0.002, 700, 7).
    """

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.rho = rho

    def __call__(self, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
        sigmas = edm_sigmas(n, self.sigma_min, self.sigma_max, self.rho, device=device)
        return torch.cat([sigmas, sigmas.new_zeros(1)])
