"""Config instantiation and small tensor helpers shared by the whole package.

A config node is a mapping ``{"target": "dotted.path.Class", "params": {...}}``;
:func:`instantiate_from_config` builds ``Class(**params)``, its target resolved by
:mod:`sgm.targets` (which maps the official ``vtdm.*`` names).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .common.errors import ConfigError
from .config_check import check_keywords, signature_of
from .targets import get_obj_from_str


def _as_dict(node: Any) -> dict:
    if isinstance(node, Mapping):
        return dict(node)
    # OmegaConf DictConfig is a Mapping; anything else is a user error.
    raise ConfigError(f"expected a config mapping with a 'target' key, got {type(node).__name__}: {node!r}")


def instantiate_from_config(config: Any, **overrides: Any) -> Any:
    """Build ``target(**params, **overrides)`` from a config mapping.

    Args:
        config: mapping (dict or OmegaConf) with ``target`` and optional ``params``.
        overrides: keyword arguments that take precedence over ``params``.

    Raises:
        ConfigError: if ``target`` is missing or cannot be imported, or ``params`` has a key that
            ``target`` does not take (named, with the closest one it takes; see
            :mod:`sgm.config_check`) instead of the constructor's ``TypeError``.
    """
    node = _as_dict(config)
    if "target" not in node:
        raise ConfigError(f"config node has no 'target' key (keys: {sorted(node)})")
    target = node["target"]
    params = node.get("params") or {}
    params = _to_container(params)
    params.update(overrides)
    cls = get_obj_from_str(target)
    check_keywords(signature_of(cls), params, "params", check_types=False)
    return cls(**params)


def _to_container(params: Any) -> dict:
    """Turn an OmegaConf node into plain Python containers (a no-op for dicts)."""
    try:
        from omegaconf import DictConfig, OmegaConf
    except ImportError:  # omegaconf is a hard dependency, but keep dict configs usable without it
        return dict(params)
    if isinstance(params, DictConfig):
        return OmegaConf.to_container(params, resolve=True)
    return dict(params)


def append_dims(x: torch.Tensor, target_ndim: int) -> torch.Tensor:
    """Append trailing singleton dims to ``x`` until it has ``target_ndim`` dims."""
    missing = target_ndim - x.ndim
    if missing < 0:
        raise ValueError(f"tensor has {x.ndim} dims, more than the target {target_ndim}")
    return x[(...,) + (None,) * missing]

