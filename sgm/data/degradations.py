"""Stage-2 training degradation: a seedable, two-pass Real-ESRGAN-style pipeline in torch.

Hi3D's refiner learns to undo this: each 16-frame orbit clip is blurred, resized, noised
and JPEG-compressed twice, taken down to 1/``scale`` resolution and brought back up, so the
model sees a 4x super-resolution task (reference doc, section 8.1). Images are in [0, 1]
until the last step, which maps to [-1, 1].

Per clip (one draw shared by all frames): resize direction/factor/mode, Gaussian-vs-Poisson
choice, whether the second blur happens, the order of the last stage, the final resize mode.
Per frame: blur kernels (:func:`sample_clip_kernels`), noise strength, gray-noise flag, JPEG
quality. All randomness comes from an explicit ``torch.Generator`` on the clip's device.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sgm.data.degradation_kernels import (
    KERNEL_TYPES,
    ClipKernels,
    categorical,
    random_blur_kernel,
    random_final_sinc,
    uniform,
)

RESIZE_MODES = ("area", "bilinear", "bicubic")
_KERNEL_PROBS = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)


@dataclass(frozen=True)
class DegradationConfig:
    """Constants of the degradation; defaults are those of Real-ESRGAN's train_realesrnet_x4plus.yml.

    Names follow that file's keys. Ranges are ``(low, high)``; resize probabilities are
    ``(up, down, keep)``; noise sigmas are on the 0-255 scale; sigmas of blur kernels in pixels.
    ``kernel_sizes`` (odd, up to ``blur_kernel_size``) is fixed in code there, not in the file.
    """

    scale: int = 4
    resize_prob: tuple[float, float, float] = (0.2, 0.7, 0.1)
    resize_range: tuple[float, float] = (0.15, 1.5)
    gaussian_noise_prob: float = 0.5
    noise_range: tuple[float, float] = (1.0, 30.0)
    poisson_scale_range: tuple[float, float] = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_range: tuple[float, float] = (30.0, 95.0)
    second_blur_prob: float = 0.8
    resize_prob2: tuple[float, float, float] = (0.3, 0.4, 0.3)
    resize_range2: tuple[float, float] = (0.3, 1.2)
    gaussian_noise_prob2: float = 0.5
    noise_range2: tuple[float, float] = (1.0, 25.0)
    poisson_scale_range2: tuple[float, float] = (0.05, 2.5)
    gray_noise_prob2: float = 0.4
    jpeg_range2: tuple[float, float] = (30.0, 95.0)
    blur_kernel_size: int = 21
    kernel_sizes: tuple[int, ...] = (7, 9, 11, 13, 15, 17, 19, 21)
    kernel_list: tuple[str, ...] = KERNEL_TYPES
    kernel_prob: tuple[float, ...] = _KERNEL_PROBS
    sinc_prob: float = 0.1
    blur_sigma: tuple[float, float] = (0.2, 3.0)
    betag_range: tuple[float, float] = (0.5, 4.0)
    betap_range: tuple[float, float] = (1.0, 2.0)
    kernel_list2: tuple[str, ...] = KERNEL_TYPES
    kernel_prob2: tuple[float, ...] = _KERNEL_PROBS
    sinc_prob2: float = 0.1
    blur_sigma2: tuple[float, float] = (0.2, 1.5)
    betag_range2: tuple[float, float] = (0.5, 4.0)
    betap_range2: tuple[float, float] = (1.0, 2.0)
    final_sinc_prob: float = 0.8

    @classmethod
    def from_official(cls, options: Mapping) -> "DegradationConfig":
        """Build from the keys of an official Real-ESRGAN options dict; other keys are ignored.

        Lists become tuples; a key that exists here but is missing there keeps its default.
        """
        fields = {f.name: f for f in dataclasses.fields(cls)}
        picked = {}
        for name, value in options.items():
            if name in fields:
                picked[name] = tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else value
        return cls(**picked)


def sample_clip_kernels(num_frames: int, config: DegradationConfig, generator: torch.Generator) -> ClipKernels:
    """Draw the per-frame kernels of one clip (dataset side): three ``(T, K, K)`` float32 stacks.

    ``K`` = ``config.blur_kernel_size``. First-pass, second-pass and final-sinc kernels as in
    :mod:`sgm.data.degradation_kernels`, drawn frame by frame from ``generator``.
    """
    c, size = config, config.blur_kernel_size
    first, second, final = [], [], []
    for _ in range(num_frames):
        first.append(random_blur_kernel(generator, c.kernel_sizes, size, c.sinc_prob, c.kernel_list, c.kernel_prob,
                                        c.blur_sigma, c.betag_range, c.betap_range))
        second.append(random_blur_kernel(generator, c.kernel_sizes, size, c.sinc_prob2, c.kernel_list2,
                                         c.kernel_prob2, c.blur_sigma2, c.betag_range2, c.betap_range2))
        final.append(random_final_sinc(generator, c.kernel_sizes, size, c.final_sinc_prob))
    return ClipKernels(torch.stack(first), torch.stack(second), torch.stack(final))


# ----------------------------------------------------------------------------------------
# Operations on a batch of frames x (N, 3, H, W)


def filter2d(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Blur each image ``(N, C, H, W)`` with its own kernel ``(N, k, k)`` (odd ``k``), same size out.

    Borders are mirrored (reflect padding), or repeated when an image is smaller than the
    kernel radius. The kernels used here are point-symmetric, so correlation = convolution.
    """
    n, c, h, w = x.shape
    pad = kernels.shape[-1] // 2
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect" if pad < min(h, w) else "replicate")
    weight = kernels.to(x).repeat_interleave(c, dim=0)[:, None]
    return F.conv2d(padded.reshape(1, n * c, h + 2 * pad, w + 2 * pad), weight, groups=n * c).reshape(n, c, h, w)


def resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize ``(N, C, H, W)`` to ``size`` = (height, width) with one of :data:`RESIZE_MODES` (no antialias)."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {mode!r}; expected one of {RESIZE_MODES}")
    size = (max(1, int(size[0])), max(1, int(size[1])))
    return F.interpolate(x, size=size, mode=mode, align_corners=None if mode == "area" else False)


def quantise_8bit(x: torch.Tensor) -> torch.Tensor:
    """Round to the nearest of 256 levels in [0, 1]."""
    return (x * 255.0).round().clamp(0.0, 255.0) / 255.0


def _luma(x: torch.Tensor) -> torch.Tensor:
    """ITU-R BT.601 luma ``(N, 1, H, W)`` of RGB ``(N, 3, H, W)``."""
    return (x * x.new_tensor([0.299, 0.587, 0.114])[:, None, None]).sum(dim=1, keepdim=True)


def _per_frame_noise(x: torch.Tensor, gray: torch.Tensor,
                     draw: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Noise ``(N, 3, H, W)``: ``draw(images)`` on RGB frames, on luma (shared by channels) where ``gray``."""
    noise = torch.empty_like(x)
    if (~gray).any():
        noise[~gray] = draw(x[~gray])
    if gray.any():
        noise[gray] = draw(_luma(x[gray])).expand(-1, 3, -1, -1)
    return noise


def add_gaussian_noise(x: torch.Tensor, sigma: torch.Tensor, gray: torch.Tensor,
                       generator: torch.Generator) -> torch.Tensor:
    """``x + sigma * N(0, 1)`` clipped to [0, 1]; ``sigma`` ``(N,)`` in [0, 1] units, ``gray`` ``(N,)`` bool."""
    noise = _per_frame_noise(x, gray, lambda img: torch.randn(img.shape, generator=generator,
                                                              device=generator.device).to(img))
    return (x + sigma.to(x)[:, None, None, None] * noise).clamp(0.0, 1.0)


def add_poisson_noise(x: torch.Tensor, scale: torch.Tensor, gray: torch.Tensor, generator: torch.Generator,
                      levels: int = 256) -> torch.Tensor:
    """Shot noise: ``x + scale * (Poisson(levels * x8) / levels - x8)`` clipped to [0, 1].

    ``x8`` is ``x`` rounded to 8 bits; ``levels`` photons per unit intensity (256 = the count
    Real-ESRGAN infers for natural 8-bit images); ``scale`` ``(N,)``; ``gray`` ``(N,)`` bool.
    """
    x8 = quantise_8bit(x)

    def draw(img: torch.Tensor) -> torch.Tensor:
        rate = (img * levels).clamp(min=0.0).to(device=generator.device, dtype=torch.float32)
        return torch.poisson(rate, generator=generator).to(img) / levels - img

    return (x + scale.to(x)[:, None, None, None] * _per_frame_noise(x8, gray, draw)).clamp(0.0, 1.0)


# JPEG (ITU T.81 Annex K) base quantisation tables, row = vertical frequency.
_LUMA_TABLE = (
    (16, 11, 10, 16, 24, 40, 51, 61), (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56), (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77), (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101), (72, 92, 95, 98, 112, 100, 103, 99),
)
_CHROMA_TABLE = (
    (17, 18, 24, 47, 99, 99, 99, 99), (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99), (47, 66, 99, 99, 99, 99, 99, 99),
    *((99,) * 8,) * 4,
)
# JFIF full-range RGB -> YCbCr (rows Y, Cb, Cr); chroma is offset by 128 on the 0-255 scale.
_RGB_TO_YCBCR = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))


def quantisation_tables(quality: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """libjpeg's quality scaling of the standard tables: luma and chroma ``(N, 8, 8)`` for ``quality`` ``(N,)``.

    ``quality`` in [1, 100] (floats allowed): scale = 5000 / q below 50, else 200 - 2 q (in %),
    table = floor((base * scale + 50) / 100) clipped to [1, 255].
    """
    q = quality.to(torch.float64).clamp(1.0, 100.0)[:, None, None]
    scale = torch.where(q < 50, 5000.0 / q, 200.0 - 2.0 * q)
    tables = [torch.tensor(t, dtype=torch.float64, device=q.device) for t in (_LUMA_TABLE, _CHROMA_TABLE)]
    return tuple(torch.floor((t * scale + 50.0) / 100.0).clamp(1.0, 255.0) for t in tables)


def _dct_matrix(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Orthonormal 8-point DCT-II ``(8, 8)``: row u = frequency, column = sample."""
    n = torch.arange(8, dtype=torch.float64)
    basis = torch.cos((2 * n[None, :] + 1) * n[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    basis[0] /= math.sqrt(2)
    return basis.to(device=device, dtype=dtype)


def _quantise_blocks(plane: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """DCT, quantise with ``table`` ``(N, 8, 8)``, round, dequantise and invert, per 8x8 block of ``(N, C, H, W)``."""
    n, c, h, w = plane.shape
    blocks = plane.reshape(n, c, h // 8, 8, w // 8, 8).transpose(3, 4)
    dct = _dct_matrix(plane.device, plane.dtype)
    step = table.to(plane)[:, None, None, None]
    coeffs = torch.round(dct @ blocks @ dct.T / step) * step
    return (dct.T @ coeffs @ dct).transpose(3, 4).reshape(n, c, h, w)


def jpeg_compress(x: torch.Tensor, quality: torch.Tensor, chroma_subsampling: bool = True) -> torch.Tensor:
    """Baseline-JPEG round trip of ``(N, 3, H, W)`` images in [0, 1] at ``quality`` ``(N,)``; output in [0, 1].

    YCbCr (JFIF), optional 4:2:0 chroma subsampling (2x2 mean; bilinear upsampling as libjpeg's
    "fancy" decoder), 8x8 DCT, quantisation with :func:`quantisation_tables` and hard rounding.
    Edges are replicated up to a multiple of the block size and cropped afterwards; entropy
    coding is lossless and skipped. Agrees with Pillow's encoder/decoder to about 45 dB PSNR.
    """
    n, _, h, w = x.shape
    block = 16 if chroma_subsampling else 8
    padded = F.pad(x, (0, -w % block, 0, -h % block), mode="replicate")
    to_ycc = padded.new_tensor(_RGB_TO_YCBCR)
    ycc = torch.einsum("ij,njhw->nihw", to_ycc, padded * 255.0)  # chroma centred on 0, luma not yet
    luma_table, chroma_table = quantisation_tables(quality.to(x.device))
    luma = _quantise_blocks(ycc[:, :1] - 128.0, luma_table) + 128.0
    chroma = ycc[:, 1:]
    if chroma_subsampling:
        chroma = F.avg_pool2d(chroma, 2)
    chroma = _quantise_blocks(chroma, chroma_table)
    if chroma_subsampling:
        chroma = F.interpolate(chroma, scale_factor=2, mode="bilinear", align_corners=False)
    rgb = torch.einsum("ij,njhw->nihw", torch.linalg.inv(to_ycc), torch.cat([luma, chroma], dim=1)) / 255.0
    return rgb[..., :h, :w].clamp(0.0, 1.0)


# ----------------------------------------------------------------------------------------
# The pipeline


def _frame_uniform(generator: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    """``(n,)`` draws from U(low, high) on the generator's device."""
    return low + (high - low) * torch.rand(n, generator=generator, device=generator.device)


def _random_mode(generator: torch.Generator) -> str:
    return RESIZE_MODES[categorical(generator, [1.0] * len(RESIZE_MODES))]


def _random_scale(generator: torch.Generator, probs: Sequence[float], scale_range: Sequence[float]) -> float:
    """Up-scale U(1, high), down-scale U(low, 1) or keep (1), chosen with ``probs`` = (up, down, keep)."""
    direction = categorical(generator, probs)
    if direction == 0:
        return uniform(generator, 1.0, scale_range[1])
    if direction == 1:
        return uniform(generator, scale_range[0], 1.0)
    return 1.0


def _random_noise(x: torch.Tensor, generator: torch.Generator, gaussian_prob: float,
                  sigma_range: Sequence[float], poisson_range: Sequence[float], gray_prob: float) -> torch.Tensor:
    """Gaussian (sigma on the 0-255 scale) or Poisson noise, chosen once; strength and gray flag per frame."""
    n = x.shape[0]
    gaussian = uniform(generator, 0.0, 1.0) < gaussian_prob
    strength = _frame_uniform(generator, n, *(sigma_range if gaussian else poisson_range))
    gray = (torch.rand(n, generator=generator, device=generator.device) < gray_prob).to(x.device)
    if gaussian:
        return add_gaussian_noise(x, strength / 255.0, gray, generator)
    return add_poisson_noise(x, strength, gray, generator)


def _random_jpeg(x: torch.Tensor, generator: torch.Generator, quality_range: Sequence[float]) -> torch.Tensor:
    return jpeg_compress(x.clamp(0.0, 1.0), _frame_uniform(generator, x.shape[0], *quality_range))


def degrade_clip(clip: torch.Tensor, masks: torch.Tensor, kernels: ClipKernels, config: DegradationConfig,
                 generator: torch.Generator, clean_frame: torch.Tensor | None = None) -> torch.Tensor:
    """Degrade one clip for stage-2 training.

    Args:
        clip: ``(T, 3, H, W)`` frames in [0, 1].
        masks: ``(T, H, W)`` ground-truth alpha; pixels where it is exactly 0 come out white.
        kernels: per-frame kernels from :func:`sample_clip_kernels`, each ``(T, K, K)``.
        config: the constants.
        generator: every random draw of this call; lives on ``clip``'s device.
        clean_frame: ``(3, H, W)`` in [0, 1] that replaces frame 0 (default: ``clip[0]``).

    Returns:
        ``(T, 3, H, W)`` in [-1, 1]: frame 0 is the clean frame, frames 1.. the degraded ones.
    """
    t, _, h, w = clip.shape
    if masks.shape != (t, h, w):
        raise ValueError(f"masks must be (T, H, W) = {(t, h, w)}, got {tuple(masks.shape)}")
    c, low_h, low_w = config, h // config.scale, w // config.scale
    x = filter2d(clip, kernels.kernel1)
    s = _random_scale(generator, c.resize_prob, c.resize_range)
    x = resize(x, (int(h * s), int(w * s)), _random_mode(generator))
    x = _random_noise(x, generator, c.gaussian_noise_prob, c.noise_range, c.poisson_scale_range, c.gray_noise_prob)
    x = _random_jpeg(x, generator, c.jpeg_range)
    if uniform(generator, 0.0, 1.0) < c.second_blur_prob:
        x = filter2d(x, kernels.kernel2)
    s = _random_scale(generator, c.resize_prob2, c.resize_range2)
    x = resize(x, (int(h / c.scale * s), int(w / c.scale * s)), _random_mode(generator))
    x = _random_noise(x, generator, c.gaussian_noise_prob2, c.noise_range2, c.poisson_scale_range2,
                      c.gray_noise_prob2)
    if uniform(generator, 0.0, 1.0) < 0.5:
        x = filter2d(resize(x, (low_h, low_w), _random_mode(generator)), kernels.sinc)
        x = _random_jpeg(x, generator, c.jpeg_range2)
    else:
        x = _random_jpeg(x, generator, c.jpeg_range2)
        x = filter2d(resize(x, (low_h, low_w), _random_mode(generator)), kernels.sinc)
    x = resize(quantise_8bit(x), (h, w), _random_mode(generator)).clamp(0.0, 1.0)
    x = torch.where(masks[:, None] == 0, torch.ones_like(x), x)
    clean = clip[0] if clean_frame is None else clean_frame
    return torch.cat([clean[None].to(x), x[1:]]) * 2.0 - 1.0


class DegradationPipeline:
    """:func:`degrade_clip` over a batch of clips, with one config."""

    def __init__(self, config: DegradationConfig = DegradationConfig()):
        self.config = config

    def __call__(self, clips: torch.Tensor, masks: torch.Tensor, kernels: ClipKernels,
                 generator: torch.Generator) -> torch.Tensor:
        """Clips ``(B, T, 3, H, W)`` in [0, 1], masks ``(B, T, H, W)``, kernels ``(B, T, K, K)`` each.

        Returns ``(B, T, 3, H, W)`` in [-1, 1]; frame 0 of each clip is its own clean frame.
        """
        return torch.stack([
            degrade_clip(clip, mask, ClipKernels(*(k[b] for k in kernels)), self.config, generator)
            for b, (clip, mask) in enumerate(zip(clips, masks))
        ])
