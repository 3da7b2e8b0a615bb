"""Depth conditioning of stage 2 (official name ``vtdm.encoders.DepthEmbedder``).

Every condition frame gets a MiDaS DPT-Hybrid inverse-depth map, normalised to [0, 1] per
frame and folded by space-to-depth into ``shuffle_size**2`` channels at latent resolution, so
it can be concatenated to the UNet input next to the latents.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from sgm.modules.encoders.midas import DPTConfig, DPTDepthModel
from sgm.modules.encoders.pretrained import FrozenEmbModel, load_pretrained

# Spatial downsampling of the VAE latents the output is aligned with.
# The DPT input side must be a multiple of this (its coarsest feature map has stride 32).
DPT_SIZE_MULTIPLE = 32
# Floor of the per-frame depth range before dividing by it.
MIN_DEPTH_RANGE = 1e-6


class MidasDepth(nn.Module):
    """MiDaS inference wrapper: the DPT network at attribute ``model`` (checkpoint prefix ``model.``).

    Forward: (N, 3, h, w) RGB in [-1, 1] (this is MiDaS' own 0.5/0.5 normalisation of [0, 1]
    input), h and w multiples of 32 -> (N, h, w) relative inverse depth (larger = nearer).
    """

    def __init__(self, config: DPTConfig | None = None):
        super().__init__()
        self.model = DPTDepthModel(config)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.model(frames)


def minmax_per_frame(maps: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> each frame shifted to min 0 and divided by its new max (at least 1e-6)."""
    shifted = maps - maps.flatten(1).amin(dim=1).reshape(-1, 1, 1, 1)
    scale = shifted.flatten(1).amax(dim=1).clamp_min(MIN_DEPTH_RANGE)
    return shifted / scale.reshape(-1, 1, 1, 1)


class DepthEmbedder(FrozenEmbModel):
    """Condition frames -> (N, shuffle_size**2, H/8, W/8) normalised depth channels.

    Forward on frames (B*T, 3, H, W) (or (B, 3, T, H, W)) in [-1, 1]:

    1. bilinear resize (``align_corners=False``) to ``int(H / scale_factor / 32) * 32`` by the
       same for W (1024 -> 384);
    2. ``depth_model`` -> (N, h, w);
    3. bilinear resize to ``(H // f * shuffle_size, W // f * shuffle_size)``;
    4. per-frame min-max normalisation to [0, 1] (:func:`minmax_per_frame`);
    5. space-to-depth by ``shuffle_size``: channel ``shuffle_size * row_offset + col_offset``
       (``F.pixel_unshuffle``).

    Args:
        version: MiDaS ``dpt_hybrid_384.pt`` weights, or ``None`` for random weights.
        freeze: freeze the network (no gradients, always eval).
        use_3d: return (B, 9, T, H/8, W/8) for a (B, 3, T, H, W) input instead of frames first.
        shuffle_size: space-to-depth factor (output channels = its square).
        scale_factor: frames are shrunk by about this factor before the depth network.
        midas_arch: overrides of the full-size DPT-Hybrid sizes (see :meth:`DPTConfig.from_dict`),
            e.g. a tiny network for tests.
        depth_model: use this module ((N, 3, h, w) -> (N, h, w)) instead of building MiDaS;
            ``version`` must then be ``None``.
        latent_downsample: f, the VAE's image side over latent side (8 for the SD VAE): the
            depth map is resized to the latent grid times ``shuffle_size``.
    """

    def __init__(
        self,
        version: str | None = "ckpts/dpt_hybrid_384.pt",
        freeze: bool = True,
        use_3d: bool = False,
        shuffle_size: int = 3,
        scale_factor: float = 2.6666,
        midas_arch: Mapping[str, Any] | None = None,
        depth_model: nn.Module | None = None,
        latent_downsample: int = 8,
    ):
        super().__init__()
        self.latent_downsample = latent_downsample
        self.use_3d = use_3d
        self.shuffle_size = shuffle_size
        self.scale_factor = scale_factor
        if depth_model is None:
            depth_model = MidasDepth(DPTConfig.from_dict(midas_arch))
            load_pretrained(depth_model.model, version, "conditioner_config ... DepthEmbedder.params.version")
        elif version is not None:
            raise ValueError("DepthEmbedder: pass either depth_model or version, not both")
        self.model = depth_model
        if freeze:
            self.freeze()
        elif isinstance(depth_model, MidasDepth):  # data-parallel training needs every trainable parameter used
            for module in depth_model.model.unused_modules():
                module.requires_grad_(False)

    def depth_input_size(self, height: int, width: int) -> tuple[int, int]:
        """Size (h, w) the frames are resized to for the depth network (multiples of 32).

        Raises:
            ValueError: if a side would be 0 (frames smaller than ``32 * scale_factor`` pixels).
        """
        size = tuple(int(side / self.scale_factor / DPT_SIZE_MULTIPLE) * DPT_SIZE_MULTIPLE for side in (height, width))
        if min(size) == 0:
            raise ValueError(
                f"DepthEmbedder: {height}x{width} frames shrink by scale_factor={self.scale_factor} to less than "
                f"{DPT_SIZE_MULTIPLE} px; use frames of at least {int(DPT_SIZE_MULTIPLE * self.scale_factor) + 1} px "
                "or a smaller scale_factor"
            )
        return size

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """(B*T, 3, H, W) or (B, 3, T, H, W) in [-1, 1] -> (B*T, s*s, H/8, W/8) in [0, 1]
        (or (B, s*s, T, H/8, W/8) with ``use_3d``)."""
        if frames.ndim == 5:
            num_frames = frames.shape[2]
            frames = frames.transpose(1, 2).flatten(0, 1)
        elif self.use_3d:
            raise ValueError(f"DepthEmbedder(use_3d=True) needs clips (B, 3, T, H, W), got {tuple(frames.shape)}")
        height, width = frames.shape[-2:]
        resized = F.interpolate(frames, size=self.depth_input_size(height, width), mode="bilinear", align_corners=False)
        depth = self.model(resized).unsqueeze(1)
        f = self.latent_downsample
        target = (height // f * self.shuffle_size, width // f * self.shuffle_size)
        depth = minmax_per_frame(F.interpolate(depth, size=target, mode="bilinear", align_corners=False))
        channels = F.pixel_unshuffle(depth, self.shuffle_size)
        if self.use_3d:
            return channels.unflatten(0, (-1, num_frames)).transpose(1, 2)
        return channels
