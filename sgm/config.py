"""Reading YAML configs, validating them early, and building the model they describe.

A config has a ``model`` node ``{target, params, base_learning_rate?, random_pretrained_encoders?}``
and, for training, ``data`` and ``lightning`` nodes. Two keys beside ``model.params`` are
read here rather than passed to the model:

- ``base_learning_rate``: read by the trainer.
- ``random_pretrained_encoders`` (default false): when true, no pretrained-weights file is
  read (OpenCLIP, CLIP ViT-L, the aesthetic MLP, MiDaS, whether named in the config or by a
  class default): the same architecture is built with random weights. For tests, demos,
  meta-device inspection and loading full checkpoints.
"""
from __future__ import annotations

import contextlib

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .models.contract import check_conditioning
from .modules.encoders.pretrained import random_pretrained_weights
from .util import ConfigError, instantiate_from_config

def load_config(paths: str | Path | Sequence[str | Path], overrides: Sequence[str] = ()) -> DictConfig:
    """Merge YAML files left to right, then apply ``key=value`` dot-list overrides.

    Raises:
        FileNotFoundError: naming a missing file.
        ConfigError: for unparsable YAML, files that do not merge, bad overrides (named) or a missing
            ``model`` node.
    """
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not paths:
        raise ConfigError("no config file given")
    parts = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            parts.append(OmegaConf.load(path))
        except Exception as err:
            raise ConfigError(f"cannot parse config {path}: {err}") from err
    try:
        config = OmegaConf.merge(*parts)
    except Exception as err:  # e.g. a mapping where an earlier file has a list
        raise ConfigError(f"cannot merge {', '.join(str(p) for p in paths)}: {type(err).__name__}: {err}") from None
    for override in overrides:  # one at a time, so that an error names the override
        try:
            config = OmegaConf.merge(config, OmegaConf.from_dotlist([override]))
        except Exception as err:  # not key=value, or a value that does not fit there ("lightning.trainer=[1]")
            raise ConfigError(f"bad override {override!r}: expected key=value with a value that fits the config "
                              f"there ({type(err).__name__}: {err})") from None
    validate_model_node(config, source=", ".join(str(p) for p in paths))
    return config


def validate_model_node(config: DictConfig, source: str = "config") -> None:
    """Check that ``model.target`` and ``model.params`` exist, with a readable error."""
    model = config.get("model")
    if model is None:
        raise ConfigError(f"{source}: no 'model' section")
    if "target" not in model:
        raise ConfigError(f"{source}: 'model' has no 'target'")
    if not isinstance(model.get("params"), DictConfig):
        raise ConfigError(f"{source}: 'model.params' must be a mapping")


def model_node(config: DictConfig) -> dict:
    """The ``{target, params}`` node of the model as plain containers."""
    validate_model_node(config)
    model = OmegaConf.to_container(config.model, resolve=True)
    return {"target": model["target"], "params": model["params"]}


def build_model(config: DictConfig, random_pretrained_encoders: bool | None = None, **overrides: Any):
    """Instantiate the model of ``config`` (``overrides`` replace entries of ``model.params``).

    Args:
        random_pretrained_encoders: overrides ``model.random_pretrained_encoders`` (default
            false): when true no pretrained file is read and the encoders keep random weights.

    Raises:
        ConfigError: where the conditioning and the UNet of a diffusion config disagree
            (:func:`~sgm.models.contract.check_conditioning`, before any weight is made).
    """
    check_conditioning(config)
    random_init = config.model.get("random_pretrained_encoders", False)
    if random_pretrained_encoders is not None:
        random_init = random_pretrained_encoders
    context = random_pretrained_weights() if random_init else contextlib.nullcontext()
    with context:
        return instantiate_from_config(model_node(config), **overrides)
