"""SVD -> stage-2 weight surgery: pure functions and the tool on tiny models."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sgm.checkpoint import load_checkpoint
from sgm.config import build_model, load_config
from sgm.conversion import (
    INPUT_CONV_KEY,
    LABEL_EMB_KEY,
    ConversionError,
    convert_svd_state_dict,
    insert_input_channels,
    widen_vector_columns,
)
from sgm.pipelines.outputs import OutputExistsError

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tool_make_init_svd_to_vid2vid.py"
TINY_V01 = ROOT / "configs" / "tiny-train-v01.yaml"
TINY_V02 = ROOT / "configs" / "tiny-train-v02.yaml"
AESTHETIC_PREFIX = "conditioner.embedders.1."   # stage 1's aesthetic embedder: SVD has no such weights
DEPTH_PREFIX = "conditioner.embedders.2."       # stage 2's MiDaS: not in SVD


def _tool():
    spec = importlib.util.spec_from_file_location("tool_make_init_svd_to_vid2vid", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_widen_vector_columns_rule():
    svd = torch.arange(2 * 9, dtype=torch.float32).reshape(2, 9)  # 3 slots of width 3
    new = widen_vector_columns(svd, torch.Size([2, 7]), kept_columns=3)
    assert new.shape == (2, 7)
    assert torch.all(new[:, :4] == 0)
    assert torch.equal(new[:, 4:], svd[:, 6:])
    with pytest.raises(ConversionError, match="cannot keep"):
        widen_vector_columns(svd, torch.Size([2, 7]), kept_columns=8)


def test_insert_input_channels_rule():
    svd = torch.randn(6, 5, 3, 3)
    new = insert_input_channels(svd, torch.Size([6, 9, 3, 3]), noisy_channels=2)
    assert new.shape == (6, 9, 3, 3)
    assert torch.equal(new[:, :2], svd[:, :2])
    assert torch.all(new[:, 2:6] == 0)
    assert torch.equal(new[:, 6:], svd[:, 2:])
    with pytest.raises(ConversionError, match="does not fit"):
        insert_input_channels(svd, torch.Size([7, 9, 3, 3]), noisy_channels=2)


def test_other_shape_clash_is_an_error():
    with pytest.raises(ConversionError, match="a.weight"):
        convert_svd_state_dict({"a.weight": torch.zeros(2, 3)}, {"a.weight": torch.zeros(2, 4)}, 1, 1)


@pytest.fixture(scope="module")
def tiny_svd(tmp_path_factory) -> tuple[Path, dict]:
    """An SVD-layout file from the tiny stage-1 model: its keys minus the aesthetic embedder."""
    torch.manual_seed(0)
    stage1 = build_model(load_config(TINY_V01))
    state = {k: v.clone() for k, v in stage1.state_dict().items() if not k.startswith(AESTHETIC_PREFIX)}
    path = tmp_path_factory.mktemp("svd") / "tiny_svd.safetensors"
    save_file(state, str(path))
    return path, state


def test_tool_converts_tiny_svd(tiny_svd, tmp_path: Path, capsys: pytest.CaptureFixture):
    svd_path, svd = tiny_svd
    out = tmp_path / "tiny_vid2vid.safetensors"
    _tool().main(["--input", str(svd_path), "--output", str(out), "--config", str(TINY_V02),
                  "--random_pretrained_encoders"])
    report = capsys.readouterr().out
    assert "changed (widened): 2" in report and LABEL_EMB_KEY in report and INPUT_CONV_KEY in report
    converted = load_file(str(out))

    stage2 = build_model(load_config(TINY_V02, ["model.params.ckpt_path=null"]))
    load_checkpoint(stage2, out)  # strict: every key, every shape
    assert set(converted) == set(stage2.state_dict())

    label, svd_label = converted[LABEL_EMB_KEY], svd[LABEL_EMB_KEY]
    assert svd_label.shape[1] == 768 and label.shape[1] == 512
    assert torch.all(label[:, :256] == 0)
    assert torch.equal(label[:, 256:], svd_label[:, 512:768])
    conv, svd_conv = converted[INPUT_CONV_KEY], svd[INPUT_CONV_KEY]
    assert svd_conv.shape[1] == 8 and conv.shape[1] == 17
    assert torch.equal(conv[:, :4], svd_conv[:, :4])
    assert torch.all(conv[:, 4:13] == 0)
    assert torch.equal(conv[:, 13:], svd_conv[:, 4:])

    added = [k for k in converted if k not in svd]
    assert added and all(k.startswith(DEPTH_PREFIX) for k in added)
    for key in converted:
        if key in svd and key not in (LABEL_EMB_KEY, INPUT_CONV_KEY):
            assert torch.equal(converted[key], svd[key]), key
    assert f"added (not in SVD, from fresh init): {len(added)}" in report


def test_tool_refuses_to_overwrite(tiny_svd, tmp_path: Path):
    svd_path, _ = tiny_svd
    out = tmp_path / "exists.safetensors"
    out.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError, match="exists"):
        _tool().main(["--input", str(svd_path), "--output", str(out), "--config", str(TINY_V02),
                      "--random_pretrained_encoders"])
    assert out.read_bytes() == b"keep me"
