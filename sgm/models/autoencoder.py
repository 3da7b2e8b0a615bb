"""The 2-D KL autoencoder (SD VAE) used as first stage and as condition-frame encoder.

Inference-only: no loss, optimiser or logging machinery. The official configs still pass
``lossconfig`` (a ``torch.nn.Identity`` node) and ``monitor``; both are accepted and ignored.
Weights are loaded elsewhere; the parameter keys are ``encoder.*``, ``decoder.*``,
``quant_conv.*`` and ``post_quant_conv.*`` as in the released checkpoints.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from sgm.modules.diffusionmodules.model import Decoder, Encoder
from sgm.modules.distributions.distributions import DiagonalGaussianDistribution


class AutoencoderKL(nn.Module):
    """Image (N, 3, H, W) <-> latent (N, embed_dim, H/f, W/f), ``f = 2 ** (len(ch_mult) - 1)``.

    ``encode``: encoder, then the 1x1 ``quant_conv`` (2*z_channels -> 2*embed_dim) gives the
    moments of a :class:`DiagonalGaussianDistribution`; the latent is a sample of it.
    ``decode``: the 1x1 ``post_quant_conv`` (embed_dim -> z_channels), then the decoder.

    Args:
        embed_dim: latent channels.
        ddconfig: keyword arguments shared by :class:`Encoder` and :class:`Decoder`; ``double_z``
            must be true (the encoder has to produce mean and log-variance).
        lossconfig: training loss config of the official class; ignored (inference only).
        monitor: checkpoint-monitor metric name of the official class; ignored.
    """

    # Whether ``encode`` returns a posterior sample (True) or its mean (False).
    sample_posterior = True

    def __init__(
        self,
        embed_dim: int,
        ddconfig: Mapping[str, Any],
        lossconfig: Mapping[str, Any] | None = None,
        monitor: str | None = None,
    ):
        super().__init__()
        ddconfig = dict(ddconfig)
        if not ddconfig.get("double_z", True):
            raise ValueError("AutoencoderKL needs ddconfig double_z=True (mean and log-variance)")
        z_channels = ddconfig["z_channels"]
        self.embed_dim = embed_dim
        self.downsample_factor = 2 ** (len(ddconfig["ch_mult"]) - 1)  # f: image side / latent side
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        self.quant_conv = nn.Conv2d(2 * z_channels, 2 * embed_dim, kernel_size=1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, kernel_size=1)

    def posterior(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        """The latent distribution of images (N, C, H, W); its ``parameters`` are the moments
        (N, 2*embed_dim, H/f, W/f)."""
        return DiagonalGaussianDistribution(self.quant_conv(self.encoder(x)))

    def encode(
        self, x: torch.Tensor, return_dist: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor | DiagonalGaussianDistribution:
        """Encode images (N, C, H, W).

        Returns:
            the latent (N, embed_dim, H/f, W/f): a posterior sample drawn with ``generator``
            (see :meth:`DiagonalGaussianDistribution.sample`), or the posterior mean for
            :class:`AutoencoderKLModeOnly`; with ``return_dist=True`` the posterior itself
            (``.parameters`` = moments, ``.mode()`` = mean) and ``generator`` is unused.
        """
        dist = self.posterior(x)
        return dist if return_dist else self.latent_of(dist, generator)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (N, embed_dim, h, w) -> images (N, out_ch, h*f, w*f)."""
        return self.decoder(self.post_quant_conv(z))

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, DiagonalGaussianDistribution]:
        """Reconstruct images (N, C, H, W) through the latent that :meth:`encode` would return.

        Returns:
            (reconstruction (N, out_ch, H, W), posterior).
        """
        dist = self.posterior(x)
        return self.decode(self.latent_of(dist, generator)), dist

    def latent_of(self, dist: DiagonalGaussianDistribution, generator: torch.Generator | None) -> torch.Tensor:
        """The latent that :meth:`encode` returns for ``dist``: a sample, or the mean for mode-only."""
        return dist.sample(generator) if self.sample_posterior else dist.mode()


class AutoencoderKLModeOnly(AutoencoderKL):
    """:class:`AutoencoderKL` whose ``encode`` returns the posterior mean (deterministic); the
    layout and keys are identical (the official condition encoder keeps the decoder too)."""

    sample_posterior = False
