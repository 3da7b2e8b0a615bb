"""The two Hi3D models: their conditioning inputs derived from a batch of orbit clips.

Both read ``batch["video"]`` (B, 3, T, H, W) in [-1, 1] and ``batch["elevation"]`` (B,)
in degrees, and add:

- ``cond_frames_without_noise`` (B, 3, H, W): the clean input view (frame 0), for CLIP;
- ``cond_aug`` (B,): the condition-noise level: log-normal ``exp(N(mean, std^2))`` in
  training, a constant (0.02) at inference;
- ``cond_frames``: the condition frames plus ``cond_aug`` times Gaussian noise
  (stage 1: frame 0, (B, 3, H, W); stage 2: every frame, degraded in training, (B*T, 3, H, W));
- ``num_video_frames`` (T) and ``image_only_indicator`` zeros (B, T).

The official release stores ``cond_aug`` and the condition frames in float16; the values
are rounded through float16 here too (0.02 becomes 0.0200043) because that changes the
embeddings, while the tensors keep the input's dtype.
"""
from __future__ import annotations

import torch

from ..util import instantiate_from_config
from .diffusion import DiffusionEngine, video_to_frames


def round_through_half(x: torch.Tensor) -> torch.Tensor:
    """The value ``x`` would have after a float16 round trip, in ``x``'s dtype."""
    return x.to(torch.float16).to(x.dtype)


def sample_cond_aug(
    clips: int, infer: bool, value: float, log_mean: float, log_std: float,
    device: torch.device, generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(clips,) condition-noise levels: ``value`` at inference, ``exp(N(log_mean, log_std^2))`` in training."""
    if infer:
        cond_aug = torch.full((clips,), value, device=device)
    else:
        cond_aug = (log_mean + log_std * torch.randn(clips, device=device, generator=generator)).exp()
    return round_through_half(cond_aug)


def add_condition_noise(
    frames: torch.Tensor, cond_aug: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``frames + cond_aug * N(0, I)`` with one level per frame; frames (N, 3, H, W), cond_aug (N,)."""
    noise = torch.randn(frames.shape, device=frames.device, dtype=frames.dtype, generator=generator)
    return round_through_half(frames + cond_aug.to(frames.dtype)[:, None, None, None] * noise)


class Hi3DVideoLDM(DiffusionEngine):
    """Shared conditioning of the two stages; subclasses choose the condition frames.

    Args:
        resolution: square frame size in pixels (stage 1: 512, stage 2: 1024).
        inference_cond_aug: condition-noise level at inference (official 0.02).
        cond_aug_log_mean, cond_aug_log_std: log-normal condition noise in training (-3, 0.5).
        **kwargs: :class:`~sgm.models.diffusion.DiffusionEngine` arguments.

    The batch contract: a stage reads ``video`` (B, 3, T, H, W) in [-1, 1] and ``elevation``
    (B,) in degrees (training adds what its degradation needs); :meth:`add_custom_cond` makes
    the embedders' keys from them. The unconditional half zeroes every embedder that reads the
    input frames (:attr:`unconditional_keys`); :mod:`sgm.models.contract` checks the rest.
    """

    unconditional_keys = ("cond_frames", "cond_frames_without_noise")

    def __init__(
        self,
        *args,
        resolution: int | None = None,
        inference_cond_aug: float = 0.02,
        cond_aug_log_mean: float = -3.0,
        cond_aug_log_std: float = 0.5,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.resolution = resolution if resolution is not None else self.default_resolution
        self.inference_cond_aug = inference_cond_aug
        self.cond_aug_log_mean = cond_aug_log_mean
        self.cond_aug_log_std = cond_aug_log_std

    def condition_frames(self, batch: dict, infer: bool, generator: torch.Generator | None) -> torch.Tensor:
        """Clean condition frames before the condition noise; (B, 3, H, W) or (B*T, 3, H, W)."""
        raise NotImplementedError

    def add_custom_cond(self, batch: dict, infer: bool, generator: torch.Generator | None = None) -> dict:
        video = batch["video"]
        if video.ndim != 5:
            raise ValueError(f"batch['video'] must be (B, 3, T, H, W), got shape {tuple(video.shape)}")
        clips, frames_per_clip = video.shape[0], video.shape[2]
        if frames_per_clip != self.num_samples:
            raise ValueError(f"batch['video'] has {frames_per_clip} frames, the model expects {self.num_samples}")
        out = dict(batch)
        out["num_video_frames"] = frames_per_clip
        out["cond_frames_without_noise"] = round_through_half(video[:, :, 0])
        cond_aug = sample_cond_aug(clips, infer, self.inference_cond_aug, self.cond_aug_log_mean,
                                   self.cond_aug_log_std, video.device, generator)
        out["cond_aug"] = cond_aug
        frames = self.condition_frames(batch, infer, generator)
        per_frame_aug = cond_aug.repeat_interleave(frames.shape[0] // clips)
        out["cond_frames"] = add_condition_noise(frames, per_frame_aug, generator)
        if "image_only_indicator" not in out:
            out["image_only_indicator"] = video.new_zeros(clips, frames_per_clip)
        return out


class Stage1VideoLDM(Hi3DVideoLDM):
    """Stage 1 (orbit generator): conditioned on the noised input view (frame 0) only."""

    default_resolution = 512

    def condition_frames(self, batch: dict, infer: bool, generator: torch.Generator | None) -> torch.Tensor:
        return batch["video"][:, :, 0]


class Stage2VideoLDM(Hi3DVideoLDM):
    """Stage 2 (refiner): conditioned on every frame of the (low-quality) orbit.

    Args:
        degradation_config: config node of a callable ``degrade(batch, generator) ->
            (B*T, 3, H, W)`` in [-1, 1] applied to the condition frames in training
            (Real-ESRGAN-style, see :mod:`sgm.data.degradations`). None: no degradation.
    """

    default_resolution = 1024
    log_condition_infer = False  # log samples from degraded (training-mode) condition frames

    def __init__(self, *args, degradation_config: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.degradation = instantiate_from_config(degradation_config) if degradation_config is not None else None

    def condition_frames(self, batch: dict, infer: bool, generator: torch.Generator | None) -> torch.Tensor:
        if infer or self.degradation is None:
            return video_to_frames(batch["video"])
        return self.degradation(batch, generator)
