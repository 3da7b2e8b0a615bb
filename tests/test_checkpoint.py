"""Checkpoint layouts (.safetensors, Lightning .ckpt, DeepSpeed .pt) and strict loading."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

from sgm.checkpoint import load_checkpoint, read_state_dict
from sgm.common.errors import CheckpointError
from sgm.models.autoencoder import AutoencoderKL

TINY_DDCONFIG = {"double_z": True, "z_channels": 4, "resolution": 16, "in_channels": 3, "out_ch": 3, "ch": 32,
                 "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}


def tiny_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return AutoencoderKL(embed_dim=4, ddconfig=TINY_DDCONFIG)


def save_in_layout(state: dict, path, layout: str) -> None:
    if layout == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif layout == "lightning":
        torch.save({"state_dict": state, "epoch": 3, "global_step": 120}, path)
    elif layout == "deepspeed":  # model-states file: weights behind a "module." prefix, stored in fp16
        torch.save({"module": {f"module.{k}": v.half() for k, v in state.items()}, "buffer_names": []}, path)
    elif layout == "plain":
        torch.save(state, path)


@pytest.mark.parametrize(
    "layout, suffix", [("safetensors", ".safetensors"), ("lightning", ".ckpt"), ("deepspeed", ".pt"), ("plain", ".pt"), ("plain", ".bin")]
)
def test_each_layout_loads_back_strictly(tmp_path, layout, suffix):
    source = tiny_model(0)
    path = tmp_path / f"model{suffix}"
    save_in_layout(source.state_dict(), path, layout)
    target = tiny_model(1)
    report = load_checkpoint(target, path)
    assert report.ok
    tolerance = 1e-3 if layout == "deepspeed" else 0.0  # fp16 storage
    for key, value in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[key], value, rtol=0, atol=tolerance * max(1.0, value.abs().max().item()))
        assert target.state_dict()[key].dtype == torch.float32  # cast to the model's dtype


def test_deepspeed_prefix_is_stripped(tmp_path):
    path = tmp_path / "first_stage.pt"
    save_in_layout({"a.weight": torch.ones(2)}, path, "deepspeed")
    assert list(read_state_dict(path)) == ["a.weight"]


def test_wrong_shape_and_missing_keys_are_named(tmp_path):
    state = tiny_model(0).state_dict()
    state["quant_conv.weight"] = torch.zeros(8, 8, 3, 3)
    del state["decoder.conv_out.bias"]
    state["extra.thing"] = torch.zeros(1)
    path = tmp_path / "bad.safetensors"
    save_in_layout(state, path, "safetensors")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tiny_model(1), path)
    message = str(info.value)
    assert "quant_conv.weight" in message and "(8, 8, 3, 3)" in message
    assert "decoder.conv_out.bias" in message
    assert "extra.thing" in message
    assert str(path) in message


def test_partial_load_must_be_explicit(tmp_path):
    source = tiny_model(0)
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("decoder.")}
    path = tmp_path / "encoder_only.safetensors"
    save_in_layout(state, path, "safetensors")
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(tiny_model(1), path)
    target = tiny_model(1)
    decoder_before = target.decoder.conv_out.weight.clone()
    load_checkpoint(target, path, allow_missing=["decoder."])
    torch.testing.assert_close(target.encoder.conv_in.weight, source.encoder.conv_in.weight)
    torch.testing.assert_close(target.decoder.conv_out.weight, decoder_before)  # kept as built


def test_unreadable_and_unknown_files_get_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.pt"):
        read_state_dict(tmp_path / "nothere.pt")
    odd = tmp_path / "weights.npz"
    odd.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unknown checkpoint suffix"):
        read_state_dict(odd)
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="junk.ckpt"):
        read_state_dict(junk)


class Payload:
    """An arbitrary Python object: unpickling it needs code execution."""


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "obj": Payload()}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        read_state_dict(path)
