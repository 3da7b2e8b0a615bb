"""Small building blocks of the networks: sinusoidal embeddings, norms, blending.

Everything here is a pure function or a tiny module with no knowledge of configs or files.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of scalar values, cosines first.

    ``half = dim // 2``; frequency ``k`` is ``exp(-ln(max_period) * k / half)``; the output is
    ``[cos(t f), sin(t f)]`` with one zero column appended when ``dim`` is odd.

    Args:
        timesteps: (N,) values of any numeric dtype (cast to float32).
        dim: output width.
        max_period: controls the lowest frequency.

    Returns:
        (N, dim) float32 embedding.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    )
    args = timesteps.float()[:, None] * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


HALF_DTYPES = (torch.float16, torch.bfloat16)


def _affine_as(param: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    return None if param is None else param.to(x.dtype)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with float32 statistics; the output has the input dtype.

    float32 inputs: computed in float32 with float32 affine parameters (the official GroupNorm32).
    float16/bfloat16 inputs: the native kernel reads and writes the input dtype and accumulates in
    float32 inside, with autocast's float32 round trip turned off. The value is the official one
    (statistics and affine in float32, one rounding of the output) up to the rounding of float32
    affine parameters to the input dtype; it saves three full-size float32 copies per call, which
    dominate half-precision UNet time and training activation memory.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype in HALF_DTYPES:
            with torch.autocast(x.device.type, enabled=False):
                return F.group_norm(x, self.num_groups, _affine_as(self.weight, x), _affine_as(self.bias, x), self.eps)
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


class LayerNorm(nn.LayerNorm):
    """LayerNorm over the last dim whose output keeps a half-precision input's dtype.

    Under autocast ``nn.LayerNorm`` returns float32 for float16 inputs, and the next linear layer
    casts back; here half inputs go to the native kernel (float32 accumulation inside) and the
    output stays half: one rounding, as the official path, without the float32 copy.
    float32 inputs behave exactly as ``nn.LayerNorm``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype in HALF_DTYPES:
            with torch.autocast(x.device.type, enabled=False):
                return F.layer_norm(x, self.normalized_shape, _affine_as(self.weight, x), _affine_as(self.bias, x),
                                    self.eps)
        return super().forward(x)


