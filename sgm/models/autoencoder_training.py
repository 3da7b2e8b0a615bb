"""Training the KL autoencoder (:class:`~sgm.models.autoencoder.AutoencoderKL`) with the project's trainer.

:class:`AutoencoderTraining` is a LightningModule for ``train_ddp_spawn.py``: it follows the
contract of :class:`~sgm.models.diffusion.DiffusionEngine` (``learning_rate`` set by the trainer
from ``model.base_learning_rate``, an ``optimizer_config`` node without the rate, ``log_images``
for :class:`~sgm.callbacks.ImageLogger`), so the run folder, ``last.ckpt`` and ``--resume`` work
unchanged. The autoencoder is held as ``autoencoder``: a checkpoint's ``state_dict`` holds its
weights under the prefix :data:`AUTOENCODER_PREFIX`; :func:`autoencoder_state_dict` strips it.

Loss (:mod:`sgm.modules.autoencoding.losses`; no pretrained network, no discriminator)::

    loss = rec_loss + gradient_weight * grad_loss + kl_weight * kl_loss

with ``rec_loss`` the mean L1 on [-1, 1] pixels, ``grad_loss`` the mean L1 of the x / y finite
differences (keeps edges sharp) and ``kl_loss`` the posterior's KL in nats per image value. The
reconstruction is decoded from a posterior sample, as the diffusion models will see it.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import pytorch_lightning as pl
import torch

from ..modules.autoencoding.losses import gradient_l1, kl_per_value, reconstruction_l1
from ..util import ConfigError, instantiate_from_config
from .autoencoder import AutoencoderKL

AUTOENCODER_PREFIX = "autoencoder."
DEFAULT_OPTIMIZER = {"target": "torch.optim.AdamW"}
# What training_step logs (all 0-dim); "loss" is the optimised total.
LOGGED_METRICS = ("loss", "rec_loss", "grad_loss", "kl_loss", "latent_std")


def autoencoder_state_dict(ckpt_state: Mapping) -> dict[str, torch.Tensor]:
    """The bare :class:`AutoencoderKL` weights of an :class:`AutoencoderTraining` checkpoint.

    Args:
        ckpt_state: a Lightning checkpoint (its ``state_dict`` is used) or its ``state_dict``:
            ``{"autoencoder.encoder...": tensor, ...}``.

    Returns:
        ``{"encoder...": tensor, ...}``: the keys under :data:`AUTOENCODER_PREFIX` without it, the
        other keys dropped; loads strictly into an ``AutoencoderKL`` of the same config.

    Raises:
        ValueError: if no key starts with the prefix (not a checkpoint of this module).
    """
    state = ckpt_state.get("state_dict", ckpt_state)
    weights = {key[len(AUTOENCODER_PREFIX):]: value for key, value in state.items()
               if key.startswith(AUTOENCODER_PREFIX)}
    if not weights:
        shown = ", ".join(list(map(str, state))[:5])
        raise ValueError(f"no key starts with {AUTOENCODER_PREFIX!r} (keys: {shown}...): not a checkpoint of "
                         "sgm.models.autoencoder_training.AutoencoderTraining")
    return weights


def _check_weight(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"model.params.{name}={value!r}: expected a finite number >= 0")
    return float(value)


class AutoencoderTraining(pl.LightningModule):
    """Trains an :class:`AutoencoderKL` on batches of single images.

    Args:
        autoencoder_config: ``{target, params}`` node of the autoencoder (an ``AutoencoderKL``).
        kl_weight: weight of ``kl_loss`` (nats per image value, see
            :func:`~sgm.modules.autoencoding.losses.kl_per_value`).
        gradient_weight: weight of ``grad_loss`` (L1 of image finite differences); 0 turns it off.
        optimizer_config: optimizer node without the learning rate (default AdamW); ``lr`` is
            :attr:`learning_rate`, set by the trainer.
        input_key: batch key of the images, float (N, 3, H, W) in [-1, 1].

    Raises:
        ConfigError: a negative or non-finite weight, or a node that does not build an AutoencoderKL.
    """

    def __init__(
        self,
        autoencoder_config: dict,
        kl_weight: float = 1.0e-6,
        gradient_weight: float = 1.0,
        optimizer_config: dict | None = None,
        input_key: str = "image",
    ):
        super().__init__()
        self.kl_weight = _check_weight("kl_weight", kl_weight)
        self.gradient_weight = _check_weight("gradient_weight", gradient_weight)
        self.autoencoder = instantiate_from_config(autoencoder_config)
        if not isinstance(self.autoencoder, AutoencoderKL):
            raise ConfigError(f"model.params.autoencoder_config.target={autoencoder_config.get('target')!r} builds a "
                              f"{type(self.autoencoder).__name__}; expected sgm.models.autoencoder.AutoencoderKL")
        self.optimizer_config = optimizer_config or DEFAULT_OPTIMIZER
        self.input_key = input_key
        self.learning_rate = 1.0e-4  # set by the trainer from base_learning_rate and the batch layout

    # ------------------------------------------------------------------ loss
    def images_of(self, batch: Mapping) -> torch.Tensor:
        """The batch's images (N, 3, H, W) in [-1, 1], checked."""
        images = batch[self.input_key]
        if images.ndim != 4:
            raise ValueError(f"batch[{self.input_key!r}] must be images (N, C, H, W), got shape {tuple(images.shape)}")
        return images

    def losses(self, images: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """The loss terms of images (N, 3, H, W) in [-1, 1], each 0-dim (names: :data:`LOGGED_METRICS`).

        The reconstruction is decoded from a posterior sample drawn with ``generator`` (None: the
        global RNG); ``latent_std`` is the sample's standard deviation (its inverse is the
        ``scale_factor`` a diffusion model over these latents wants).
        """
        posterior = self.autoencoder.posterior(images)
        latent = posterior.sample(generator)
        reconstruction = self.autoencoder.decode(latent)
        terms = {
            "rec_loss": reconstruction_l1(reconstruction, images),
            "grad_loss": gradient_l1(reconstruction, images),
            "kl_loss": kl_per_value(posterior, images[0].numel()),
        }
        terms["loss"] = terms["rec_loss"] + self.gradient_weight * terms["grad_loss"] + self.kl_weight * terms["kl_loss"]
        terms["latent_std"] = latent.detach().float().std()
        return terms

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        images = self.images_of(batch)
        terms = self.losses(images)
        for name in LOGGED_METRICS:
            self.log(name, terms[name].detach(), prog_bar=name == "loss", on_step=True, on_epoch=False,
                     batch_size=images.shape[0])
        return terms["loss"]

    def configure_optimizers(self):
        node = dict(self.optimizer_config)
        node["params"] = {**dict(node.get("params") or {}), "lr": self.learning_rate}
        return instantiate_from_config(node, params=[p for p in self.parameters() if p.requires_grad])

    # ------------------------------------------------------------------ logging
    @torch.no_grad()
    def log_images(self, batch: dict, N: int = 8, **unused) -> dict[str, torch.Tensor]:
        """``inputs`` and ``reconstructions`` (decoded from the posterior mean): (n, 3, H, W) in
        [-1, 1] (reconstructions roughly), n = min(N, batch size). Other keyword arguments of the
        image logger's ``log_images_kwargs`` (e.g. ``sample``) do not apply and are ignored."""
        images = self.images_of(batch)[:N]
        return {"inputs": images, "reconstructions": self.autoencoder.decode(self.autoencoder.posterior(images).mode())}
