"""Encoder and decoder of the 2-D KL autoencoder (the Stable Diffusion VAE layout).

Both halves are plain convolutional stacks without time embedding:

- :class:`Encoder`: ``conv_in``, one level per entry of ``ch_mult`` (``down.{i}``: ResnetBlocks,
  then a stride-2 :class:`Downsample` except on the last level), a middle block (ResnetBlock,
  single-head :class:`AttnBlock`, ResnetBlock), GroupNorm, SiLU, ``conv_out``.
- :class:`Decoder`: the mirror image, with one extra ResnetBlock per level and nearest-neighbour
  :class:`Upsample`. Its levels are stored as ``up.{i}`` with the same ``i`` as the encoder
  level of equal resolution, so they run from the highest index down to 0.

Module attribute names follow the official checkpoint keys (``down.{i}.block.{j}``,
``mid.attn_1.q``, ``up.{i}.upsample.conv``, ...), so released weights load strictly.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .util import FewRowsGroupNorm

# Both names mean the same single-head softmax attention; "vanilla-xformers" is what the
# official configs ask for, and torch's SDPA already picks a memory-efficient kernel.
ATTN_TYPES = ("vanilla", "vanilla-xformers")


def check_attn_type(attn_type: str) -> None:
    """Raise ``ValueError`` unless ``attn_type`` is one of :data:`ATTN_TYPES`."""
    if attn_type not in ATTN_TYPES:
        raise ValueError(f"attn_type must be one of {ATTN_TYPES}, got {attn_type!r}")


def vae_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm of the autoencoder: 32 groups, eps 1e-6, affine, computed in the input dtype
    (:class:`~sgm.modules.diffusionmodules.util.FewRowsGroupNorm`: fast on one 1024 px frame)."""
    return FewRowsGroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


def silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU written out as ``x * sigmoid(x)``."""
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    """Two 3x3 convolutions with pre-activation GroupNorm/SiLU and a residual connection.

    ``out = shortcut(x) + conv2(dropout(silu(norm2(conv1(silu(norm1(x)))))))`` where the
    shortcut is the identity, or a 1x1 conv (``nin_shortcut``) when the channel count changes.
    Maps (N, in_channels, H, W) to (N, out_channels, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = vae_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = vae_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.nin_shortcut = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(silu(self.norm1(x)))
        h = self.conv2(self.dropout(silu(self.norm2(h))))
        shortcut = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return shortcut + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions, with a residual connection.

    The input is GroupNorm-ed, projected by 1x1 convs ``q``, ``k``, ``v`` (C -> C), attended with
    softmax scale ``1/sqrt(C)``, projected by the 1x1 conv ``proj_out`` and added back.
    Maps (N, C, H, W) to (N, C, H, W).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.norm = vae_norm(channels)
        self.q = nn.Conv2d(channels, channels, kernel_size=1)
        self.k = nn.Conv2d(channels, channels, kernel_size=1)
        self.v = nn.Conv2d(channels, channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    @staticmethod
    def _tokens(x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, 1, H*W, C) contiguous: one head, positions as the sequence.

        Contiguous because torch's fused attention kernels need a unit stride on the channels;
        without it a half-precision call falls back to float32 matrix products (C = 512 is too
        wide for flash attention, not for the memory-efficient kernel).
        """
        return x.flatten(2).transpose(1, 2).unsqueeze(1).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, height, width = x.shape
        h = self.norm(x)
        q, k, v = (self._tokens(proj(h)) for proj in (self.q, self.k, self.v))
        attended = F.scaled_dot_product_attention(q, k, v)  # (N, 1, H*W, C)
        attended = attended.squeeze(1).transpose(1, 2).reshape(n, c, height, width)
        return x + self.proj_out(attended)


class Downsample(nn.Module):
    """Halve H and W: zero-pad one row at the bottom and one column at the right, then a 3x3
    stride-2 conv without padding. (N, C, H, W) -> (N, C, H // 2, W // 2)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour x2, then a 3x3 conv. (N, C, H, W) -> (N, C, 2H, 2W)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _ResolutionLevel(nn.Module):
    """ResnetBlocks at one resolution (``block.{j}``), each followed by ``attn.{j}`` when the level
    has attention, then ``resample`` (when given) under the attribute ``resample_name``.
    (N, in_channels, H, W) -> (N, out_channels, H', W'), H' and W' as ``resample`` makes them."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, dropout: float, use_attn: bool,
                 resample_name: str, resample: nn.Module | None):
        super().__init__()
        widths = [in_channels] + [out_channels] * num_blocks
        self.block = nn.ModuleList(ResnetBlock(c_in, out_channels, dropout) for c_in in widths[:-1])
        self.attn = nn.ModuleList(AttnBlock(out_channels) for _ in range(num_blocks) if use_attn)
        self.resample_name = resample_name
        setattr(self, resample_name, resample)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for j, block in enumerate(self.block):
            x = block(x)
            if len(self.attn):
                x = self.attn[j](x)
        resample = getattr(self, self.resample_name)
        return x if resample is None else resample(x)


class EncoderLevel(_ResolutionLevel):
    """A level of the encoder, optionally ending with ``downsample`` (H, W halved)."""

    def __init__(
        self, in_channels: int, out_channels: int, num_blocks: int, dropout: float, use_attn: bool, downsample: bool
    ):
        super().__init__(in_channels, out_channels, num_blocks, dropout, use_attn, "downsample",
                         Downsample(out_channels) if downsample else None)


class DecoderLevel(_ResolutionLevel):
    """A level of the decoder, optionally ending with ``upsample`` (H, W doubled)."""

    def __init__(
        self, in_channels: int, out_channels: int, num_blocks: int, dropout: float, use_attn: bool, upsample: bool
    ):
        super().__init__(in_channels, out_channels, num_blocks, dropout, use_attn, "upsample",
                         Upsample(out_channels) if upsample else None)


class MidBlock(nn.Module):
    """``block_1`` -> ``attn_1`` -> ``block_2`` at constant width. (N, C, H, W) -> (N, C, H, W)."""

    def __init__(self, channels: int, dropout: float):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    """Image -> latent moments. (N, in_channels, H, W) -> (N, Z, H/f, W/f) with
    ``f = 2 ** (len(ch_mult) - 1)`` and ``Z = 2 * z_channels`` if ``double_z`` else ``z_channels``.

    Args:
        ch: base width; level ``i`` has ``ch * ch_mult[i]`` channels.
        ch_mult: width multiplier per level.
        num_res_blocks: ResnetBlocks per level.
        attn_resolutions: feature-map sizes (relative to ``resolution``) whose levels get an
            AttnBlock after every ResnetBlock; empty for the SD VAE (the middle block always has one).
        in_channels: image channels.
        resolution: nominal input size, only used to match ``attn_resolutions``.
        z_channels: latent channels.
        double_z: output mean and log-variance (2 * z_channels) instead of z_channels.
        dropout: dropout probability inside the ResnetBlocks.
        attn_type: one of :data:`ATTN_TYPES`.
        out_ch: the decoder's output channels; accepted so that one ``ddconfig`` builds both
            halves, unused here.
    """

    def __init__(
        self,
        *,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        attn_resolutions: Sequence[int],
        in_channels: int,
        resolution: int,
        z_channels: int,
        double_z: bool = True,
        dropout: float = 0.0,
        attn_type: str = "vanilla",
        out_ch: int | None = None,
    ):
        super().__init__()
        check_attn_type(attn_type)
        widths = [ch * m for m in ch_mult]
        last = len(widths) - 1
        self.conv_in = nn.Conv2d(in_channels, ch, kernel_size=3, padding=1)
        levels, width_in, size = [], ch, resolution
        for i, width in enumerate(widths):
            levels.append(
                EncoderLevel(
                    width_in, width, num_res_blocks, dropout, size in attn_resolutions, downsample=i != last
                )
            )
            width_in, size = width, size // 2
        self.down = nn.ModuleList(levels)
        self.mid = MidBlock(widths[-1], dropout)
        self.norm_out = vae_norm(widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], 2 * z_channels if double_z else z_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent -> image. (N, z_channels, h, w) -> (N, out_ch, h*f, w*f), ``f = 2 ** (len(ch_mult) - 1)``.
    The output is not squashed (no tanh).

    Args:
        ch, ch_mult, num_res_blocks, attn_resolutions, resolution, z_channels, dropout, attn_type:
            as for :class:`Encoder`; each level has ``num_res_blocks + 1`` ResnetBlocks.
        out_ch: image channels produced.
        in_channels, double_z: encoder settings; accepted so that one ``ddconfig`` builds both
            halves, unused here.
    """

    def __init__(
        self,
        *,
        ch: int,
        out_ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        attn_resolutions: Sequence[int],
        resolution: int,
        z_channels: int,
        dropout: float = 0.0,
        attn_type: str = "vanilla",
        in_channels: int | None = None,
        double_z: bool | None = None,
    ):
        super().__init__()
        check_attn_type(attn_type)
        widths = [ch * m for m in ch_mult]
        self.conv_in = nn.Conv2d(z_channels, widths[-1], kernel_size=3, padding=1)
        self.mid = MidBlock(widths[-1], dropout)
        # Built from the lowest resolution up (execution order), stored under the encoder's indices.
        levels, width_in, size = {}, widths[-1], resolution // 2 ** (len(widths) - 1)
        for i in reversed(range(len(widths))):
            levels[i] = DecoderLevel(
                width_in, widths[i], num_res_blocks + 1, dropout, size in attn_resolutions, upsample=i != 0
            )
            width_in, size = widths[i], size * 2
        self.up = nn.ModuleList(levels[i] for i in range(len(widths)))
        self.norm_out = vae_norm(widths[0])
        self.conv_out = nn.Conv2d(widths[0], out_ch, kernel_size=3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(silu(self.norm_out(h)))