def group_norm_by_reductions(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None,
                             bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """``F.group_norm`` (no gradient through the statistics) computed with whole-device reductions.

    Per (sample, group) row: the float32 (float64 for float64 input) mean and mean of squares
    (``mean`` and ``vector_norm`` with that accumulator read the input as it is, no float32
    copy), variance = mean of squares - mean^2; then ``batch_norm`` in inference form with those
    statistics repeated per channel applies ``(x - mean) / sqrt(var + eps) * weight + bias`` in float32 with one rounding
    to the input dtype, as the native kernel does.

    Args:
        x: (N, C, ...) with C divisible by ``num_groups``.
        weight, bias: (C,) affine parameters or None.

    Returns:
        A tensor like ``x``.
    """
    samples, channels = x.shape[:2]
    rows = x.reshape(samples * num_groups, -1)
    accumulate = torch.promote_types(x.dtype, torch.float32)
    mean = rows.mean(dim=1, dtype=accumulate)
    mean_square = torch.linalg.vector_norm(rows, dim=1, dtype=accumulate).square() / rows.shape[1]
    variance = (mean_square - mean.square()).clamp_min(0)
    per_group = channels // num_groups
    affine = [None if param is None else param.to(accumulate).repeat(samples) for param in (weight, bias)]
    out = F.batch_norm(x.reshape(1, samples * channels, -1), mean.repeat_interleave(per_group),
                       variance.repeat_interleave(per_group), *affine, training=False, momentum=0.0, eps=eps)
    return out.view_as(x)


class FewRowsGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` that normalises half-precision CUDA inputs of few, long rows with
    :func:`group_norm_by_reductions` (same value up to float32 rounding of the statistics).

    The native kernel reduces each (sample, group) row with one thread block: a 1024 px VAE
    activation of one frame has 32 rows of 4 M values and keeps most of a large GPU idle (3.4x
    slower than the reductions on an H200). Other inputs, and anything that needs gradients, take
    the native kernel.
    """

    max_rows = 256
    min_row_length = 2**20

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        few_long_rows = (x.shape[0] * self.num_groups <= self.max_rows
                         and x[0].numel() // self.num_groups >= self.min_row_length)
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters()))
        if x.is_cuda and x.dtype in HALF_DTYPES and few_long_rows and not needs_grad:
            return group_norm_by_reductions(x, self.num_groups, self.weight, self.bias, self.eps)
        return super().forward(x)


def normalization(channels: int) -> nn.GroupNorm:
    """The UNet ResBlock norm: 32 groups, eps 1e-5, float32 compute."""
    return GroupNorm32(32, channels)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero every parameter of ``module`` in place and return it."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def maybe_checkpoint(fn: Callable, *args, enabled: bool) -> torch.Tensor:
    """Run ``fn(*args)``, through activation checkpointing when ``enabled`` and grads are on."""
    if enabled and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


# Dynamo compiles one graph per input shape of a block class; a full-size UNet's ResBlocks meet
# about 20 (channel/resolution pairs, spatial and temporal), above dynamo's default limit of 8.
BLOCK_RECOMPILE_LIMIT = 64


def compile_block_bodies(module: nn.Module, **compile_options) -> int:
    """``torch.compile`` the body (``_forward``) of every checkpointable block inside ``module``.

    Checkpointable blocks are those with ``use_checkpoint`` and a ``_forward`` (ResBlocks,
    spatial and temporal transformer blocks). Activation checkpointing stays eager around the
    compiled bodies, so training keeps the eager model's activation memory while the work inside
    each block (norms, activations, casts, layout changes) is fused. Blocks of one class and
    input shape share a compiled graph. ``compile_options`` go to ``torch.compile``. Returns
    the number of blocks compiled.
    """
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, BLOCK_RECOMPILE_LIMIT)
    blocks = [m for m in module.modules() if hasattr(m, "use_checkpoint") and hasattr(m, "_forward")]
    for block in blocks:
        block._forward = torch.compile(block._forward, **compile_options)
    return len(blocks)


class AlphaBlender(nn.Module):
    """Blend a spatial and a temporal branch: ``alpha * spatial + (1 - alpha) * temporal``.

    Merge strategies:
        ``fixed``: alpha = ``merge_factor`` (a buffer).
        ``learned``: alpha = sigmoid(``mix_factor``), a learned scalar.
        ``learned_with_images``: as ``learned``, but alpha = 1 (spatial only) wherever
        ``image_only_indicator`` is nonzero.

    ``layout`` says how the per-(clip, frame) alpha of shape (B, T) is laid out
    against the features: ``"frames_first"`` gives (B*T, 1, 1) for token features
    (B*T, S, C); ``"channels_first"`` gives (B, 1, T, 1, 1) for (B, C, T, H, W).
    """

    strategies = ("fixed", "learned", "learned_with_images")

    def __init__(self, alpha: float, merge_strategy: str = "learned_with_images", layout: str = "frames_first"):
        super().__init__()
        if merge_strategy not in self.strategies:
            raise ValueError(f"merge_strategy must be one of {self.strategies}, got {merge_strategy!r}")
        if layout not in ("frames_first", "channels_first"):
            raise ValueError(f"layout must be 'frames_first' or 'channels_first', got {layout!r}")
        self.merge_strategy = merge_strategy
        self.layout = layout
        if merge_strategy == "fixed":
            self.register_buffer("mix_factor", torch.tensor([alpha]))
        else:
            self.mix_factor = nn.Parameter(torch.tensor([alpha]))

    def get_alpha(self, image_only_indicator: torch.Tensor | None) -> torch.Tensor:
        """Alpha of shape (B, T) (or (1,) without an indicator for the non-image strategies)."""
        if self.merge_strategy == "fixed":
            alpha = self.mix_factor
        elif self.merge_strategy == "learned":
            alpha = torch.sigmoid(self.mix_factor)
        else:
            if image_only_indicator is None:
                raise ValueError("merge_strategy 'learned_with_images' needs image_only_indicator (B, T)")
            alpha = torch.where(
                image_only_indicator.bool(),
                torch.ones(1, 1, device=image_only_indicator.device),
                torch.sigmoid(self.mix_factor)[None].to(image_only_indicator.device),
            )
        return alpha

    def _layout(self, alpha: torch.Tensor) -> torch.Tensor:
        if alpha.ndim < 2:  # a scalar alpha broadcasts against anything
            return alpha
        if self.layout == "frames_first":
            return alpha.reshape(-1, 1, 1)
        return alpha[:, None, :, None, None]

    def forward(
        self, x_spatial: torch.Tensor, x_temporal: torch.Tensor, image_only_indicator: torch.Tensor | None = None
    ) -> torch.Tensor:
        alpha = self._layout(self.get_alpha(image_only_indicator)).to(x_spatial.dtype)
        return torch.lerp(x_temporal, x_spatial, alpha)  # one kernel for temporal + alpha * (spatial - temporal)
