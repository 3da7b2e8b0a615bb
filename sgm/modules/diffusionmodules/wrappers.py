"""Adapter between the denoiser's ``(x, c_noise, cond)`` call and the UNet's keyword API."""
from __future__ import annotations

import torch
import torch.nn as nn


class OpenAIWrapper(nn.Module):
    """Hold the UNet as ``diffusion_model`` (so checkpoint keys read ``model.diffusion_model.*``).

    ``cond["concat"]`` (if present) is appended to ``x`` on channels (it is not scaled by the
    denoiser's c_in), ``cond["crossattn"]`` becomes the cross-attention context and
    ``cond["vector"]`` the vector conditioning ``y``; extra keyword arguments
    (``num_video_frames``, ``image_only_indicator``) pass through to the UNet.
    """

    def __init__(self, diffusion_model: nn.Module):
        super().__init__()
        self.diffusion_model = diffusion_model

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: dict, **kwargs) -> torch.Tensor:
        """Args: x (B*T, C, H, W) scaled noisy latents; c_noise (B*T,) network time input."""
        if "concat" in cond:
            x = torch.cat([x, cond["concat"].to(x.dtype)], dim=1)
        return self.diffusion_model(
            x, timesteps=c_noise, context=cond.get("crossattn"), y=cond.get("vector"), **kwargs
        )
