"""Half-precision paths of the UNet norms and the chunked first-stage encoding.

The norms keep float16/bfloat16 activations in their dtype (statistics in float32 inside the
kernel); they must equal the official float32 computation rounded once to that dtype.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sgm.config import build_model, load_config
from sgm.modules.diffusionmodules.util import (
    AlphaBlender,
    FewRowsGroupNorm,
    GroupNorm32,
    LayerNorm,
    group_norm_by_reductions,
)
from test_training import TINY_V01

HALF = [torch.float16, torch.bfloat16]


def one_rounding_tolerance(dtype: torch.dtype) -> dict:
    """Two units in the last place of ``dtype`` for values of order 1 (the float32 reference is
    rounded once; the half kernel may differ by one rounding of the affine parameters)."""
    return {"rtol": 2 * torch.finfo(dtype).eps, "atol": 2 * torch.finfo(dtype).eps}


def affine(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        module.weight.copy_(1 + 0.3 * torch.randn(module.weight.shape, generator=gen))
        module.bias.copy_(0.3 * torch.randn(module.bias.shape, generator=gen))
    return module


@pytest.mark.parametrize("dtype", HALF)
def test_group_norm_in_half_precision_is_the_float32_result_rounded_once(dtype):
    norm = affine(GroupNorm32(4, 16), seed=0)
    x = (3 * torch.randn(2, 16, 5, 5, generator=torch.Generator().manual_seed(1)) + 2).to(dtype)
    expected = F.group_norm(x.float(), 4, norm.weight.float(), norm.bias.float(), norm.eps).to(dtype)
    out = norm(x)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), expected.float(), **one_rounding_tolerance(dtype))


@pytest.mark.parametrize("shape", [(2, 16, 5, 5), (1, 64, 3, 4, 5), (3, 32, 7)], ids=["2d", "3d", "1d"])
@pytest.mark.parametrize("offset", [0.0, 40.0], ids=["centred", "offset"])
def test_group_norm_by_reductions_is_group_norm(shape, offset):
    """float64: the same function as F.group_norm, affine or not, also for rows whose mean is 40
    standard deviations away from 0 (the variance is a difference of float32 moments)."""
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) + offset)
    weight, bias = torch.randn(shape[1], generator=gen, dtype=torch.float64), torch.randn(shape[1], generator=gen,
                                                                                        dtype=torch.float64)
    for affine_params in ((weight, bias), (None, None)):
        expected = F.group_norm(x, 4, *affine_params, 1e-6)
        torch.testing.assert_close(group_norm_by_reductions(x, 4, *affine_params, 1e-6), expected, rtol=0, atol=1e-9)
        # float32 statistics on float32 input: float32 rounding of the moments (atol 1e-3 at offset 40)
        out = group_norm_by_reductions(x.float(), 4, *[p if p is None else p.float() for p in affine_params], 1e-6)
        torch.testing.assert_close(out.double(), expected, rtol=0, atol=2e-5 if offset == 0 else 1e-3)


@pytest.mark.parametrize("dtype", HALF)
def test_group_norm_by_reductions_in_half_precision_is_the_float32_result_rounded_once(dtype):
    norm = affine(FewRowsGroupNorm(4, 16, eps=1e-6), seed=0)
    x = (3 * torch.randn(2, 16, 5, 5, generator=torch.Generator().manual_seed(1)) + 2).to(dtype)
    expected = F.group_norm(x.float(), 4, norm.weight.float(), norm.bias.float(), norm.eps).to(dtype)
    with torch.no_grad():
        out = group_norm_by_reductions(x, 4, norm.weight.to(dtype), norm.bias.to(dtype), norm.eps)
        assert out.dtype == dtype
        torch.testing.assert_close(out.float(), expected.float(), **one_rounding_tolerance(dtype))
        # on the CPU the module keeps the native kernel: exactly nn.GroupNorm
        plain = torch.nn.GroupNorm(4, 16, eps=1e-6).to(dtype)
        plain.load_state_dict(norm.to(dtype).state_dict())
        assert torch.equal(norm(x), plain(x))


@pytest.mark.parametrize("dtype", HALF)
def test_layer_norm_in_half_precision_is_the_float32_result_rounded_once(dtype):
    norm = affine(LayerNorm(32), seed=2)
    x = (2 * torch.randn(3, 7, 32, generator=torch.Generator().manual_seed(3)) - 1).to(dtype)
    expected = F.layer_norm(x.float(), (32,), norm.weight, norm.bias, norm.eps).to(dtype)
    out = norm(x)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), expected.float(), **one_rounding_tolerance(dtype))


def test_norms_keep_half_dtype_under_autocast():
    """CUDA autocast computes both norms in float32 and returns float32; ours stay half."""
    x = torch.randn(2, 16, 4, 4).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert GroupNorm32(4, 16)(x).dtype == torch.bfloat16
        assert LayerNorm(4)(x).dtype == torch.bfloat16


def test_float32_norms_are_the_plain_modules():
    x = torch.randn(2, 16, 4, 4, generator=torch.Generator().manual_seed(4))
    group, plain_group = affine(GroupNorm32(4, 16, eps=1e-6), 5), torch.nn.GroupNorm(4, 16, eps=1e-6)
    plain_group.load_state_dict(group.state_dict())
    layer, plain_layer = affine(LayerNorm(4), 6), torch.nn.LayerNorm(4)
    plain_layer.load_state_dict(layer.state_dict())
    torch.testing.assert_close(group(x), plain_group(x), rtol=0, atol=0)
    torch.testing.assert_close(layer(x), plain_layer(x), rtol=0, atol=0)


def test_alpha_blend_is_the_convex_combination():
    blender = AlphaBlender(0.3, "learned_with_images", layout="frames_first")
    gen = torch.Generator().manual_seed(7)
    spatial, temporal = torch.randn(6, 5, 4, generator=gen), torch.randn(6, 5, 4, generator=gen)
    indicator = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    alpha = torch.where(indicator.bool(), 1.0, torch.sigmoid(torch.tensor(0.3))).reshape(6, 1, 1)
    torch.testing.assert_close(blender(spatial, temporal, indicator), alpha * spatial + (1 - alpha) * temporal)


def test_encoding_in_chunks_gives_the_same_latents():
    """Posterior moments per chunk, one draw for all frames: the chunk size changes nothing."""
    torch.manual_seed(0)
    model = build_model(load_config(TINY_V01)).eval()
    frames = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(8)) * 2 - 1
    latents = {}
    for chunk in (1, 4, 6):
        model.encode_chunk_size = chunk
        latents[chunk] = model.encode_first_stage(frames, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(latents[1], latents[6], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(latents[4], latents[6], rtol=1e-5, atol=1e-5)
    assert not torch.equal(latents[6], model.encode_first_stage(frames, generator=torch.Generator().manual_seed(10)))
