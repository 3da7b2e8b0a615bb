"""Config resolution and small tensor helpers shared by the whole package.

A config node is a mapping ``{"target": "dotted.path.Class", "params": {...}}``;
:func:`instantiate_from_config` builds ``Class(**params)``. The official Hi3D YAMLs
name a few classes under ``vtdm.*``; those names resolve through :data:`TARGET_ALIASES`
so the official files load unchanged.
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import torch

# Official ``vtdm.*`` target -> our class path. This is the single place where the
# official names are mapped; every other target must already be importable as written.
TARGET_ALIASES: dict[str, str] = {
    "vtdm.vtdm_gen_v01.VideoLDM": "sgm.models.hi3d.Stage1VideoLDM",
    "vtdm.vtdm_gen_stage2_degradeImage.VideoLDM": "sgm.models.hi3d.Stage2VideoLDM",
    "vtdm.encoders.AesEmbedder": "sgm.modules.encoders.aesthetic.AesEmbedder",
    "vtdm.encoders.DepthEmbedder": "sgm.modules.encoders.depth.DepthEmbedder",
    "vtdm.callbacks.ImageLogger": "sgm.callbacks.ImageLogger",
}

class ConfigError(ValueError):
    """A config node is malformed or names something that cannot be imported."""


def resolve_target(target: str) -> str:
    """Map an official ``vtdm.*`` name to ours; other names are returned unchanged."""
    return TARGET_ALIASES.get(target, target)


def get_obj_from_str(path: str) -> Any:
    """Import ``package.module.Name`` and return ``Name``.

    Raises:
        ConfigError: naming the path and what failed (module import or attribute).
    """
    path = resolve_target(path)
    module_name, _, attr = path.rpartition(".")
    if not module_name:
        raise ConfigError(f"config target {path!r} is not a dotted path 'module.Name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"config target {path!r}: cannot import module {module_name!r} ({err})") from err
    try:
        return getattr(module, attr)
    except AttributeError as err:
        raise ConfigError(f"config target {path!r}: module {module_name!r} has no attribute {attr!r}") from err


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
    from .config_check import check_keywords, signature_of  # late: sgm.config_check imports this module

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

