"""Pure loss functions for training the KL autoencoder without any pretrained network.

Images are float tensors (N, C, H, W) in [-1, 1] (the model range); every function returns a
0-dim tensor averaged over the batch, so that the terms can be weighted and summed.

- :func:`reconstruction_l1`: mean absolute pixel error.
- :func:`gradient_l1`: mean absolute error of the images' finite differences along x and y;
  it rewards edges at the right place with the right contrast, which a plain L1 on pixels
  blurs away (the cheap stand-in for a perceptual loss here).
- :func:`kl_per_value`: the posterior's KL divergence to N(0, I) in nats, summed over the
  latent and divided by the number of image values C*H*W: on the scale of a per-value mean
  loss, so a weight of 1e-6 means what it means for summed losses (the latent-diffusion
  convention of weighing the KL of a whole latent against the error of a whole image).
"""
from __future__ import annotations

import torch

from ..distributions.distributions import DiagonalGaussianDistribution


def reconstruction_l1(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``mean |x_hat - x|`` over all elements of (N, C, H, W) images: a 0-dim tensor (pixel units of [-1, 1])."""
    _check_same_shape(reconstruction, target)
    return (reconstruction - target).abs().mean()


def finite_differences(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward differences of (N, C, H, W) images: ``dx = x[..., :, 1:] - x[..., :, :-1]`` (N, C, H, W-1)
    and ``dy = x[..., 1:, :] - x[..., :-1, :]`` (N, C, H-1, W)."""
    return images[..., :, 1:] - images[..., :, :-1], images[..., 1:, :] - images[..., :-1, :]


def gradient_l1(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``(mean |dx(x_hat) - dx(x)| + mean |dy(x_hat) - dy(x)|) / 2`` of (N, C, H, W) images
    (H, W >= 2), with the forward differences of :func:`finite_differences`: a 0-dim tensor."""
    _check_same_shape(reconstruction, target)
    if min(target.shape[-2:]) < 2:
        raise ValueError(f"gradient_l1 needs images of at least 2x2 pixels, got {tuple(target.shape)}")
    rec_dx, rec_dy = finite_differences(reconstruction)
    dx, dy = finite_differences(target)
    return 0.5 * ((rec_dx - dx).abs().mean() + (rec_dy - dy).abs().mean())


def kl_per_value(posterior: DiagonalGaussianDistribution, image_values: int) -> torch.Tensor:
    """Batch mean of ``KL(q(z|x) || N(0, I))`` (nats, summed over the latent's (C, h, w)) divided by
    ``image_values`` (C*H*W of the encoded images): a 0-dim tensor.

    Per element: ``0.5 * (mu^2 + sigma^2 - 1 - log sigma^2)``.
    """
    if image_values < 1:
        raise ValueError(f"image_values must be positive, got {image_values}")
    return posterior.kl().mean() / image_values


def _check_same_shape(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"reconstruction {tuple(a.shape)} and target {tuple(b.shape)} differ in shape")
