"""Reading YAML configs, validating them early, and building the model they describe.

A config has a ``model`` node ``{target, params, base_learning_rate?, random_pretrained_encoders?}``
and, for training, ``data`` and ``lightning`` nodes. Two keys beside ``model.params`` are
read here rather than passed to the model:

- ``base_learning_rate``: read by the trainer.
- ``random_pretrained_encoders`` (default false): when true, every pretrained-weights path
  in the model config (parameters named ``version`` or ``*_version``: OpenCLIP, CLIP ViT-L,
  the aesthetic MLP, MiDaS) is replaced by null, so the same architecture is built with
  random weights and no file is read. For tests, demos and meta-device inspection.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from .util import ConfigError, instantiate_from_config

def load_config(paths: str | Path | Sequence[str | Path], overrides: Sequence[str] = ()) -> DictConfig:
    """Merge YAML files left to right, then apply ``key=value`` dot-list overrides.

    Raises:
        FileNotFoundError: naming a missing file.
        ConfigError: for unparsable YAML, bad overrides or a missing ``model`` node.
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
        parts.append(OmegaConf.from_dotlist(list(overrides)))
    except Exception as err:
        raise ConfigError(f"bad override in {list(overrides)}: expected key=value ({err})") from err
    config = OmegaConf.merge(*parts)
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


def strip_pretrained_paths(node: Any) -> Any:
    """Copy of a config tree with every ``version`` / ``*_version`` value set to None."""
    if isinstance(node, (dict, DictConfig)):
        return {
            key: None if str(key) == "version" or str(key).endswith("_version") else strip_pretrained_paths(value)
            for key, value in node.items()
        }
    if isinstance(node, (list, ListConfig)):
        return [strip_pretrained_paths(value) for value in node]
    return node


def model_node(config: DictConfig, random_pretrained_encoders: bool | None = None) -> dict:
    """The ``{target, params}`` node of the model as plain containers, switch applied.

    Args:
        random_pretrained_encoders: overrides ``model.random_pretrained_encoders`` when given.
    """
    validate_model_node(config)
    model = OmegaConf.to_container(config.model, resolve=True)
    random_init = model.get("random_pretrained_encoders", False)
    if random_pretrained_encoders is not None:
        random_init = random_pretrained_encoders
    node = {"target": model["target"], "params": model["params"]}
    return strip_pretrained_paths(node) if random_init else node


def build_model(config: DictConfig, random_pretrained_encoders: bool | None = None, **overrides: Any):
    """Instantiate the model of ``config`` (``overrides`` replace entries of ``model.params``)."""
    return instantiate_from_config(model_node(config, random_pretrained_encoders), **overrides)
