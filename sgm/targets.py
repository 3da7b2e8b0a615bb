"""Config targets: the dotted class path of a config node, resolved to the class.

The official Hi3D YAMLs name a few classes under ``vtdm.*``; those names resolve through
:data:`TARGET_ALIASES` so the official files load unchanged.
"""
from __future__ import annotations

import importlib
from typing import Any

from .common.errors import ConfigError

# Official ``vtdm.*`` target -> our class path. This is the single place where the
# official names are mapped; every other target must already be importable as written.
TARGET_ALIASES: dict[str, str] = {
    "vtdm.vtdm_gen_v01.VideoLDM": "sgm.models.hi3d.Stage1VideoLDM",
    "vtdm.vtdm_gen_stage2_degradeImage.VideoLDM": "sgm.models.hi3d.Stage2VideoLDM",
    "vtdm.encoders.AesEmbedder": "sgm.modules.encoders.aesthetic.AesEmbedder",
    "vtdm.encoders.DepthEmbedder": "sgm.modules.encoders.depth.DepthEmbedder",
    "vtdm.callbacks.ImageLogger": "sgm.callbacks.ImageLogger",
}


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
