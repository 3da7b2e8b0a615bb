"""UNet building blocks: the block container, the residual block, down- and upsampling.

Feature maps are (N, C, H, W) for 2-D blocks and (B, C, T, H, W) for 3-D (temporal) blocks.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
import torch.nn as nn
import torch.nn.functional as F

from sgm.modules.diffusionmodules.util import maybe_checkpoint, normalization, zero_module

_CONVS = {2: nn.Conv2d, 3: nn.Conv3d}


def conv_nd(dims: int, *args, **kwargs) -> nn.Module:
    """A 2-D or 3-D convolution."""
    if dims not in _CONVS:
        raise ValueError(f"dims must be 2 or 3, got {dims}")
    return _CONVS[dims](*args, **kwargs)


@dataclass(frozen=True)
class BlockInputs:
    """Everything one UNet pass hands to its blocks; each block takes the fields it needs.

    Attributes:
        emb: (B*T, E) timestep (+ label) embedding, one row per frame.
        context: (B*T, M, D) cross-attention context, one row per frame, or None.
        num_video_frames: T, the frames per clip.
        image_only_indicator: (B, T), nonzero where a frame is to be treated as a still image.
        time_context: (B, M', D') context of the temporal cross-attention, or None.
    """

    emb: torch.Tensor
    context: torch.Tensor | None = None
    num_video_frames: int = 1
    image_only_indicator: torch.Tensor | None = None
    time_context: torch.Tensor | None = None


@runtime_checkable
class ConditionedBlock(Protocol):
    """A block that reads its own inputs from :class:`BlockInputs`."""

    def forward_conditioned(self, x: torch.Tensor, inputs: BlockInputs) -> torch.Tensor: ...


class TimestepEmbedSequential(nn.Sequential):
    """Runs its children in order; :class:`ConditionedBlock` children also get the :class:`BlockInputs`."""

    def forward(self, x: torch.Tensor, inputs: BlockInputs) -> torch.Tensor:
        for layer in self:
            x = layer.forward_conditioned(x, inputs) if isinstance(layer, ConditionedBlock) else layer(x)
        return x


class ResBlock(nn.Module):
    """Residual block with an additive embedding: ``skip(x) + out_layers(in_layers(x) + emb_layers(emb))``.

    Args:
        channels, out_channels: input and output channels (``out_channels`` defaults to ``channels``);
            the skip is a 1x1 conv when they differ.
        emb_channels: width of the embedding.
        dropout: dropout before the last conv.
        dims: 2 for (N, C, H, W) inputs, 3 for (B, C, T, H, W).
        kernel_size: conv kernel, an int or one size per dim; padding keeps the size.
        per_frame_emb: the embedding is (B, T, E) with one row per frame of a 3-D input, instead
            of one row per sample (N, E).
        use_checkpoint: activation checkpointing during training.
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float = 0.0,
        out_channels: int | None = None,
        dims: int = 2,
        kernel_size: int | Sequence[int] = 3,
        per_frame_emb: bool = False,
        use_checkpoint: bool = False,
    ):
        super().__init__()
        out_channels = out_channels or channels
        kernel_size = [kernel_size] * dims if isinstance(kernel_size, int) else list(kernel_size)
        if len(kernel_size) != dims or any(k % 2 == 0 for k in kernel_size):
            raise ValueError(f"kernel_size must be {dims} odd sizes, got {kernel_size}")
        padding = [k // 2 for k in kernel_size]
        self.in_layers = nn.Sequential(
            normalization(channels), nn.SiLU(), conv_nd(dims, channels, out_channels, kernel_size, padding=padding)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            normalization(out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            zero_module(conv_nd(dims, out_channels, out_channels, kernel_size, padding=padding)),
        )
        self.skip_connection = nn.Identity() if out_channels == channels else conv_nd(dims, channels, out_channels, 1)
        self.per_frame_emb = per_frame_emb
        self.use_checkpoint = use_checkpoint

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) with emb (N, E), or (B, C, T, H, W) with emb (B, T, E) if ``per_frame_emb``."""
        return maybe_checkpoint(self._forward, x, emb, enabled=self.use_checkpoint)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        e = self.emb_layers(emb).to(h.dtype)
        if self.per_frame_emb:
            e = e.transpose(1, 2)  # (B, T, C) -> (B, C, T)
        h = h + e.reshape(*e.shape, *[1] * (h.ndim - e.ndim))
        return self.skip_connection(x) + self.out_layers(h)

    def forward_conditioned(self, x: torch.Tensor, inputs: BlockInputs) -> torch.Tensor:
        return self(x, inputs.emb)


class Downsample(nn.Module):
    """Halve H and W with a 3x3 stride-2 conv: (N, C, H, W) -> (N, C_out, ceil(H/2), ceil(W/2))."""

    def __init__(self, channels: int, out_channels: int | None = None):
        super().__init__()
        self.op = nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Double H and W (nearest) then a 3x3 conv: (N, C, H, W) -> (N, C_out, 2H, 2W)."""

    def __init__(self, channels: int, out_channels: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))
