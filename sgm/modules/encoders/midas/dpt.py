"""DPT depth decoder and the full MiDaS v3 DPT-Hybrid network (inverse relative depth).

Decoder: each encoder map is projected to ``features`` channels (``scratch.layer{i}_rn``), then
fused coarse-to-fine by residual refinement blocks that upsample by 2 (``scratch.refinenet{i}``),
and a small head (``scratch.output_conv``) predicts one non-negative channel at input size.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from sgm.modules.encoders.midas.encoder import HybridViTConfig, HybridViTEncoder


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, 2H, 2W), bilinear with ``align_corners=True``."""
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class Upsample2x(nn.Module):
    """Module form of :func:`upsample2x`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample2x(x)


class ResidualConvUnit(nn.Module):
    """``x + conv2(relu(conv1(relu(x))))`` with 3x3 convs; shape-preserving (N, C, H, W)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """Merge a coarse path with a skip feature, refine, upsample by 2, mix with a 1x1 conv.

    Forward: path (N, C, H, W) [+ skip (N, C, H, W)] -> (N, C, 2H, 2W).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.resConfUnit1 = ResidualConvUnit(channels)
        self.resConfUnit2 = ResidualConvUnit(channels)
        self.out_conv = nn.Conv2d(channels, channels, 1)

    def forward(self, path: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            path = path + self.resConfUnit1(skip)
        return self.out_conv(upsample2x(self.resConfUnit2(path)))


class DPTDecoder(nn.Module):
    """Four encoder maps (strides 4, 8, 16, 32) -> (N, 1, H, W) non-negative prediction.

    Args:
        in_channels: channels of the four encoder maps.
        features: common width of the fusion path (256).
        head_channels: width of the head's last hidden conv (32).
    """

    def __init__(self, in_channels: tuple[int, int, int, int], features: int = 256, head_channels: int = 32):
        super().__init__()
        for level, channels in enumerate(in_channels, start=1):
            self.add_module(f"layer{level}_rn", nn.Conv2d(channels, features, 3, padding=1, bias=False))
        for level in range(1, 5):
            self.add_module(f"refinenet{level}", FusionBlock(features))
        self.output_conv = nn.Sequential(
            nn.Conv2d(features, features // 2, 3, padding=1),
            Upsample2x(),
            nn.Conv2d(features // 2, head_channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(head_channels, 1, 1),
            nn.ReLU(),
        )

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        projected = [self.get_submodule(f"layer{level}_rn")(m) for level, m in enumerate(maps, start=1)]
        path = self.refinenet4(projected[3])
        path = self.refinenet3(path, projected[2])
        path = self.refinenet2(path, projected[1])
        path = self.refinenet1(path, projected[0])
        return self.output_conv(path)


@dataclass(frozen=True)
class DPTConfig:
    """DPT-Hybrid sizes: the encoder's (:class:`HybridViTConfig`) plus the decoder's widths."""

    encoder: HybridViTConfig = field(default_factory=HybridViTConfig)
    features: int = 256
    head_channels: int = 32

    @classmethod
    def from_dict(cls, overrides: Mapping[str, Any] | None) -> DPTConfig:
        """Full-size config with ``overrides`` applied; encoder fields may be given at top level.

        Example tiny model: ``{"image_size": 64, "stem_channels": 32, "stage_channels": [128, 128, 128],
        "stage_depths": [1, 1, 1], "embed_dim": 64, "depth": 2, "num_heads": 2, "block_hooks": [0, 1],
        "features": 32, "head_channels": 8}``.
        """
        overrides = dict(overrides or {})
        decoder_keys = {"features", "head_channels"}
        encoder_args = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items() if k not in decoder_keys}
        return cls(HybridViTConfig(**encoder_args), **{k: overrides[k] for k in decoder_keys & set(overrides)})


class DPTDepthModel(nn.Module):
    """MiDaS v3 DPT-Hybrid: (N, 3, H, W) in [-1, 1], H, W multiples of 32 -> (N, H, W) inverse depth.

    Submodules ``pretrained`` (:class:`HybridViTEncoder`) and ``scratch`` (:class:`DPTDecoder`)
    carry the MiDaS checkpoint key names.
    """

    def __init__(self, config: DPTConfig | None = None):
        super().__init__()
        config = config or DPTConfig()
        self.pretrained = HybridViTEncoder(config.encoder)
        self.scratch = DPTDecoder(config.encoder.feature_channels, config.features, config.head_channels)

    def unused_modules(self) -> list[nn.Module]:
        """Modules that hold checkpoint keys but take no part in :meth:`forward` (the encoder's, and the
        deepest fusion block's skip unit: that block gets no skip)."""
        return [*self.pretrained.unused_modules(), self.scratch.refinenet4.resConfUnit1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scratch(self.pretrained(x)).squeeze(1)
