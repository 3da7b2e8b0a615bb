"""Reading YAML configs, validating them early, and building the model they describe.

A config has a ``model`` node ``{target, params, base_learning_rate?, random_pretrained_encoders?}``
and, for training, ``data`` and ``lightning`` nodes.

A file may be an overlay on another: a top-level ``base: train-v01.yaml`` (a path relative to the
file's folder) reads that file first (itself possibly an overlay) and merges this one on top with
``OmegaConf.merge``: mappings merge key by key, other values (lists too) replace the base's. A
mapping with integer keys where the base has a list changes those items of the list only (each
item merged like a mapping), e.g. ``emb_models: {3: {params: {n_copies: 8}}}``. Two keys beside ``model.params`` are
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

from .modules.encoders.pretrained import random_pretrained_weights
from .util import ConfigError, instantiate_from_config

BASE_KEY = "base"  # top-level key naming the config a file is an overlay on


def load_config(paths: str | Path | Sequence[str | Path], overrides: Sequence[str] = ()) -> DictConfig:
    """Merge YAML files left to right (each with its ``base:`` chain resolved), then apply ``key=value``
    dot-list overrides.

    Raises:
        FileNotFoundError: naming a missing file.
        ConfigError: for unparsable YAML, files that do not merge, bad overrides (named) or a missing
            ``model`` node.
    """
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not paths:
        raise ConfigError("no config file given")
    parts = [read_config_file(Path(path)) for path in paths]
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


def read_config_file(path: Path, overlays: tuple[Path, ...] = ()) -> DictConfig:
    """One YAML file with its ``base:`` chain resolved (see the module docstring); ``overlays`` are the
    files, resolved, that named this one as their base (nearest last).

    Raises:
        FileNotFoundError: naming a missing file given by the caller.
        ConfigError: for unparsable YAML, a missing or cyclic base (naming the chain) or an overlay that
            does not fit its base.
    """
    if not path.is_file():
        if overlays:
            raise ConfigError(f"{overlays[-1]}: base config not found: {path}")
        raise FileNotFoundError(f"config file not found: {path}")
    if path.resolve() in overlays:
        chain = " -> ".join(str(p) for p in (*overlays, path.resolve()))
        raise ConfigError(f"cyclic config bases: {chain}")
    try:
        config = OmegaConf.load(path)
    except Exception as err:
        raise ConfigError(f"cannot parse config {path}: {err}") from err
    if not isinstance(config, DictConfig) or BASE_KEY not in config:
        return config
    base = config.pop(BASE_KEY)
    if not isinstance(base, str):
        raise ConfigError(f"{path}: '{BASE_KEY}' must be the file name of another config, got {base!r}")
    below = read_config_file(path.parent / base, (*overlays, path.resolve()))
    changes = expand_index_patches(OmegaConf.to_container(below), OmegaConf.to_container(config), str(path))
    try:
        return OmegaConf.merge(below, changes)
    except Exception as err:  # e.g. a mapping where the base has a value
        raise ConfigError(f"{path} does not fit its base {base}: {type(err).__name__}: {err}") from None


def expand_index_patches(base: Any, changes: Any, where: str) -> Any:
    """``changes`` (plain containers) with every integer-keyed mapping that meets a list in ``base``
    turned into that whole list, its named items merged with their changes.

    Raises:
        ConfigError: naming the key, for a non-integer key or an index past the end of the list.
    """
    if not isinstance(changes, dict):
        return changes
    if isinstance(base, list):
        items = list(base)
        for index, change in changes.items():
            if not isinstance(index, int) or not 0 <= index < len(items):
                raise ConfigError(f"{where}: {index!r} is not an index of the base's list of {len(items)} items")
            change = expand_index_patches(items[index], change, f"{where}[{index}]")
            both_mappings = isinstance(items[index], dict) and isinstance(change, dict)
            items[index] = OmegaConf.to_container(OmegaConf.merge(items[index], change)) if both_mappings else change
        return items
    if isinstance(base, dict):
        return {key: expand_index_patches(base.get(key), value, f"{where}.{key}") for key, value in changes.items()}
    return changes


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
    from .models.contract import check_conditioning  # imports Lightning: only when a model is built

    check_conditioning(config)
    random_init = config.model.get("random_pretrained_encoders", False)
    if random_pretrained_encoders is not None:
        random_init = random_pretrained_encoders
    context = random_pretrained_weights() if random_init else contextlib.nullcontext()
    with context:
        return instantiate_from_config(model_node(config), **overrides)
