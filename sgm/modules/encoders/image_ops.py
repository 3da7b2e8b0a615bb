"""Image preprocessing shared by the pretrained-network embedders.

All functions take and return batches of images ``(N, C, H, W)`` and keep the input's device
and dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# Per-channel RGB statistics the CLIP image towers (OpenAI and OpenCLIP) were trained with,
# for pixels in [0, 1].
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def gaussian_kernel1d(size: int, sigma: float, *, device: torch.device | None = None) -> torch.Tensor:
    """Normalised Gaussian taps ``exp(-x^2 / (2 sigma^2))`` at ``x = -(size // 2) .. size // 2`` (odd ``size``).

    Returns:
        (size,) float32 weights summing to 1.
    """
    if size % 2 == 0:
        raise ValueError(f"Gaussian kernel size must be odd, got {size}")
    x = torch.arange(size, dtype=torch.float32, device=device) - size // 2
    weights = torch.exp(-x.pow(2) / (2.0 * sigma**2))
    return weights / weights.sum()


def _filter_axis(x: torch.Tensor, taps: torch.Tensor, axis: int) -> torch.Tensor:
    """Correlate every channel of ``x`` (N, C, H, W) with odd-length ``taps`` along H (axis -2) or
    W (axis -1), reflect-padding the borders so the size is kept."""
    channels = x.shape[1]
    k = taps.numel()
    if axis == -1:
        kernel = taps.reshape(1, 1, 1, k)
        x = F.pad(x, (k // 2, k // 2, 0, 0), mode="reflect")
    else:
        kernel = taps.reshape(1, 1, k, 1)
        x = F.pad(x, (0, 0, k // 2, k // 2), mode="reflect")
    kernel = kernel.to(x).expand(channels, 1, *kernel.shape[2:])
    return F.conv2d(x, kernel, groups=channels)


def gaussian_blur(x: torch.Tensor, kernel_size: tuple[int, int], sigma: tuple[float, float]) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W), width pass first, reflect padding.

    Args:
        kernel_size: (height, width) taps, odd.
        sigma: (height, width) standard deviations in pixels.
    """
    x = _filter_axis(x, gaussian_kernel1d(kernel_size[1], sigma[1], device=x.device), axis=-1)
    return _filter_axis(x, gaussian_kernel1d(kernel_size[0], sigma[0], device=x.device), axis=-2)


def _antialias_params(in_size: int, out_size: int) -> tuple[int, float]:
    """Kernel size and sigma of the pre-blur along one axis (the kornia 0.6 rule).

    ``sigma = max((in/out - 1) / 2, 0.001)``, ``size = int(max(4 sigma, 3))`` bumped to odd.
    An axis of length 1 cannot be reflect-padded and gets a 1-tap (identity) kernel.
    """
    sigma = max((in_size / out_size - 1.0) / 2.0, 0.001)
    size = int(max(4.0 * sigma, 3))
    size += 1 - size % 2
    return (1 if in_size == 1 else size), sigma


def antialiased_resize(
    x: torch.Tensor, size: tuple[int, int], mode: str = "bicubic", align_corners: bool | None = True
) -> torch.Tensor:
    """Resize (N, C, H, W) to ``size`` = (height, width) with kornia-0.6 antialiasing semantics.

    When either axis shrinks, the image is first blurred by a separable Gaussian whose
    per-axis sigma and kernel size follow :func:`_antialias_params` (an axis that does not
    shrink gets sigma 0.001, i.e. an identity kernel); then ``F.interpolate`` resamples.
    When no axis shrinks there is no blur (it would be the identity).

    This is what ``kornia.geometry.resize(x, size, interpolation=mode, align_corners=...,
    antialias=True)`` computes.
    """
    in_h, in_w = x.shape[-2:]
    out_h, out_w = size
    if in_h > out_h or in_w > out_w:
        (k_h, s_h), (k_w, s_w) = _antialias_params(in_h, out_h), _antialias_params(in_w, out_w)
        x = gaussian_blur(x, (k_h, k_w), (s_h, s_w))
    return F.interpolate(x, size=(out_h, out_w), mode=mode, align_corners=align_corners)


def clip_normalize(pixels: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> per-channel ``(x - mean) / std`` with the CLIP statistics.

    The statistics enter as Python scalars, one channel at a time: building them as a device
    tensor would copy them from the host at every call, which synchronises the GPU stream and
    cannot be captured in a CUDA graph.
    """
    if pixels.ndim != 4 or pixels.shape[1] != len(CLIP_MEAN):
        raise ValueError(f"clip_normalize expects (N, 3, H, W) RGB, got shape {tuple(pixels.shape)}")
    channels = [(pixels[:, c : c + 1] - mean) / std for c, (mean, std) in enumerate(zip(CLIP_MEAN, CLIP_STD))]
    return torch.cat(channels, dim=1)
