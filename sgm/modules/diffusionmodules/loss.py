"""The denoising training objective with one noise level per clip."""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn

from ...util import append_dims, instantiate_from_config


def weighted_frame_loss(
    denoised: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, loss_type: str = "l2"
) -> torch.Tensor:
    """Per-frame mean over (C, H, W) of ``weight * distance(denoised, target)``.

    Args:
        denoised, target: (N, C, H, W).
        weight: (N,) per-frame weights.

    Returns:
        (N,) loss per frame.
    """
    w = append_dims(weight, target.ndim)
    if loss_type == "l2":
        per_element = w * (denoised - target) ** 2
    elif loss_type == "l1":
        per_element = w * (denoised - target).abs()
    else:
        raise ValueError(f"loss_type must be 'l2' or 'l1', got {loss_type!r}")
    return per_element.reshape(target.shape[0], -1).mean(dim=1)


class StandardDiffusionLoss(nn.Module):
    """EDM denoising loss: ``lambda(sigma) * |D(x0 + sigma n, sigma) - x0|^2``.

    One sigma is drawn per clip and shared by its ``num_frames`` frames.

    Args:
        sigma_sampler_config: config node of the sigma distribution (e.g. ``EDMSampling``).
        loss_weighting_config: config node of lambda(sigma) (e.g. ``VWeighting``).
        loss_type: ``"l2"`` or ``"l1"``.
        num_frames: T, frames per clip, used when the batch has no ``num_video_frames``.
        batch2model_keys: batch keys passed through to the network (e.g. ``num_video_frames``,
            ``image_only_indicator``).
    """

    def __init__(
        self,
        sigma_sampler_config: dict,
        loss_weighting_config: dict,
        loss_type: str = "l2",
        num_frames: int = 16,
        batch2model_keys: Iterable[str] | None = None,
    ):
        super().__init__()
        if loss_type not in ("l2", "l1"):
            raise ValueError(f"loss_type must be 'l2' or 'l1', got {loss_type!r}")
        self.sigma_sampler = instantiate_from_config(sigma_sampler_config)
        self.loss_weighting = instantiate_from_config(loss_weighting_config)
        self.loss_type = loss_type
        self.num_frames = num_frames
        self.batch2model_keys = set(batch2model_keys or ())

    def forward(
        self,
        network: nn.Module,
        denoiser: nn.Module,
        cond: dict,
        x0: torch.Tensor,
        batch: dict,
        sigmas: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Per-frame loss (B*T,).

        Args:
            cond: conditioning dict from the conditioner.
            x0: (B*T, C, H, W) clean latents, frames clip-major.
            batch: the data batch (source of ``batch2model_keys``).
            sigmas: optional (B,) noise levels, one per clip (drawn when None).
            noise: optional (B*T, C, H, W) unit noise (drawn when None).
        """
        num_frames = int(batch.get("num_video_frames", self.num_frames))
        if x0.shape[0] % num_frames:
            raise ValueError(f"{x0.shape[0]} frames is not a whole number of {num_frames}-frame clips")
        clips = x0.shape[0] // num_frames
        if sigmas is None:
            sigmas = self.sigma_sampler(clips, device=x0.device, generator=generator)
        if noise is None:
            noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        sigmas = sigmas.to(x0.device).repeat_interleave(num_frames)
        model_kwargs = {key: batch[key] for key in self.batch2model_keys if key in batch}
        noised = x0 + noise * append_dims(sigmas, x0.ndim)
        denoised = denoiser(network, noised, sigmas, cond, **model_kwargs)
        return weighted_frame_loss(denoised, x0, self.loss_weighting(sigmas), self.loss_type)
