"""Spatio-temporal transformer: per-frame spatial attention blended with attention across frames.

Frames of a clip are stored clip-major: row ``b * T + t`` is frame ``t`` of clip ``b``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from einops import rearrange, repeat

from sgm.modules.attention import CrossAttention, FeedForward, SpatialTransformer
from sgm.modules.diffusionmodules.util import AlphaBlender, LayerNorm, maybe_checkpoint, timestep_embedding


class VideoTransformerBlock(nn.Module):
    """Transformer block whose sequences are the T frames at one spatial position.

    Tokens (B*T, S, C) are regrouped to (B*S, T, C); then, each with a residual and a pre-LayerNorm:
    feed-forward ``ff_in``, self-attention over frames, cross-attention on the temporal context
    (left out with ``disable_temporal_crossattention``), feed-forward ``ff``.
    """

    def __init__(
        self,
        dim: int,
        n_heads: int,
        d_head: int,
        dropout: float = 0.0,
        context_dim: int | None = None,
        attn_type: str = "softmax",
        use_checkpoint: bool = False,
        disable_temporal_crossattention: bool = False,
    ):
        super().__init__()
        self.norm_in = LayerNorm(dim)
        self.ff_in = FeedForward(dim, dropout=dropout)
        self.attn1 = CrossAttention(dim, None, n_heads, d_head, dropout, attn_type)
        self.ff = FeedForward(dim, dropout=dropout)
        if disable_temporal_crossattention:
            self.attn2 = None
        else:
            self.norm2 = LayerNorm(dim)
            self.attn2 = CrossAttention(dim, context_dim, n_heads, d_head, dropout, attn_type)
        self.norm1 = LayerNorm(dim)
        self.norm3 = LayerNorm(dim)
        self.use_checkpoint = use_checkpoint

    def forward(self, x: torch.Tensor, num_frames: int, context: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B*T, S, C); context: (B*S, M, context_dim) or None (attends to the frames) -> (B*T, S, C)."""
        return maybe_checkpoint(self._forward, x, num_frames, context, enabled=self.use_checkpoint)

    def _forward(self, x: torch.Tensor, num_frames: int, context: torch.Tensor | None) -> torch.Tensor:
        spatial = x.shape[1]
        x = rearrange(x, "(b t) s c -> (b s) t c", t=num_frames)
        x = x + self.ff_in(self.norm_in(x))
        x = x + self.attn1(self.norm1(x))
        if self.attn2 is not None:
            x = x + self.attn2(self.norm2(x), context)
        x = x + self.ff(self.norm3(x))
        return rearrange(x, "(b s) t c -> (b t) s c", s=spatial)


class SpatialVideoTransformer(SpatialTransformer):
    """:class:`SpatialTransformer` whose every spatial block is followed by a temporal block and a blend.

    Per depth: ``x = spatial_block(x, context)``; the temporal branch sees ``x`` plus a learned
    embedding of the frame index (``time_pos_embed``); the two are merged by ``time_mixer``
    (alpha * spatial + (1 - alpha) * temporal, alpha per clip and frame).

    Args:
        in_channels: C, also the token width (``n_heads * d_head`` must equal it).
        context_dim: channels of the spatial context.
        use_spatial_context: the temporal context is the spatial context of the first frame of each
            clip; otherwise it is the ``time_context`` passed to forward (width ``time_context_dim``).
        merge_strategy, merge_factor: :class:`AlphaBlender` settings.
        max_time_embed_period: max period of the sinusoidal frame-index embedding.
    """

    def __init__(
        self,
        in_channels: int,
        n_heads: int,
        d_head: int,
        depth: int = 1,
        dropout: float = 0.0,
        context_dim: int | None = None,
        use_spatial_context: bool = False,
        time_context_dim: int | None = None,
        merge_strategy: str = "fixed",
        merge_factor: float = 0.5,
        max_time_embed_period: int = 10000,
        attn_type: str = "softmax",
        use_checkpoint: bool = False,
        disable_temporal_crossattention: bool = False,
    ):
        if n_heads * d_head != in_channels:
            raise ValueError(f"n_heads * d_head ({n_heads} * {d_head}) must equal in_channels ({in_channels})")
        super().__init__(in_channels, n_heads, d_head, depth, dropout, context_dim, attn_type, use_checkpoint)
        self.use_spatial_context = use_spatial_context
        self.max_time_embed_period = max_time_embed_period
        self.time_stack = nn.ModuleList(
            VideoTransformerBlock(
                in_channels,
                n_heads,
                d_head,
                dropout,
                context_dim if use_spatial_context else time_context_dim,
                attn_type,
                use_checkpoint,
                disable_temporal_crossattention,
            )
            for _ in range(depth)
        )
        self.time_pos_embed = nn.Sequential(
            nn.Linear(in_channels, 4 * in_channels), nn.SiLU(), nn.Linear(4 * in_channels, in_channels)
        )
        self.time_mixer = AlphaBlender(merge_factor, merge_strategy, layout="frames_first")

    def _temporal_context(
        self, context: torch.Tensor | None, time_context: torch.Tensor | None, num_frames: int, positions: int
    ) -> torch.Tensor | None:
        """Context of the temporal blocks, one row per (clip, position): (B*S, M, D), or None."""
        if self.use_spatial_context:
            if context is None:
                raise ValueError("use_spatial_context needs a context")
            time_context = context[::num_frames]  # (B*T, M, D) -> first frame of each clip (B, M, D)
        elif time_context is None:
            return None
        elif time_context.ndim == 2:
            time_context = time_context[:, None]
        return repeat(time_context, "b m d -> (b s) m d", s=positions)

    def _frame_embedding(self, batch_frames: int, num_frames: int, like: torch.Tensor) -> torch.Tensor:
        """Learned embedding of each row's frame index 0..T-1: (B*T, 1, C)."""
        frames = torch.arange(num_frames, device=like.device).repeat(batch_frames // num_frames)
        temb = timestep_embedding(frames, self.in_channels, max_period=self.max_time_embed_period)
        return self.time_pos_embed(temb.to(like.dtype))[:, None]

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        num_video_frames: int = 1,
        image_only_indicator: torch.Tensor | None = None,
        time_context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Spatio-temporal transformer with residual.

        Args:
            x: (B*T, C, H, W).
            context: (B*T, M, context_dim), one row per frame.
            num_video_frames: T.
            image_only_indicator: (B, T), used by ``learned_with_images`` blending.
            time_context: (B, M', time_context_dim) or (B, time_context_dim); read only without
                ``use_spatial_context``.

        Returns:
            (B*T, C, H, W).
        """
        positions = x.shape[2] * x.shape[3]
        temporal_context = self._temporal_context(context, time_context, num_video_frames, positions)
        tokens = self.to_tokens(x)
        frame_emb = self._frame_embedding(x.shape[0], num_video_frames, tokens)
        for spatial_block, temporal_block in zip(self.transformer_blocks, self.time_stack):
            tokens = spatial_block(tokens, context)
            mixed = temporal_block(tokens + frame_emb, num_video_frames, temporal_context)
            tokens = self.time_mixer(tokens, mixed, image_only_indicator)
        return self.from_tokens(tokens, x)

    def forward_conditioned(self, x: torch.Tensor, inputs) -> torch.Tensor:
        """Entry point for :class:`~sgm.modules.diffusionmodules.openaimodel.TimestepEmbedSequential`."""
        return self(x, inputs.context, inputs.num_video_frames, inputs.image_only_indicator, inputs.time_context)
