"""Configs written once: a YAML file's top-level ``base:`` names the config it is an overlay on
(:func:`sgm.config.load_config`), and the tiny training configs are such overlays on the full ones."""
from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import ROOT
from sgm.config import load_config
from sgm.util import ConfigError

MODEL = {"target": "sgm.models.hi3d.Stage1VideoLDM", "params": {"a": 1}}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_an_overlay_merges_onto_its_base_relative_to_its_folder(tmp_path):
    write(tmp_path / "full" / "base.yaml", OmegaConf.to_yaml({"model": MODEL, "data": {"x": 1, "y": [1, 2]}}))
    base = write(tmp_path / "full" / "middle.yaml", "base: base.yaml\ndata: {x: 2}\n")
    top = write(tmp_path / "top.yaml", f"base: {base.relative_to(tmp_path)}\ndata: {{y: [3]}}\n")
    config = load_config(top)
    assert "base" not in config
    assert OmegaConf.to_container(config) == {"model": MODEL, "data": {"x": 2, "y": [3]}}  # lists are replaced


def test_integer_keys_change_items_of_the_bases_list(tmp_path):
    items = [{"key": "a", "params": {"n": 1, "m": 2}}, {"key": "b", "params": {"n": 3}}]
    write(tmp_path / "base.yaml", OmegaConf.to_yaml({"model": MODEL, "embedders": items}))
    top = write(tmp_path / "top.yaml", "base: base.yaml\nembedders:\n  1:\n    params: {n: 4}\n")
    assert OmegaConf.to_container(load_config(top).embedders) == [items[0], {"key": "b", "params": {"n": 4}}]
    write(tmp_path / "past.yaml", "base: base.yaml\nembedders: {2: {key: c}}\n")
    with pytest.raises(ConfigError, match=r"past.yaml.embedders: 2 is not an index of the base's list of 2 items"):
        load_config(tmp_path / "past.yaml")


def test_a_missing_base_is_named(tmp_path):
    top = write(tmp_path / "top.yaml", "base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"top.yaml: base config not found: .*nowhere.yaml"):
        load_config(top)
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "absent.yaml")


def test_a_cycle_of_bases_is_refused_with_its_chain(tmp_path):
    write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match=r"cyclic config bases: .*a.yaml -> .*b.yaml -> .*a.yaml"):
        load_config(tmp_path / "a.yaml")


def test_a_base_that_is_no_file_name_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="'base' must be the file name of another config"):
        load_config(write(tmp_path / "top.yaml", "base: [a.yaml]\n"))


@pytest.mark.parametrize("version", ["01", "02"])
def test_the_tiny_configs_keep_the_full_ones_training_setup(version):
    full = load_config(ROOT / "configs" / f"train-v{version}.yaml").model.params
    tiny = load_config(ROOT / "configs" / f"tiny-train-v{version}.yaml").model.params
    for node in ("denoiser_config", "loss_fn_config"):
        assert tiny[node] == full[node]
    assert tiny.sampler_config.params.guider_config == full.sampler_config.params.guider_config
    assert [e.target for e in tiny.conditioner_config.params.emb_models] == \
        [e.target for e in full.conditioner_config.params.emb_models]
    assert tiny.network_config.params.model_channels == 32 and tiny.ckpt_path is None
