"""Scalar conditions (elevation, cond_aug) embedded with the sinusoidal timestep embedding."""
from __future__ import annotations

import torch

from ..diffusionmodules.util import timestep_embedding
from .base import AbstractEmbModel


class ConcatTimestepEmbedderND(AbstractEmbModel):
    """Embed each of ``d`` scalars per sample with ``timestep_embedding(value, outdim)`` and concatenate.

    Args:
        outdim: width of one scalar's embedding.

    Input (B,) or (B, d) of any numeric dtype (elevation in degrees, cond_aug as given);
    output (B, d * outdim) float32.
    """

    def __init__(self, outdim: int):
        super().__init__()
        self.outdim = outdim

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        if values.ndim == 1:
            values = values[:, None]
        if values.ndim != 2:
            raise ValueError(f"ConcatTimestepEmbedderND expects (B,) or (B, d) values, got shape {tuple(values.shape)}")
        batch, dims = values.shape
        return timestep_embedding(values.reshape(-1), self.outdim).reshape(batch, dims * self.outdim)
