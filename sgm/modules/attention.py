"""Transformer pieces of the UNet: multi-head attention, gated feed-forward, spatial transformer.

Token tensors are laid out as (N, L, C): N independent sequences of L tokens with C channels.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from sgm.modules.diffusionmodules.util import GroupNorm32, LayerNorm, maybe_checkpoint, zero_module

ATTENTION_TYPES = ("softmax", "softmax-xformers")

_xformers_fallback_warned = False


def _xformers_ops():
    """The ``xformers.ops`` module, or None when xformers cannot be imported."""
    try:
        import xformers.ops
    except ImportError:
        return None
    return xformers.ops


def resolve_attention_backend(attn_type: str) -> bool:
    """Whether a config attention type runs on xformers (True) or on PyTorch SDPA (False).

    ``softmax-xformers`` without xformers falls back to SDPA (same math) and warns once per process.
    """
    global _xformers_fallback_warned
    if attn_type not in ATTENTION_TYPES:
        raise ValueError(f"attention type must be one of {ATTENTION_TYPES}, got {attn_type!r}")
    if attn_type == "softmax":
        return False
    if _xformers_ops() is None:
        if not _xformers_fallback_warned:
            _xformers_fallback_warned = True
            warnings.warn("xformers is not installed: 'softmax-xformers' attention runs on torch SDPA instead")
        return False
    return True


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, use_xformers: bool = False) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v per head.

    Args:
        q: (N, Lq, H, D); k, v: (N, Lk, H, D).
        use_xformers: use ``xformers.ops.memory_efficient_attention`` for CUDA tensors
            (other devices always use SDPA).

    Returns:
        (N, Lq, H, D).
    """
    if use_xformers and q.is_cuda:
        return _xformers_ops().memory_efficient_attention(q.contiguous(), k.contiguous(), v.contiguous())
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


class CrossAttention(nn.Module):
    """Multi-head attention of queries ``x`` over ``context`` (self-attention when context is None).

    Args:
        query_dim: channels of ``x``.
        context_dim: channels of ``context``; None means self-attention only (``query_dim``).
        heads, dim_head: head count and width; the inner width is ``heads * dim_head``.
        dropout: dropout after the output projection.
        attn_type: ``"softmax"`` or ``"softmax-xformers"`` (identical weights and math).
    """

    def __init__(
        self,
        query_dim: int,
        context_dim: int | None = None,
        heads: int = 8,
        dim_head: int = 64,
        dropout: float = 0.0,
        attn_type: str = "softmax",
    ):
        super().__init__()
        inner = heads * dim_head
        context_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(dropout))
        self.use_xformers = resolve_attention_backend(attn_type)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """x: (N, Lq, query_dim); context: (N, Lk, context_dim) or None -> (N, Lq, query_dim).

        With a single context token (Hi3D's CLIP embedding) the softmax weight is exactly 1 for
        every query, so at inference the output is ``to_out(to_v(context))`` for all of them and
        q, k and the attention product are skipped (same function). With gradients on, the full
        graph is kept so that every parameter takes part (distributed training requires it).
        """
        if context is not None and context.shape[1] == 1 and not torch.is_grad_enabled():
            return self.to_out(self.to_v(context)).expand(-1, x.shape[1], -1)
        context = x if context is None else context
        q, k, v = (
            rearrange(t, "n l (h d) -> n l h d", h=self.heads)
            for t in (self.to_q(x), self.to_k(context), self.to_v(context))
        )
        out = attention(q, k, v, self.use_xformers)
        return self.to_out(rearrange(out, "n l h d -> n l (h d)"))


class GEGLU(nn.Module):
    """Gated GELU: one projection to twice the width, split into (value, gate), value * GELU(gate)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, 2 * dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., dim_in) -> (..., dim_out)."""
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU to ``mult * dim`` channels, dropout, Linear to ``dim_out`` (keys ``net.0.proj``, ``net.2``)."""

    def __init__(self, dim: int, dim_out: int | None = None, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        inner = dim * mult
        self.net = nn.Sequential(GEGLU(dim, inner), nn.Dropout(dropout), nn.Linear(inner, dim_out or dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., dim) -> (..., dim_out)."""
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-norm block: self-attention, cross-attention on ``context``, feed-forward; each residual.

    Args:
        dim: token channels (= ``n_heads * d_head``).
        context_dim: channels of the cross-attention context (None: attends to the tokens).
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
    ):
        super().__init__()
        self.attn1 = CrossAttention(dim, None, n_heads, d_head, dropout, attn_type)
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = CrossAttention(dim, context_dim, n_heads, d_head, dropout, attn_type)
        self.norm1 = LayerNorm(dim)
        self.norm2 = LayerNorm(dim)
        self.norm3 = LayerNorm(dim)
        self.use_checkpoint = use_checkpoint

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """x: (N, L, dim); context: (N, M, context_dim) -> (N, L, dim)."""
        return maybe_checkpoint(self._forward, x, context, enabled=self.use_checkpoint)

    def _forward(self, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Transformer over the pixels of a feature map, with linear in/out projections and a residual.

    GroupNorm(32, eps 1e-6) -> tokens (N, H*W, C) -> ``proj_in`` -> ``depth`` blocks
    -> ``proj_out`` (zero-initialised) -> back to (N, C, H, W) -> plus the input.
    """

    def __init__(
        self,
        in_channels: int,
        n_heads: int,
        d_head: int,
        depth: int = 1,
        dropout: float = 0.0,
        context_dim: int | None = None,
        attn_type: str = "softmax",
        use_checkpoint: bool = False,
    ):
        super().__init__()
        inner = n_heads * d_head
        self.in_channels = in_channels
        self.norm = GroupNorm32(32, in_channels, eps=1e-6)
        self.proj_in = nn.Linear(in_channels, inner)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, n_heads, d_head, dropout, context_dim, attn_type, use_checkpoint)
            for _ in range(depth)
        )
        self.proj_out = zero_module(nn.Linear(inner, in_channels))

    def to_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) feature map -> (N, H*W, inner) normalised, projected tokens."""
        return self.proj_in(rearrange(self.norm(x), "n c h w -> n (h w) c"))

    def from_tokens(self, tokens: torch.Tensor, x_in: torch.Tensor) -> torch.Tensor:
        """(N, H*W, inner) tokens -> (N, C, H, W) output, with the residual ``x_in`` added."""
        out = rearrange(self.proj_out(tokens), "n (h w) c -> n c h w", h=x_in.shape[2])
        return out + x_in

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """x: (N, C, H, W); context: (N, M, context_dim) -> (N, C, H, W)."""
        tokens = self.to_tokens(x)
        for block in self.transformer_blocks:
            tokens = block(tokens, context)
        return self.from_tokens(tokens, x)

    def forward_conditioned(self, x: torch.Tensor, inputs) -> torch.Tensor:
        """Entry point for :class:`~sgm.modules.diffusionmodules.openaimodel.TimestepEmbedSequential`."""
        return self(x, inputs.context)
