"""Stage-2 training data (official class path ``sgm.data.video_dataset_stage2_degradeImages.VideoDataset``).

The same orbit clips as stage 1 (:mod:`sgm.data.video_dataset`, views and frames placed as
:mod:`sgm.common.orbit` says; official size 1024x1024),
plus what the training-time degradation (:class:`sgm.data.clip_degradation.ClipDegradation`)
needs per clip: the ground-truth alpha of every frame and three stacks of per-frame blur
kernels drawn from the item's seeded RNG.

Difference to the official loader: the masks are the alpha channel resized to the training
resolution (bilinear, so a mask pixel is exactly 0 only where every source pixel it covers is
transparent); the official code keeps them at the file resolution, which only fits when the
renders are already 1024x1024.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .degradations import DegradationConfig, sample_clip_kernels
from .video_dataset import ClipChoice, OrbitClipDataset, OrbitObject, resize_uint8
from .video_dataset import VideoDataset as Stage1VideoDataset

log = logging.getLogger(__name__)


def degradation_settings(options: Mapping | None) -> DegradationConfig:
    """Real-ESRGAN options (keys of ``train_realesrnet_x4plus.yml``) -> config; None gives the defaults."""
    return DegradationConfig() if options is None else DegradationConfig.from_official(dict(options))


def kernel_generator(rng: np.random.Generator) -> torch.Generator:
    """A CPU torch generator seeded from the item's numpy RNG."""
    return torch.Generator().manual_seed(int(rng.integers(2**63 - 1)))


class OrbitClipKernelDataset(OrbitClipDataset):
    """Stage-2 orbit clips.

    Args:
        degradation: Real-ESRGAN options for the kernels (see :func:`degradation_settings`).
        **kwargs: :class:`~sgm.data.video_dataset.OrbitClipDataset` arguments.

    Item: the stage-1 keys (``caption`` is the object name) plus
        ``masks`` float32 (T, H, W) alpha in [0, 1] at the output size;
        ``kernel1s``, ``kernel2s``, ``sinc_kernels`` float32 (T, K, K), K = 21 by default.
    """

    def __init__(self, *args, degradation: Mapping | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.degradation = degradation_settings(degradation)

    def make_item(self, obj: OrbitObject, choice: ClipChoice, video: torch.Tensor, alphas: list[np.ndarray],
                  rng: np.random.Generator) -> dict:
        item = super().make_item(obj, choice, video, alphas, rng)
        item["caption"] = obj.name
        masks = [resize_uint8(a, self.width, self.height, Image.Resampling.BILINEAR) for a in alphas]
        item["masks"] = torch.from_numpy(np.stack(masks).astype(np.float32) / 255.0)
        kernels = sample_clip_kernels(self.sample_frames, self.degradation, kernel_generator(rng))
        item["kernel1s"], item["kernel2s"], item["sinc_kernels"] = kernels.kernel1, kernels.kernel2, kernels.sinc
        return item


class VideoDataset(Stage1VideoDataset):
    """Stage-2 training data as a Lightning DataModule.

    Args:
        degradation: Real-ESRGAN options for the per-frame kernels; use the same values as
            the model's ``degradation_config``.
        depth_folder: accepted for the official YAML; unused there and here (a warning says so).
        **kwargs: :class:`sgm.data.video_dataset.VideoDataset` arguments.
    """

    dataset_class = OrbitClipKernelDataset

    def __init__(self, *args, degradation: Mapping | None = None, depth_folder: str | Path | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.degradation = degradation
        if depth_folder is not None:
            log.warning("data.params.depth_folder=%s is not used: depth comes from the model's depth embedder",
                        depth_folder)

    def dataset_kwargs(self) -> dict:
        return {**super().dataset_kwargs(), "degradation": self.degradation}
