"""The diagonal Gaussian posterior of the KL autoencoder."""
from __future__ import annotations

import torch

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0


class DiagonalGaussianDistribution:
    """Independent Gaussians per latent element, read from the encoder's moments.

    Args:
        parameters: (N, 2*C, H, W) moments; channels ``[:C]`` are the mean, ``[C:]`` the
            log-variance (clamped to ``[LOGVAR_MIN, LOGVAR_MAX]``).

    Attributes:
        parameters: the moments as given, (N, 2*C, H, W).
        mean, logvar, std, var: (N, C, H, W) each; ``std = exp(logvar / 2)``.
    """

    def __init__(self, parameters: torch.Tensor):
        self.parameters = parameters
        self.mean, logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = torch.clamp(logvar, LOGVAR_MIN, LOGVAR_MAX)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``mean + std * noise``, (N, C, H, W).

        The standard-normal noise is drawn on ``generator``'s device when one is given (a CPU
        generator reproduces the official CPU draw) and moved to the mean's device; without a
        generator it is drawn with the global RNG of the mean's device. It has the mean's dtype.
        """
        if generator is None:
            noise = torch.randn_like(self.mean)
        else:
            noise = torch.randn(
                self.mean.shape, generator=generator, device=generator.device, dtype=self.mean.dtype
            ).to(self.mean.device)
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        """The most likely latent, i.e. the mean, (N, C, H, W)."""
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL divergence to the standard normal, summed over all but the batch dim: (N,)."""
        per_element = self.mean.pow(2) + self.var - 1.0 - self.logvar
        return 0.5 * per_element.flatten(1).sum(dim=1)
