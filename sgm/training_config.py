"""The sections, keys and value types of a training config, checked before anything is built.

A training config has ``model`` (``target``, ``params``, ``base_learning_rate``,
``random_pretrained_encoders``), ``data`` (a LightningDataModule node whose ``params`` hold
``batch_size``) and, optionally, ``lightning`` (``trainer``, ``callbacks``, ``modelcheckpoint``;
see :mod:`sgm.training`); a top-level ``checkpoint`` (the weights key of an inference config that a
training overlay is merged onto, e.g. ``--base configs/demo-v01.yaml configs/demo-train-v01.yaml``)
must be null. Every ``{target, params}`` node is checked against the signature of the
class it names (:mod:`sgm.config_check`), the conditioning contract is checked
(:mod:`sgm.models.contract`); ``lightning.trainer`` is checked where it is translated
(:func:`sgm.training.translate_trainer_options`).
"""
from __future__ import annotations

import math
from collections.abc import Mapping

from omegaconf import DictConfig, OmegaConf

from .callbacks import LAST_CHECKPOINT_KEY, LastCheckpoint, check_every_minutes
from .config_check import ConfigKeyError, check_keywords, check_node, check_value, signature_of, unknown_key_message
from .models.contract import check_conditioning
from .util import ConfigError

TRAINING_SECTIONS = ("model", "data", "lightning", "checkpoint")
LIGHTNING_SECTIONS = ("trainer", "callbacks", "modelcheckpoint")
MODEL_NODE_KEYS = ("target", "params", "base_learning_rate", "random_pretrained_encoders")


def check_training_config(config: DictConfig) -> None:
    """Check a training config's sections, keys and value types before anything is built.

    The ``model`` and ``data`` nodes, every ``lightning.callbacks`` node and
    ``lightning.modelcheckpoint.params`` are checked against the signatures of the classes they
    name (:mod:`sgm.config_check`), nested ``{target, params}`` nodes too; ``lightning.trainer``
    is checked by :func:`sgm.training.translate_trainer_options`.

    Raises:
        ConfigError: naming the key path, the value and what was expected.
    """
    try:
        plain = OmegaConf.to_container(config, resolve=True)
    except Exception as err:  # an interpolation that does not resolve
        raise ConfigError(f"the config does not resolve: {err}") from None
    _check_known_keys(plain, "", TRAINING_SECTIONS, "a section of a training config")
    if plain.get("checkpoint") is not None:  # an inference config's weights, merged under a training overlay
        raise ConfigError(f"checkpoint is {plain['checkpoint']!r}: a training config takes no inference checkpoint "
                          "(set checkpoint: null; start from weights with model.params.ckpt_path, continue a run "
                          "with --resume)")
    for section in ("model", "data"):
        if not isinstance(plain.get(section), dict):
            raise ConfigKeyError(f"the config has no {section!r} section (a mapping)")
    _check_model_section(plain["model"])
    check_conditioning(config)  # the UNet's widths against the conditioning, on the meta device
    _check_data_section(plain["data"])
    lightning = plain.get("lightning") or {}
    _check_known_keys(lightning, "lightning", LIGHTNING_SECTIONS, "a section of lightning")
    for name, node in (lightning.get("callbacks") or {}).items():
        check_node(node, f"lightning.callbacks.{name}")
    check_last_checkpoint_params((lightning.get("modelcheckpoint") or {}).get("params") or {})


def _check_known_keys(node: Mapping, path: str, known: tuple[str, ...], what: str) -> None:
    for key in node:
        if key not in known:
            raise ConfigKeyError(unknown_key_message(path, str(key), known, what))


def _check_model_section(model: dict) -> None:
    _check_known_keys(model, "model", MODEL_NODE_KEYS, "a key of the model node")
    rate = model.get("base_learning_rate")
    if rate is None:
        raise ConfigKeyError("model.base_learning_rate is missing: training needs the learning rate per sample "
                             "(e.g. 1.0e-05)")
    check_value("model.base_learning_rate", rate, float, "training (the learning rate per sample)")
    if not math.isfinite(rate) or rate <= 0:
        raise ConfigError(f"model.base_learning_rate={rate!r}: expected a positive number")
    if "random_pretrained_encoders" in model:
        check_value("model.random_pretrained_encoders", model["random_pretrained_encoders"], bool, "sgm.config")
    check_node({"target": model.get("target"), "params": model.get("params")}, "model")


def _check_data_section(data: dict) -> None:
    check_node(data, "data")
    batch_size = (data.get("params") or {}).get("batch_size")
    if batch_size is None:
        raise ConfigKeyError("data.params.batch_size is missing: the learning rate is scaled by it (clips per device)")
    check_value("data.params.batch_size", batch_size, int, "the learning-rate scaling (clips per device)")


def check_last_checkpoint_params(params: Mapping) -> None:
    """``lightning.modelcheckpoint.params``: keyword arguments of :class:`~sgm.callbacks.LastCheckpoint`
    besides ``dirpath`` (the run's ``checkpoints/``).

    Raises:
        ConfigError: an unknown key or a wrongly typed or out-of-range value, named.
    """
    check_keywords(signature_of(LastCheckpoint).without("dirpath"), params, LAST_CHECKPOINT_KEY)
    if "every_minutes" in params:
        check_every_minutes(params["every_minutes"])
