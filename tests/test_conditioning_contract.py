"""The conditioning contract is checked when a model is built: a config whose embedders and UNet
disagree gets a ConfigError naming the YAML keys, before any weight is made (it used to fail
inside the first forward pass)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from sgm.config import build_model, load_config
from sgm.models.contract import check_conditioning
from sgm.util import ConfigError

TINY_V01 = ROOT / "configs" / "tiny-train-v01.yaml"
TINY_V02 = ROOT / "configs" / "tiny-train-v02.yaml"
NETWORK = "model.params.network_config.params"


@pytest.mark.parametrize("name", ["tiny-train-v01.yaml", "tiny-train-v02.yaml", "demo-v01.yaml", "demo-v02.yaml",
                                  "train-v01.yaml", "train-v02.yaml"])
def test_shipped_configs_keep_the_contract(name):
    check_conditioning(load_config(ROOT / "configs" / name))  # the inference configs: test_model_manifest


def refused(config, overrides=()) -> str:
    """The ConfigError message of ``config`` (a config, or a file loaded with ``overrides``)."""
    with pytest.raises(ConfigError) as info:
        check_conditioning(load_config(config, overrides) if isinstance(config, Path) else config)
    return str(info.value)


@pytest.mark.parametrize("config, override, expected", [
    # stage 1's vector: aesthetic 256 + elevation 256 + cond_aug 256
    (TINY_V01, f"{NETWORK}.adm_in_channels=512",
     [f"{NETWORK}.adm_in_channels is 512", "a vector of 768", "AesEmbedder ('video'): 256"]),
    # stage 2's vector: elevation 256 + cond_aug 256 (no aesthetic score)
    (TINY_V02, f"{NETWORK}.adm_in_channels=768", ["adm_in_channels is 768", "a vector of 512"]),
    # stage 2: noisy latent 4 + depth 9 + condition latent 4 = 17
    (TINY_V02, f"{NETWORK}.in_channels=8", [f"{NETWORK}.in_channels is 8",
                                            "13 concat channels, 17 with the noisy latent's 4",
                                            "DepthEmbedder ('cond_frames'): 9"]),
    (TINY_V01, f"{NETWORK}.context_dim=32", [f"{NETWORK}.context_dim is 32", "width 64"]),
    (TINY_V01, "model.params.sampler_config.params.guider_config.params.num_frames=8",
     ["guider_config.params.num_frames is 8", "model.params.num_samples is 16"]),
    (TINY_V02, "model.params.loss_fn_config.params.num_frames=14",
     ["loss_fn_config.params.num_frames is 14", "num_samples is 16"]),
], ids=["stage1-vector", "stage2-vector", "concat-channels", "crossattn-width", "guider-frames", "loss-frames"])
def test_a_disagreeing_yaml_key_is_named(config, override, expected):
    message = refused(config, [override])
    assert all(part in message for part in expected), message


def test_embedder_reading_a_key_the_stage_does_not_make():
    config = load_config(TINY_V01)
    config.model.params.conditioner_config.params.emb_models[2].input_key = "elevations"
    message = refused(config)
    assert "emb_models[2].input_key is 'elevations'" in message and "'elevation'" in message


def test_unconditional_keys_must_be_read_by_an_embedder():
    config = load_config(TINY_V01)
    config.model.params.conditioner_config.params.emb_models[3].input_key = "video"  # nobody reads cond_frames
    assert "zeroes ['cond_frames']" in refused(config)


def test_build_model_refuses_before_building():
    config = load_config(TINY_V01, [f"{NETWORK}.adm_in_channels=100"])
    with pytest.raises(ConfigError, match="adm_in_channels is 100"), torch.device("meta"):
        build_model(config)


def test_trainer_names_the_key_and_exits_2(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "train_ddp_spawn.py"), "--base", str(TINY_V01), "--train",
                             "True", "--logdir", str(tmp_path / "logs"), f"{NETWORK}.in_channels=5"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"{NETWORK}.in_channels is 5" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "logs").exists()
