"""The DPT-Hybrid encoder: a ResNet-50 (v2, weight-standardised convs) + ViT-B/16 hybrid from timm
that yields four feature maps for the DPT decoder.

The first two maps are outputs of ResNet stages (strides 4 and 8), the last two are ViT token
sequences after chosen blocks, turned back into maps by a readout projection and convs
(strides 16 and 32). Parameter names follow the MiDaS checkpoints: the timm model sits at
``model``, the token post-processing at ``act_postprocess3`` / ``act_postprocess4``.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import HybridEmbed, StdConv2dSame
from timm.models.resnetv2 import ResNetV2
from timm.models.vision_transformer import VisionTransformer


@dataclass(frozen=True)
class HybridViTConfig:
    """Sizes of the hybrid encoder; the defaults are timm's ``vit_base_r50_s16_384`` (MiDaS ``vitb_rn50_384``).

    Attributes:
        image_size: side of the square training resolution (sets the stored position grid).
        stem_channels: channels of the 7x7 stride-2 stem conv.
        stage_channels: output channels of each ResNet stage (bottleneck width = 1/4 of it).
        stage_depths: bottleneck blocks per stage; stage 0 has stride 1, the others stride 2.
        embed_dim, depth, num_heads: ViT width, number of blocks, attention heads.
        stage_hooks: the two ResNet stages whose outputs are features 1 and 2.
        block_hooks: the two ViT blocks whose outputs are features 3 and 4.
        num_classes: width of the (unused) classifier head kept for checkpoint compatibility.
    """

    image_size: int = 384
    stem_channels: int = 64
    stage_channels: tuple[int, ...] = (256, 512, 1024)
    stage_depths: tuple[int, ...] = (3, 4, 9)
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    stage_hooks: tuple[int, int] = (0, 1)
    block_hooks: tuple[int, int] = (8, 11)
    num_classes: int = 1000

    @property
    def feature_channels(self) -> tuple[int, int, int, int]:
        """Channels of the four output maps: the two hooked stages, then the ViT width twice."""
        return (
            self.stage_channels[self.stage_hooks[0]],
            self.stage_channels[self.stage_hooks[1]],
            self.embed_dim,
            self.embed_dim,
        )


def build_hybrid_vit(config: HybridViTConfig) -> VisionTransformer:
    """timm VisionTransformer on a ResNetV2 patch embedding, key-compatible with ``vit_base_r50_s16_384``."""
    backbone = ResNetV2(
        layers=list(config.stage_depths),
        channels=tuple(config.stage_channels),
        stem_chs=config.stem_channels,
        num_classes=0,
        global_pool="",
        preact=False,
        stem_type="same",
        conv_layer=partial(StdConv2dSame, eps=1e-8),
    )
    return VisionTransformer(
        img_size=config.image_size,
        patch_size=1,
        embed_layer=partial(HybridEmbed, backbone=backbone),
        embed_dim=config.embed_dim,
        depth=config.depth,
        num_heads=config.num_heads,
        num_classes=config.num_classes,
    )


class ProjectReadout(nn.Module):
    """Fold the class token into every patch token: ``GELU(Linear([patch, cls]))``.

    Forward: (N, 1 + h*w, C) -> (N, h*w, C).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.project = nn.Sequential(nn.Linear(2 * channels, channels), nn.GELU())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        patches, cls = tokens[:, 1:], tokens[:, :1]
        return self.project(torch.cat([patches, cls.expand_as(patches)], dim=-1))


class TokensToMap(nn.Module):
    """Token sequence -> feature map: readout, reshape to the token grid, then convs.

    Child names are the MiDaS checkpoint indices: ``0`` = readout, ``3``, ``4``, ... = convs
    (indices 1 and 2 were the parameter-free transpose/unflatten steps).

    Forward: (N, 1 + h*w, C) tokens and the grid (h, w) -> (N, C', h', w').
    """

    def __init__(self, readout: nn.Module, convs: list[nn.Module]):
        super().__init__()
        self.add_module("0", readout)
        self.conv_names = [str(i) for i in range(3, 3 + len(convs))]
        for name, conv in zip(self.conv_names, convs):
            self.add_module(name, conv)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        x = self.get_submodule("0")(tokens).transpose(1, 2).unflatten(2, grid)
        for name in self.conv_names:
            x = self.get_submodule(name)(x)
        return x


def resize_position_grid(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(1, 1 + g*g, C) class + square grid position embedding -> (1, 1 + h*w, C), bilinear
    (``align_corners=False``) resampling of the grid part."""
    cls_pos, grid_pos = pos_embed[:, :1], pos_embed[0, 1:]
    side = int(round(grid_pos.shape[0] ** 0.5))
    grid_pos = grid_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid_pos = F.interpolate(grid_pos, size=grid, mode="bilinear", align_corners=False)
    return torch.cat([cls_pos, grid_pos.flatten(2).transpose(1, 2)], dim=1)


class HybridViTEncoder(nn.Module):
    """Four multi-scale feature maps of an image.

    Forward: (N, 3, H, W) with H, W multiples of 32, normalised to [-1, 1] ->
    [(N, c1, H/4, W/4), (N, c2, H/8, W/8), (N, D, H/16, W/16), (N, D, H/32, W/32)] with
    (c1, c2, D) = (256, 512, 768) for the default config. The ViT's position grid is resampled
    to (H/16, W/16), so any such size works; the final ViT norm and head are unused.
    """

    def __init__(self, config: HybridViTConfig):
        super().__init__()
        self.config = config
        dim = config.embed_dim
        self.model = build_hybrid_vit(config)
        self.act_postprocess3 = TokensToMap(ProjectReadout(dim), [nn.Conv2d(dim, dim, 1)])
        self.act_postprocess4 = TokensToMap(
            ProjectReadout(dim), [nn.Conv2d(dim, dim, 1), nn.Conv2d(dim, dim, 3, stride=2, padding=1)]
        )

    def unused_modules(self) -> list[nn.Module]:
        """Modules that hold checkpoint keys but take no part in :meth:`forward`: the ViT's final norm,
        its classifier head and any block after the last hooked one."""
        vit = self.model
        return [vit.norm, vit.head, *vit.blocks[max(self.config.block_hooks) + 1:]]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        vit = self.model
        resnet = vit.patch_embed.backbone
        stage_hooks, block_hooks = self.config.stage_hooks, self.config.block_hooks

        x = resnet.stem(x)
        stage_features = []
        for index, stage in enumerate(resnet.stages):
            x = stage(x)
            if index in stage_hooks:
                stage_features.append(x)
        x = vit.patch_embed.proj(resnet.norm(x))  # (N, D, h, w)

        grid = tuple(x.shape[-2:])
        tokens = torch.cat([vit.cls_token.expand(x.shape[0], -1, -1), x.flatten(2).transpose(1, 2)], dim=1)
        tokens = vit.pos_drop(tokens + resize_position_grid(vit.pos_embed, grid))
        block_outputs = []
        for index, block in enumerate(vit.blocks):
            tokens = block(tokens)
            if index in block_hooks:
                block_outputs.append(tokens)
            if index == max(block_hooks):
                break
        return [
            *stage_features,
            self.act_postprocess3(block_outputs[0], grid),
            self.act_postprocess4(block_outputs[1], grid),
        ]
