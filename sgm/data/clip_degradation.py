"""The stage-2 training degradation as the callable ``Stage2VideoLDM`` expects.

``Stage2VideoLDM(degradation_config={"target": "sgm.data.clip_degradation.ClipDegradation", ...})``
calls ``degrade(batch, generator)`` on every training batch; this wraps
:class:`sgm.data.degradations.DegradationPipeline` (Real-ESRGAN-style, reference section 8.1)
around the batch layout of :mod:`sgm.data.video_dataset_stage2_degradeImages`.

The pipeline always runs in float32 with autocast off. The official one runs under CUDA fp16
autocast (its blurs and resizes in half precision); this changes the degraded pixels by about
fp16 rounding, which is far below the degradation's own randomness.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

from .degradation_kernels import ClipKernels
from .degradations import DegradationPipeline
from .video_dataset_stage2_degradeImages import degradation_settings

KERNEL_KEYS = ("kernel1s", "kernel2s", "sinc_kernels")


def fresh_generator(device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded from torch's global RNG (so a global seed fixes it)."""
    seed = int(torch.randint(2**62, (1,)).item())
    return torch.Generator(device=device).manual_seed(seed)


class ClipDegradation:
    """``degrade(batch, generator) -> (B*T, 3, H, W)`` in [-1, 1], frame 0 of each clip clean.

    Args:
        options: Real-ESRGAN options (keys of ``train_realesrnet_x4plus.yml``); None = defaults.

    Reads from the batch: ``video`` (B, 3, T, H, W) in [-1, 1], ``masks`` (B, T, H, W) alpha
    (pixels where it is exactly 0 come out white) and ``kernel1s`` / ``kernel2s`` /
    ``sinc_kernels`` (B, T, K, K). ``generator`` must live on the video's device; None draws
    a fresh one from the global RNG.
    """

    def __init__(self, options: Mapping | None = None):
        self.pipeline = DegradationPipeline(degradation_settings(options))

    def __call__(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        missing = [key for key in ("video", "masks", *KERNEL_KEYS) if key not in batch]
        if missing:
            raise KeyError(f"the stage-2 degradation needs batch keys {missing} (batch keys: {sorted(batch)}); "
                           "use sgm.data.video_dataset_stage2_degradeImages.VideoDataset")
        video = batch["video"]
        b, _, t, h, w = video.shape
        masks = batch["masks"]
        if tuple(masks.shape) != (b, t, h, w):
            raise ValueError(f"batch['masks'] must be (B, T, H, W) = {(b, t, h, w)}, got {tuple(masks.shape)}")
        if generator is None:
            generator = fresh_generator(video.device)
        with torch.autocast(device_type=video.device.type, enabled=False):
            clips = (video.float().permute(0, 2, 1, 3, 4) + 1.0) / 2.0
            kernels = ClipKernels(*(batch[key].float().to(video.device) for key in KERNEL_KEYS))
            degraded = self.pipeline(clips, masks.float().to(video.device), kernels, generator)
        return degraded.reshape(b * t, 3, h, w).to(video.dtype)
