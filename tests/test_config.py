"""Config target resolution, including the official ``vtdm.*`` aliases."""
from __future__ import annotations

import pytest

from sgm.targets import TARGET_ALIASES, get_obj_from_str
from sgm.util import ConfigError, instantiate_from_config


def test_instantiate_passes_params_and_overrides():
    node = {"target": "sgm.modules.diffusionmodules.discretizer.EDMDiscretization", "params": {"sigma_max": 700.0}}
    obj = instantiate_from_config(node, rho=5.0)
    assert obj.sigma_max == 700.0 and obj.rho == 5.0


def test_omegaconf_nodes_are_accepted():
    omegaconf = pytest.importorskip("omegaconf")
    node = omegaconf.OmegaConf.create({"target": "sgm.modules.diffusionmodules.guiders.VanillaCFG",
                                       "params": {"scale": 2.0}})
    assert instantiate_from_config(node).scale == 2.0


@pytest.mark.parametrize(
    "node, message",
    [
        ({"params": {}}, "no 'target'"),
        ({"target": "NoDots"}, "not a dotted path"),
        ({"target": "sgm.no_such_module.Thing"}, "cannot import module 'sgm.no_such_module'"),
        ({"target": "sgm.util.NoSuchThing"}, "has no attribute 'NoSuchThing'"),
        ("not a mapping", "expected a config mapping"),
    ],
)
def test_bad_nodes_raise_readable_errors(node, message):
    with pytest.raises(ConfigError, match=message):
        instantiate_from_config(node)


def test_official_vtdm_targets_resolve_to_our_classes():
    for official, ours in TARGET_ALIASES.items():
        obj = get_obj_from_str(official)
        assert f"{obj.__module__}.{obj.__qualname__}" == ours
