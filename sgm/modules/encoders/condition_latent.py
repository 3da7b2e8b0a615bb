"""Condition-frame latents for the UNet's concat input."""
from __future__ import annotations

import contextlib

import torch

from ...util import instantiate_from_config
from .base import AbstractEmbModel


class VideoPredictionEmbedderWithEncoder(AbstractEmbModel):
    """Encode condition frames with an autoencoder and lay the latents out per video frame.

    Args:
        n_cond_frames: condition frames per clip (Hi3D: 1).
        n_copies: how many consecutive copies of each clip's latents to emit (stage 1: T, so
            every frame sees the input view; stage 2: 1, one latent per frame).
        encoder_config: config node of the encoder (``AutoencoderKLModeOnly``).
        is_ae: call ``encoder.encode(x)`` (True) rather than ``encoder(x)``.
        scale_factor: multiplier of the latents (Hi3D leaves it at 1.0: NOT the 0.18215 of the
            diffusion latents).
        disable_encoder_autocast: run the encoder outside autocast, in its own dtype.
        en_and_decode_n_samples_a_time: encode in chunks of this many images (default: all at once).

    Input (B * n_cond_frames, 3, H, W) in [-1, 1]; output (B * n_copies, n_cond_frames * C, h, w).
    """

    def __init__(
        self,
        n_cond_frames: int,
        n_copies: int,
        encoder_config: dict,
        is_ae: bool = False,
        scale_factor: float = 1.0,
        disable_encoder_autocast: bool = False,
        en_and_decode_n_samples_a_time: int | None = None,
    ):
        super().__init__()
        self.n_cond_frames = n_cond_frames
        self.n_copies = n_copies
        self.encoder = instantiate_from_config(encoder_config)
        self.is_ae = is_ae
        self.scale_factor = scale_factor
        self.disable_encoder_autocast = disable_encoder_autocast
        self.chunk_size = en_and_decode_n_samples_a_time

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        encode = self.encoder.encode if self.is_ae else self.encoder
        if not self.disable_encoder_autocast:
            return encode(images)
        dtype = next(self.encoder.parameters()).dtype
        # the meta device (shape checks, sgm.models.contract) has no autocast to turn off
        no_autocast = (contextlib.nullcontext() if images.device.type == "meta"
                       else torch.autocast(device_type=images.device.type, enabled=False))
        with no_autocast:
            return encode(images.to(dtype))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[0] % self.n_cond_frames:
            raise ValueError(f"{images.shape[0]} images is not a multiple of n_cond_frames={self.n_cond_frames}")
        chunk = self.chunk_size or images.shape[0]
        latents = torch.cat([self._encode(part) for part in images.split(chunk)]) * self.scale_factor
        clips = latents.shape[0] // self.n_cond_frames
        latents = latents.reshape(clips, 1, self.n_cond_frames * latents.shape[1], *latents.shape[2:])
        return latents.expand(-1, self.n_copies, -1, -1, -1).reshape(clips * self.n_copies, *latents.shape[2:])
