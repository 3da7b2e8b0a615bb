"""Random blur kernels of the Real-ESRGAN-style degradation (stage-2 training data).

Every kernel is a normalised ``(k, k)`` float32 tensor (sum 1) with odd ``k``; the sampling
functions pad them with zeros to a common size (21 by default). Angles are in RADIANS,
widths (``sigma``) in pixels. All randomness comes from an explicit ``torch.Generator``
(CPU); nothing touches the global random state.

Families (``d`` = offset from the kernel centre, ``Sigma`` = rotated covariance):
``gaussian``     ``exp(-d^T Sigma^-1 d / 2)``
``generalized``  ``exp(-(d^T Sigma^-1 d / 2)^beta)`` (heavier or lighter tails than Gaussian)
``plateau``      ``1 / (1 + (d^T Sigma^-1 d)^beta)`` (flat top)
``sinc``         circular low-pass ``omega J1(omega |d|) / (2 pi |d|)`` with cutoff ``omega``
The names ``iso``/``aniso`` of :data:`KERNEL_TYPES` select one sigma with no rotation versus two
sigmas and a random rotation.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")


def uniform(generator: torch.Generator, low: float, high: float) -> float:
    """One draw from U(low, high)."""
    return low + (high - low) * float(torch.rand((), generator=generator, device=generator.device))


def categorical(generator: torch.Generator, probs: Sequence[float]) -> int:
    """Index drawn with the given (not necessarily normalised) probabilities."""
    weights = torch.as_tensor(probs, dtype=torch.float64).cumsum(0)
    u = uniform(generator, 0.0, float(weights[-1]))
    return min(int(torch.searchsorted(weights, torch.tensor(u, dtype=torch.float64), right=True)), len(probs) - 1)


def _offsets(size: int) -> torch.Tensor:
    """Pixel offsets from the centre of an odd ``size`` kernel, ``(size, size, 2)`` as (x, y)."""
    if size % 2 != 1:
        raise ValueError(f"kernel size must be odd, got {size}")
    r = torch.arange(size, dtype=torch.float64) - size // 2
    y, x = torch.meshgrid(r, r, indexing="ij")
    return torch.stack([x, y], dim=-1)


def _mahalanobis(size: int, sigma_x: float, sigma_y: float, angle: float) -> torch.Tensor:
    """``d^T Sigma^-1 d`` on the kernel grid, ``(size, size)``.

    Sigma has standard deviations ``sigma_x``, ``sigma_y`` (pixels) along its principal axes;
    the first axis is turned by ``angle`` (radians) from the column (x) axis towards the row (y) axis.
    """
    cos, sin = math.cos(angle), math.sin(angle)
    rotation = torch.tensor([[cos, -sin], [sin, cos]], dtype=torch.float64)
    inv_cov = rotation @ torch.diag(torch.tensor([sigma_x**-2, sigma_y**-2], dtype=torch.float64)) @ rotation.T
    d = _offsets(size)
    return torch.einsum("hwi,ij,hwj->hw", d, inv_cov, d)


def _normalised(kernel: torch.Tensor) -> torch.Tensor:
    return (kernel / kernel.sum()).float()


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float, angle: float = 0.0) -> torch.Tensor:
    """Anisotropic Gaussian ``(size, size)``; isotropic when ``sigma_x == sigma_y``."""
    return _normalised(torch.exp(-0.5 * _mahalanobis(size, sigma_x, sigma_y, angle)))


def generalized_gaussian_kernel(size: int, sigma_x: float, sigma_y: float, angle: float, beta: float) -> torch.Tensor:
    """Generalized Gaussian ``(size, size)``; ``beta`` 1 is the Gaussian."""
    return _normalised(torch.exp(-((0.5 * _mahalanobis(size, sigma_x, sigma_y, angle)) ** beta)))


def plateau_kernel(size: int, sigma_x: float, sigma_y: float, angle: float, beta: float) -> torch.Tensor:
    """Plateau-shaped kernel ``(size, size)``; larger ``beta`` gives a flatter top and sharper edge."""
    return _normalised(1.0 / (1.0 + _mahalanobis(size, sigma_x, sigma_y, angle) ** beta))


def sinc_kernel(size: int, cutoff: float) -> torch.Tensor:
    """Circular low-pass ``(size, size)`` with cutoff ``cutoff`` in radians per pixel (pi = Nyquist)."""
    radius = _offsets(size).norm(dim=-1)
    safe = radius.clamp(min=1e-12)
    kernel = cutoff * torch.special.bessel_j1(cutoff * safe) / (2 * math.pi * safe)
    kernel = torch.where(radius == 0, torch.full_like(radius, cutoff**2 / (4 * math.pi)), kernel)
    return _normalised(kernel)


def pad_kernel(kernel: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad a centred odd kernel ``(k, k)`` to ``(size, size)``."""
    pad = (size - kernel.shape[-1]) // 2
    if pad < 0:
        raise ValueError(f"kernel of size {kernel.shape[-1]} does not fit in {size}")
    return F.pad(kernel, (pad, pad, pad, pad))


