"""The denoiser D(x, sigma): a preconditioned wrapper around the network."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from ...util import append_dims, instantiate_from_config


class Denoiser(nn.Module):
    """``D(x, sigma) = c_skip * x + c_out * F(c_in * x, c_noise, cond)``.

    Args:
        scaling_config: config node of a scaling (e.g. ``VScalingWithEDMcNoise``).
    """

    def __init__(self, scaling_config: dict):
        super().__init__()
        self.scaling: Callable = instantiate_from_config(scaling_config)

    def forward(
        self, network: nn.Module, x: torch.Tensor, sigma: torch.Tensor, cond: dict, **network_kwargs
    ) -> torch.Tensor:
        """Denoise ``x`` (B*T, C, H, W) at per-frame noise levels ``sigma`` (B*T,).

        ``network`` is called as ``network(c_in * x, c_noise, cond, **network_kwargs)``
        (see :class:`~sgm.modules.diffusionmodules.wrappers.OpenAIWrapper`).
        """
        c_skip, c_out, c_in, c_noise = self.scaling(sigma)
        c_skip, c_out, c_in = (append_dims(c, x.ndim) for c in (c_skip, c_out, c_in))
        prediction = network(x * c_in, c_noise, cond, **network_kwargs)
        return prediction * c_out + x * c_skip
