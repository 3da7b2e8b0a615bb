"""Classifier-free guidance.

A guider has two halves: ``prepare_inputs(x, sigma, cond, uc)`` builds the batch the
denoiser sees, and ``__call__(denoised, sigma)`` combines the denoiser output back to the
size of ``x``. The batched guiders put the unconditional half FIRST (``[uc ; c]``).
"""
from __future__ import annotations

import torch

from ...util import append_dims

# Conditioning keys that differ between cond and uncond and are therefore batched.
GUIDED_KEYS = ("vector", "crossattn", "concat")


def batch_uncond_cond(
    x: torch.Tensor, sigma: torch.Tensor, cond: dict, uc: dict
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Stack ``[uc ; c]`` along dim 0 for x, sigma and the guided keys.

    Keys outside :data:`GUIDED_KEYS` must be identical in cond and uc and are passed once.
    """
    merged = {}
    for key, value in cond.items():
        if key in GUIDED_KEYS:
            merged[key] = torch.cat([uc[key], value], dim=0)
        else:
            if not torch.equal(value, uc[key]):
                raise ValueError(f"conditioning key {key!r} differs between cond and uncond but is not guided")
            merged[key] = value
    return torch.cat([x, x]), torch.cat([sigma, sigma]), merged


def guidance_halves(x: torch.Tensor, sigma: torch.Tensor, cond: dict) -> list[tuple[torch.Tensor, torch.Tensor, dict]]:
    """Split a ``[uc ; c]`` batch into its two halves: (x, sigma, cond) of each.

    x, sigma and the guided keys of ``cond`` are split along dim 0; the other keys go to both.
    """
    return [(x.chunk(2)[half], sigma.chunk(2)[half],
             {k: v.chunk(2)[half] if k in GUIDED_KEYS else v for k, v in cond.items()}) for half in range(2)]


def in_two_halves(denoiser):
    """Wrap ``denoiser(x, sigma, cond)`` so a ``[uc ; c]`` batch runs as two half-size calls
    (:func:`guidance_halves`). Same outputs as one call, about half the peak activation memory.
    """
    def call(x: torch.Tensor, sigma: torch.Tensor, cond: dict) -> torch.Tensor:
        return torch.cat([denoiser(*half) for half in guidance_halves(x, sigma, cond)])
    return call


def cfg_combine(x_uncond: torch.Tensor, x_cond: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """``x_u + scale * (x_c - x_u)``."""
    return x_uncond + scale * (x_cond - x_uncond)


def linear_frame_scales(min_scale: float, max_scale: float, num_frames: int) -> torch.Tensor:
    """Per-frame guidance scales (T,), linear from ``min_scale`` (frame 0) to ``max_scale`` (last frame)."""
    return torch.linspace(min_scale, max_scale, num_frames)


class IdentityGuider:
    """No guidance: the denoiser sees the conditional batch only."""

    def prepare_inputs(self, x: torch.Tensor, sigma: torch.Tensor, cond: dict, uc: dict):
        return x, sigma, cond

    def __call__(self, denoised: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return denoised


class VanillaCFG:
    """Classifier-free guidance with one scale for every sample."""

    def __init__(self, scale: float):
        self.scale = scale

    def prepare_inputs(self, x: torch.Tensor, sigma: torch.Tensor, cond: dict, uc: dict):
        return batch_uncond_cond(x, sigma, cond, uc)

    def __call__(self, denoised: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        x_uncond, x_cond = denoised.chunk(2)
        return cfg_combine(x_uncond, x_cond, self.scale)


class LinearPredictionGuider(VanillaCFG):
    """Guidance whose scale grows linearly over the frames of each clip.

    Frame 0 (the input view) gets ``min_scale`` (1.0: purely conditional), the last frame
    ``max_scale``. The denoised batch is (2*B*T, ...) ordered ``[uc ; c]``, frames clip-major.

    Args:
        max_scale: scale of the last frame.
        num_frames: T, frames per clip.
        min_scale: scale of frame 0.
    """

    def __init__(self, max_scale: float, num_frames: int, min_scale: float = 1.0):
        super().__init__(scale=max_scale)
        self.num_frames = num_frames
        self.frame_scales = linear_frame_scales(min_scale, max_scale, num_frames)

    def __call__(self, denoised: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        x_uncond, x_cond = denoised.chunk(2)
        frames = x_uncond.shape[0]
        if frames % self.num_frames:
            raise ValueError(
                f"LinearPredictionGuider(num_frames={self.num_frames}) got {frames} frames per half, "
                "not a whole number of clips"
            )
        scale = self.frame_scales.to(x_uncond.device).repeat(frames // self.num_frames)
        return cfg_combine(x_uncond, x_cond, append_dims(scale, x_uncond.ndim))
