"""Stage-2 degradation: kernels, each operation's measurable effect, the seeded full pipeline."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sgm.data.degradation_kernels import (
    ClipKernels,
    gaussian_kernel,
    generalized_gaussian_kernel,
    plateau_kernel,
    random_final_sinc,
    random_mixed_kernel,
    sinc_kernel,
)
from sgm.data.degradations import (
    DegradationConfig,
    DegradationPipeline,
    add_gaussian_noise,
    add_poisson_noise,
    degrade_clip,
    filter2d,
    jpeg_compress,
    quantisation_tables,
    resize,
    sample_clip_kernels,
)

OFFICIAL_OPTIONS = {  # the keys of train_realesrnet_x4plus.yml that matter, plus some it carries unused
    "scale": 4, "resize_prob": [0.2, 0.7, 0.1], "resize_range": [0.15, 1.5], "gaussian_noise_prob": 0.5,
    "noise_range": [1, 30], "poisson_scale_range": [0.05, 3], "gray_noise_prob": 0.4, "jpeg_range": [30, 95],
    "second_blur_prob": 0.8, "resize_prob2": [0.3, 0.4, 0.3], "resize_range2": [0.3, 1.2],
    "gaussian_noise_prob2": 0.5, "noise_range2": [1, 25], "poisson_scale_range2": [0.05, 2.5],
    "gray_noise_prob2": 0.4, "jpeg_range2": [30, 95], "blur_kernel_size": 21,
    "kernel_list": ["iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso"],
    "kernel_prob": [0.45, 0.25, 0.12, 0.03, 0.12, 0.03], "sinc_prob": 0.1, "blur_sigma": [0.2, 3],
    "betag_range": [0.5, 4], "betap_range": [1, 2], "final_sinc_prob": 0.8, "sinc_prob2": 0.1,
    "blur_sigma2": [0.2, 1.5], "betag_range2": [0.5, 4], "betap_range2": [1, 2],
    "kernel_list2": ["iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso"],
    "kernel_prob2": [0.45, 0.25, 0.12, 0.03, 0.12, 0.03],
    "gt_usm": True, "gt_size": 256, "queue_size": 180, "name": "train_RealESRNetx4plus", "num_gpu": 4,
}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _laplacian_energy(x: torch.Tensor) -> float:
    lap = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
    return float(F.conv2d(x.reshape(-1, 1, *x.shape[-2:]), lap[None, None]).square().mean())


def _smooth_image(n: int = 2, size: int = 64) -> torch.Tensor:
    """Smooth colourful images (N, 3, size, size) in [0, 1] (few high frequencies of their own)."""
    coords = torch.linspace(0, 1, size)
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    channels = [0.5 + 0.4 * torch.sin(2 * math.pi * (a * x + b * y) + c) for a, b, c in
                [(1.0, 0.3, 0.0), (0.2, 1.3, 1.0), (0.7, -0.8, 2.0)]]
    return torch.stack(channels).expand(n, -1, -1, -1).clone()


# ----------------------------------------------------------------------------- kernels


@pytest.mark.parametrize("make", [
    lambda: gaussian_kernel(21, 2.0, 2.0),
    lambda: gaussian_kernel(15, 3.0, 0.5, 0.7),
    lambda: generalized_gaussian_kernel(11, 1.5, 2.5, -1.0, 0.6),
    lambda: plateau_kernel(9, 2.0, 1.0, 0.3, 1.5),
    lambda: sinc_kernel(13, math.pi / 4),
])
def test_kernels_are_normalised_and_point_symmetric(make):
    kernel = make()
    assert kernel.dtype == torch.float32 and kernel.shape[0] == kernel.shape[1] and kernel.shape[0] % 2 == 1
    assert torch.isclose(kernel.sum(), torch.tensor(1.0), atol=1e-5)
    assert torch.allclose(kernel, kernel.flip(0, 1), atol=1e-7)


def test_anisotropic_gaussian_rotates_with_angle():
    wide_x = gaussian_kernel(21, 3.0, 0.7, 0.0)
    assert wide_x[10, 13] > wide_x[13, 10]
    wide_y = gaussian_kernel(21, 3.0, 0.7, math.pi / 2)
    assert torch.allclose(wide_y, wide_x.T, atol=1e-6)


def test_sinc_kernel_has_negative_lobes_and_identity_final_sinc():
    assert sinc_kernel(21, math.pi / 3).min() < 0
    identity = random_final_sinc(_gen(0), (7, 9), 21, prob=0.0)
    assert identity[10, 10] == 1 and identity.sum() == 1


def test_sample_clip_kernels_shapes_sums_and_seeding():
    config = DegradationConfig()
    kernels = sample_clip_kernels(16, config, _gen(3))
    for stack in kernels:
        assert stack.shape == (16, 21, 21) and stack.dtype == torch.float32
        assert torch.allclose(stack.sum(dim=(1, 2)), torch.ones(16), atol=1e-5)
    again = sample_clip_kernels(16, config, _gen(3))
    assert all(torch.equal(a, b) for a, b in zip(kernels, again))
    assert not torch.equal(kernels.kernel1, sample_clip_kernels(16, config, _gen(4)).kernel1)
    one = random_mixed_kernel(_gen(0), 9, ["plateau_aniso"], [1.0], (0.2, 3), (0.5, 4), (1, 2))
    assert one.shape == (9, 9)


# ----------------------------------------------------------------------------- operations


def test_blur_lowers_high_frequency_energy():
    x = torch.rand(2, 3, 48, 48, generator=_gen(0))
    kernels = torch.stack([gaussian_kernel(21, 1.5, 1.5), sinc_kernel(21, math.pi / 3)])
    blurred = filter2d(x, kernels)
    assert blurred.shape == x.shape
    assert _laplacian_energy(blurred) < 0.2 * _laplacian_energy(x)
    assert torch.allclose(blurred.mean(), x.mean(), atol=0.01)


def test_resize_sizes_and_modes():
    x = torch.rand(2, 3, 40, 30)
    for mode in ("area", "bilinear", "bicubic"):
        assert resize(x, (10, 12), mode).shape == (2, 3, 10, 12)
    with pytest.raises(ValueError):
        resize(x, (10, 10), "nearest")


def test_gaussian_noise_raises_variance_and_gray_is_shared():
    flat = torch.full((2, 3, 64, 64), 0.5)
    noisy = add_gaussian_noise(flat, torch.tensor([10 / 255, 20 / 255]), torch.tensor([False, True]), _gen(0))
    std = noisy.std(dim=(1, 2, 3))
    assert abs(float(std[0]) - 10 / 255) < 0.004 and abs(float(std[1]) - 20 / 255) < 0.006
    assert torch.equal(noisy[1, 0], noisy[1, 2]) and not torch.equal(noisy[0, 0], noisy[0, 2])


def test_poisson_noise_raises_variance_and_gray_is_shared():
    flat = torch.full((2, 3, 64, 64), 0.5)
    noisy = add_poisson_noise(flat, torch.tensor([1.0, 2.0]), torch.tensor([False, True]), _gen(0))
    expected_std = torch.tensor([1.0, 2.0]) * math.sqrt(0.5 / 256)
    assert torch.allclose(noisy.std(dim=(1, 2, 3)), expected_std, rtol=0.1)
    assert torch.equal(noisy[1, 0], noisy[1, 1]) and not torch.equal(noisy[0, 0], noisy[0, 1])


def test_quantisation_tables_follow_quality():
    luma, chroma = quantisation_tables(torch.tensor([50.0, 10.0, 95.0]))
    assert luma[0, 0, 0] == 16 and chroma[0, 0, 0] == 17 and luma[0, 7, 7] == 99
    assert torch.all(luma[1] >= luma[0]) and torch.all(luma[2] <= luma[0]) and luma.min() >= 1


def test_jpeg_low_quality_produces_8x8_blocking():
    ramp = torch.linspace(0.0, 1.0, 64)
    x = (0.3 + 0.25 * ramp[None, :] + 0.15 * ramp[:, None]).expand(2, 3, -1, -1)  # gentle gray slope
    out = jpeg_compress(x, torch.tensor([10.0, 15.0]))
    steps = (out[..., 1:] - out[..., :-1]).abs().mean(dim=(0, 1, 2))  # (W-1,) jump between columns c and c+1
    at_edges = steps[7::8].mean()
    inside = torch.cat([steps[k::8] for k in range(7)]).mean()
    assert at_edges > 5 * inside and at_edges > 0.01
    assert float((jpeg_compress(x, torch.tensor([95.0, 95.0])) - x).abs().mean()) < 0.01


@pytest.mark.parametrize("quality, subsampling", [(40, True), (80, False)])
def test_jpeg_matches_pillow(quality, subsampling):
    x = (_smooth_image(1, 48) * 255).round() / 255
    x = x + 0.1 * (torch.rand(x.shape, generator=_gen(1)) - 0.5)  # some texture
    x = (x.clamp(0, 1) * 255).round() / 255
    buffer = io.BytesIO()
    pixels = (x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality, subsampling=2 if subsampling else 0)
    reference = torch.from_numpy(np.array(Image.open(buffer))).permute(2, 0, 1).float() / 255
    ours = jpeg_compress(x, torch.tensor([float(quality)]), chroma_subsampling=subsampling)[0]
    assert 10 * math.log10(1 / float((ours - reference).square().mean())) > 40


# ----------------------------------------------------------------------------- pipeline


def _clip(t: int = 4, size: int = 128):
    frames = F.interpolate(torch.rand(t, 3, 16, 16, generator=_gen(7)), size=(size, size), mode="bilinear")
    masks = torch.ones(t, size, size)
    masks[:, :20] = 0.0
    masks[:, 20:30] = 0.5
    return frames, masks


def test_config_from_official_options():
    assert DegradationConfig.from_official(OFFICIAL_OPTIONS) == DegradationConfig()
    assert DegradationConfig.from_official({**OFFICIAL_OPTIONS, "jpeg_range": [50, 60]}).jpeg_range == (50, 60)


def test_degrade_clip_shape_range_mask_and_clean_frame():
    clip, masks = _clip()
    config = DegradationConfig()
    kernels = sample_clip_kernels(4, config, _gen(0))
    out = degrade_clip(clip, masks, kernels, config, _gen(1))
    assert out.shape == clip.shape and out.dtype == clip.dtype
    assert out.min() >= -1 and out.max() <= 1
    assert torch.equal(out[0], clip[0] * 2 - 1)
    assert torch.all(out[1:, :, :20] == 1.0)  # mask == 0 -> white
    assert not torch.all(out[1:, :, 20:30] == 1.0)  # partial alpha is not whitened
    assert float((out[1:] - (clip[1:] * 2 - 1))[:, :, 30:].abs().mean()) > 0.01  # degraded


def test_degrade_clip_is_seeded_and_leaves_global_rng_alone():
    clip, masks = _clip()
    config = DegradationConfig()
    kernels = sample_clip_kernels(4, config, _gen(0))
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = degrade_clip(clip, masks, kernels, config, _gen(5))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first, degrade_clip(clip, masks, kernels, config, _gen(5)))
    assert not torch.equal(first, degrade_clip(clip, masks, kernels, config, _gen(6)))


def test_pipeline_over_a_batch_and_mask_validation():
    clip, masks = _clip(t=3, size=96)
    config = DegradationConfig()
    kernels = [sample_clip_kernels(3, config, _gen(b)) for b in range(2)]
    batched = ClipKernels(*(torch.stack(k) for k in zip(*kernels)))
    out = DegradationPipeline(config)(torch.stack([clip, clip]), torch.stack([masks, masks]), batched, _gen(0))
    assert out.shape == (2, 3, 3, 96, 96)
    assert torch.equal(out[:, 0], torch.stack([clip[0], clip[0]]) * 2 - 1)
    with pytest.raises(ValueError):
        degrade_clip(clip, masks[:, :50], kernels[0], config, _gen(0))
