"""The spatio-temporal UNet of Stable Video Diffusion, as used by both Hi3D stages.

A batch holds B clips of T frames, flattened clip-major to B*T rows: row ``b * T + t`` is
frame ``t`` of clip ``b``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from einops import rearrange

from sgm.modules.diffusionmodules.openaimodel import (
    BlockInputs,
    Downsample,
    ResBlock,
    TimestepEmbedSequential,
    Upsample,
)
from sgm.modules.diffusionmodules.util import AlphaBlender, normalization, timestep_embedding, zero_module
from sgm.modules.video_attention import SpatialVideoTransformer


class VideoResBlock(ResBlock):
    """A 2-D :class:`ResBlock` on every frame, then a 3-D ResBlock across frames (``time_stack``), blended.

    ``time_stack`` sees each clip as (B, C, T, H, W): its GroupNorm statistics span all frames of a
    clip, its convs have kernel ``video_kernel_size`` (zero padding in time) and it gets the
    embedding of each frame. ``time_mixer`` returns alpha * spatial + (1 - alpha) * temporal.
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float = 0.0,
        out_channels: int | None = None,
        video_kernel_size: int | Sequence[int] = 3,
        merge_strategy: str = "fixed",
        merge_factor: float = 0.5,
        use_checkpoint: bool = False,
    ):
        super().__init__(channels, emb_channels, dropout, out_channels, use_checkpoint=use_checkpoint)
        out_channels = out_channels or channels
        self.time_stack = ResBlock(
            out_channels,
            emb_channels,
            dropout,
            dims=3,
            kernel_size=video_kernel_size,
            per_frame_emb=True,
            use_checkpoint=use_checkpoint,
        )
        self.time_mixer = AlphaBlender(merge_factor, merge_strategy, layout="channels_first")

    def forward(
        self,
        x: torch.Tensor,
        emb: torch.Tensor,
        num_video_frames: int,
        image_only_indicator: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: (B*T, C, H, W); emb: (B*T, E); image_only_indicator: (B, T) -> (B*T, C_out, H, W)."""
        spatial = rearrange(super().forward(x, emb), "(b t) c h w -> b c t h w", t=num_video_frames)
        temporal = self.time_stack(spatial, rearrange(emb, "(b t) e -> b t e", t=num_video_frames))
        mixed = self.time_mixer(spatial, temporal, image_only_indicator)
        return rearrange(mixed, "b c t h w -> (b t) c h w")

    def forward_conditioned(self, x: torch.Tensor, inputs: BlockInputs) -> torch.Tensor:
        return self(x, inputs.emb, inputs.num_video_frames, inputs.image_only_indicator)


def _per_frame(rows: torch.Tensor | None, num_rows: int, num_frames: int, name: str) -> torch.Tensor | None:
    """Repeat one-row-per-clip conditioning to one row per frame (clip-major); pass per-frame rows through."""
    if rows is None or rows.shape[0] == num_rows:
        return rows
    if rows.shape[0] * num_frames == num_rows:
        return rows.repeat_interleave(num_frames, dim=0)
    clips = num_rows // num_frames
    raise ValueError(f"{name} has {rows.shape[0]} rows; expected {num_rows} (per frame) or {clips} (per clip)")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(f"VideoUNet: {message}")


class VideoUNet(nn.Module):
    """Spatio-temporal UNet: ``input_blocks`` (stem + levels), ``middle_block``, ``output_blocks``, ``out``.

    Each level has ``num_res_blocks`` :class:`VideoResBlock` (followed by a
    :class:`SpatialVideoTransformer` when the downsampling factor is in ``attention_resolutions``)
    and, except the last, a :class:`Downsample`; the decoder mirrors it with one extra block per
    level and skip concatenation. Keyword names follow the official configs. Only the settings
    the SVD/Hi3D architecture uses are implemented; other values raise ``ValueError``.
    ``extra_ff_mix_layer`` has no effect: temporal blocks always have ``ff_in`` (as officially).
    """

    def __init__(
        self,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_resolutions: Sequence[int],
        dropout: float = 0.0,
        channel_mult: Sequence[int] = (1, 2, 4, 8),
        conv_resample: bool = True,
        dims: int = 2,
        num_classes: str | None = None,
        use_checkpoint: bool = False,
        num_heads: int = -1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        transformer_depth: int | Sequence[int] = 1,
        transformer_depth_middle: int | None = None,
        context_dim: int | None = None,
        time_downup: bool = False,
        time_context_dim: int | None = None,
        extra_ff_mix_layer: bool = False,
        use_spatial_context: bool = False,
        merge_strategy: str = "fixed",
        merge_factor: float = 0.5,
        spatial_transformer_attn_type: str = "softmax",
        video_kernel_size: int | Sequence[int] = 3,
        use_linear_in_transformer: bool = False,
        adm_in_channels: int | None = None,
        disable_temporal_crossattention: bool = False,
        max_ddpm_temb_period: int = 10000,
    ):
        super().__init__()
        _require(conv_resample, "only conv_resample=True is supported")
        _require(dims == 2, f"only dims=2 is supported, got {dims}")
        _require(num_heads_upsample == -1, "num_heads_upsample is not used by this architecture; leave it -1")
        _require(not use_scale_shift_norm, "use_scale_shift_norm=True is not supported")
        _require(not resblock_updown, "resblock_updown=True is not supported")
        _require(not time_downup, "time_downup=True is not supported")
        _require(use_linear_in_transformer, "only use_linear_in_transformer=True is supported")
        _require(num_classes in (None, "sequential"), f"num_classes must be None or 'sequential', got {num_classes!r}")
        _require(num_classes is None or adm_in_channels is not None, "num_classes='sequential' needs adm_in_channels")
        _require(context_dim is not None, "context_dim is required")
        _require((num_heads == -1) != (num_head_channels == -1), "set exactly one of num_heads, num_head_channels")
        if isinstance(transformer_depth, int):
            transformer_depth = [transformer_depth] * len(channel_mult)
        depths = list(transformer_depth)
        _require(len(depths) == len(channel_mult), "transformer_depth needs one entry per channel_mult level")
        depth_middle = depths[-1] if transformer_depth_middle is None else transformer_depth_middle

        self.model_channels = model_channels
        self.num_classes = num_classes
        emb_dim = 4 * model_channels
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if num_classes == "sequential":
            self.label_emb = nn.Sequential(
                nn.Sequential(nn.Linear(adm_in_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
            )

        def res_block(ch_in: int, ch_out: int) -> VideoResBlock:
            return VideoResBlock(
                ch_in, emb_dim, dropout, ch_out, video_kernel_size, merge_strategy, merge_factor, use_checkpoint
            )

        def transformer(ch: int, depth: int) -> SpatialVideoTransformer:
            if num_heads == -1:
                heads, head_dim = ch // num_head_channels, num_head_channels
            else:
                heads, head_dim = num_heads, ch // num_heads
            return SpatialVideoTransformer(
                ch,
                heads,
                head_dim,
                depth=depth,
                dropout=dropout,
                context_dim=context_dim,
                use_spatial_context=use_spatial_context,
                time_context_dim=time_context_dim,
                merge_strategy=merge_strategy,
                merge_factor=merge_factor,
                max_time_embed_period=max_ddpm_temb_period,
                attn_type=spatial_transformer_attn_type,
                use_checkpoint=use_checkpoint,
                disable_temporal_crossattention=disable_temporal_crossattention,
            )

        stem = nn.Conv2d(in_channels, model_channels, 3, padding=1)
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(stem)])
        skip_channels = [model_channels]
        ch, ds = model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [res_block(ch, mult * model_channels)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers.append(transformer(ch, depths[level]))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                skip_channels.append(ch)
                ds *= 2

        self.middle_block = TimestepEmbedSequential(res_block(ch, ch), transformer(ch, depth_middle), res_block(ch, ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [res_block(ch + skip_channels.pop(), mult * model_channels)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers.append(transformer(ch, depths[level]))
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(
            normalization(ch), nn.SiLU(), zero_module(nn.Conv2d(model_channels, out_channels, 3, padding=1))
        )

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        time_context: torch.Tensor | None = None,
        num_video_frames: int | None = None,
        image_only_indicator: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the network output for B clips of T frames.

        Args:
            x: (B*T, C_in, H, W) frames, clip-major.
            timesteps: (B*T,) noise conditioning per frame.
            context: (B*T, M, context_dim) or one row per clip (B, M, context_dim).
            y: (B*T, adm_in_channels) or (B, adm_in_channels); required iff ``num_classes`` is set.
            time_context: (B, M', time_context_dim) temporal context, read only without
                ``use_spatial_context``.
            num_video_frames: T (required).
            image_only_indicator: (B, T); defaults to zeros (every frame is video).

        Returns:
            (B*T, out_channels, H, W).
        """
        if num_video_frames is None:
            raise ValueError("VideoUNet.forward needs num_video_frames")
        rows = x.shape[0]
        if rows % num_video_frames:
            raise ValueError(f"x has {rows} rows, not a multiple of num_video_frames={num_video_frames}")
        if (y is None) != (self.num_classes is None):
            raise ValueError("y must be given exactly when the model has num_classes")
        if image_only_indicator is None:
            image_only_indicator = x.new_zeros(rows // num_video_frames, num_video_frames)

        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(x.dtype))
        if y is not None:
            emb = emb + self.label_emb(_per_frame(y, rows, num_video_frames, "y"))
        inputs = BlockInputs(
            emb=emb,
            context=_per_frame(context, rows, num_video_frames, "context"),
            num_video_frames=num_video_frames,
            image_only_indicator=image_only_indicator,
            time_context=time_context,
        )

        h = x
        skips = []
        for block in self.input_blocks:
            h = block(h, inputs)
            skips.append(h)
        h = self.middle_block(h, inputs)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), inputs)
        return self.out(h.to(x.dtype))