def _shape_beta(generator: torch.Generator, beta_range: Sequence[float]) -> float:
    """Shape exponent: with even odds below 1 (from ``beta_range[0]``) or above 1 (to ``beta_range[1]``)."""
    if uniform(generator, 0.0, 1.0) < 0.5:
        return uniform(generator, beta_range[0], 1.0)
    return uniform(generator, 1.0, beta_range[1])


def random_mixed_kernel(
    generator: torch.Generator,
    size: int,
    kernel_types: Sequence[str],
    kernel_probs: Sequence[float],
    sigma_range: Sequence[float],
    betag_range: Sequence[float],
    betap_range: Sequence[float],
) -> torch.Tensor:
    """One ``(size, size)`` kernel of a family drawn from ``kernel_types`` with ``kernel_probs``.

    Isotropic types use one sigma from ``sigma_range`` (pixels) and no rotation;
    anisotropic ones draw both sigmas and an angle in U(-pi, pi).
    """
    kind = kernel_types[categorical(generator, kernel_probs)]
    if kind not in KERNEL_TYPES:
        raise ValueError(f"unknown kernel type {kind!r}; expected one of {KERNEL_TYPES}")
    sigma_x = uniform(generator, *sigma_range)
    if kind.endswith("aniso"):
        sigma_y, angle = uniform(generator, *sigma_range), uniform(generator, -math.pi, math.pi)
    else:
        sigma_y, angle = sigma_x, 0.0
    if kind.startswith("generalized"):
        return generalized_gaussian_kernel(size, sigma_x, sigma_y, angle, _shape_beta(generator, betag_range))
    if kind.startswith("plateau"):
        return plateau_kernel(size, sigma_x, sigma_y, angle, _shape_beta(generator, betap_range))
    return gaussian_kernel(size, sigma_x, sigma_y, angle)


def _random_size(generator: torch.Generator, sizes: Sequence[int]) -> int:
    return int(sizes[categorical(generator, [1.0] * len(sizes))])


def random_blur_kernel(
    generator: torch.Generator,
    sizes: Sequence[int],
    padded_size: int,
    sinc_prob: float,
    kernel_types: Sequence[str],
    kernel_probs: Sequence[float],
    sigma_range: Sequence[float],
    betag_range: Sequence[float],
    betap_range: Sequence[float],
) -> torch.Tensor:
    """A first- or second-pass blur kernel ``(padded_size, padded_size)``.

    Size uniform over ``sizes``; with probability ``sinc_prob`` a sinc whose cutoff is
    U(pi/3, pi) for sizes below 13 and U(pi/5, pi) otherwise, else :func:`random_mixed_kernel`.
    """
    size = _random_size(generator, sizes)
    if uniform(generator, 0.0, 1.0) < sinc_prob:
        low = math.pi / 3 if size < 13 else math.pi / 5
        kernel = sinc_kernel(size, uniform(generator, low, math.pi))
    else:
        kernel = random_mixed_kernel(generator, size, kernel_types, kernel_probs, sigma_range, betag_range, betap_range)
    return pad_kernel(kernel, padded_size)


def random_final_sinc(generator: torch.Generator, sizes: Sequence[int], padded_size: int, prob: float) -> torch.Tensor:
    """With probability ``prob`` a sinc of random size and cutoff U(pi/3, pi), else the identity
    (a single 1 at the centre); ``(padded_size, padded_size)``."""
    if uniform(generator, 0.0, 1.0) < prob:
        size = _random_size(generator, sizes)
        return pad_kernel(sinc_kernel(size, uniform(generator, math.pi / 3, math.pi)), padded_size)
    identity = torch.zeros(padded_size, padded_size)
    identity[padded_size // 2, padded_size // 2] = 1.0
    return identity


class ClipKernels(NamedTuple):
    """Per-frame kernels of one clip, each ``(T, K, K)`` float32 (``K`` = padded size, 21)."""

    kernel1: torch.Tensor
    kernel2: torch.Tensor
    sinc: torch.Tensor
