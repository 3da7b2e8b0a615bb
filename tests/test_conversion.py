"""SVD -> stage-2 weight surgery: pure functions and the tool on tiny models."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sgm.checkpoint import load_checkpoint
from sgm.cli import run_main
from sgm.common.errors import OutputExistsError
from sgm.config import build_model, load_config
from sgm.conversion import (
    INPUT_CONV_KEY,
    LABEL_EMB_KEY,
    ConversionError,
    convert_svd_state_dict,
    insert_input_channels,
    widen_vector_columns,
)

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tool_make_init_svd_to_vid2vid.py"
TINY_V01 = ROOT / "configs" / "tiny-train-v01.yaml"
TINY_V02 = ROOT / "configs" / "tiny-train-v02.yaml"
AESTHETIC_PREFIX = "conditioner.embedders.1."   # stage 1's aesthetic embedder: SVD has no such weights
DEPTH_PREFIX = "conditioner.embedders.2."       # stage 2's MiDaS: not in SVD
ENCODER_PREFIX = "conditioner.embedders.3."     # the condition frames' VAE encoder: in SVD


def _tool():
    spec = importlib.util.spec_from_file_location("tool_make_init_svd_to_vid2vid", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_tool(input_path: Path, output_path: Path, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """Run the tool as its command line does (``run_main``): (exit code, stderr)."""
    args = ["--input", str(input_path), "--output", str(output_path), "--config", str(TINY_V02),
            "--random_pretrained_encoders"]
    with pytest.raises(SystemExit) as info:
        run_main(lambda: _tool().main(args))
    return info.value.code, capsys.readouterr().err


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


def test_missing_svd_keys_are_an_error_except_under_the_not_in_svd_prefixes():
    target = {"unet.weight": torch.zeros(2), "vae.weight": torch.zeros(3), "midas.weight": torch.ones(4)}
    state, report = convert_svd_state_dict({"unet.weight": torch.ones(2), "vae.weight": torch.ones(3)}, target,
                                           1, 1, not_in_svd=["midas."])
    assert report.added == ["midas.weight"] and torch.equal(state["midas.weight"], torch.ones(4))
    with pytest.raises(ConversionError, match=r"lacks 1 of the 2 .*: vae\.weight$"):
        convert_svd_state_dict({"unet.weight": torch.ones(2)}, target, 1, 1, not_in_svd=["midas."])


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
    assert f"added (not in SVD, kept from the model as built): {len(added)}" in report


def test_tool_refuses_to_overwrite(tiny_svd, tmp_path: Path):
    svd_path, _ = tiny_svd
    out = tmp_path / "exists.safetensors"
    out.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError, match="exists"):
        _tool().main(["--input", str(svd_path), "--output", str(out), "--config", str(TINY_V02),
                      "--random_pretrained_encoders"])
    assert out.read_bytes() == b"keep me"


def test_tool_refuses_an_input_sharing_no_key_with_the_model(tmp_path: Path, capsys: pytest.CaptureFixture):
    unrelated = tmp_path / "unrelated.safetensors"
    save_file({"encoder.layer.weight": torch.zeros(3, 3)}, str(unrelated))
    out = tmp_path / "out" / "vid2vid.safetensors"
    code, err = _run_tool(unrelated, out, capsys)
    assert code == 2 and "Traceback" not in err
    assert f"cannot convert {unrelated}" in err and "shares no key with the model" in err
    assert "model.diffusion_model.time_embed.0.weight" in err and "input's with encoder.layer" in err
    assert "Nothing was written" in err and not out.parent.exists()


def test_tool_refuses_an_input_lacking_part_of_svd(tiny_svd, tmp_path: Path, capsys: pytest.CaptureFixture):
    _, svd = tiny_svd
    partial_svd = tmp_path / "no_encoder.safetensors"
    save_file({k: v for k, v in svd.items() if not k.startswith(ENCODER_PREFIX)}, str(partial_svd))
    out = tmp_path / "vid2vid.safetensors"
    code, err = _run_tool(partial_svd, out, capsys)
    missing = sum(k.startswith(ENCODER_PREFIX) for k in svd)
    assert code == 2 and "Traceback" not in err and not out.exists()
    assert f"the input lacks {missing} of the" in err and ENCODER_PREFIX in err and "shares no key" not in err


def test_tool_names_a_garbage_input(tmp_path: Path, capsys: pytest.CaptureFixture):
    garbage = tmp_path / "svd.safetensors"
    garbage.write_bytes(b"not a checkpoint, just text " * 40)
    out = tmp_path / "vid2vid.safetensors"
    code, err = _run_tool(garbage, out, capsys)
    assert code == 2 and "Traceback" not in err and not out.exists()
    assert f"cannot read {garbage} as a .safetensors checkpoint" in err and "header" in err


def test_tool_never_replaces_an_output_that_appears_while_converting(tiny_svd, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch):
    svd_path, _ = tiny_svd
    out = tmp_path / "vid2vid.safetensors"
    tool = _tool()
    real_build = tool.build_model

    def build_while_another_run_writes(*args, **kwargs):  # another run finishes first
        out.write_bytes(b"another run's result")
        return real_build(*args, **kwargs)

    monkeypatch.setattr(tool, "build_model", build_while_another_run_writes)
    with pytest.raises(OutputExistsError, match="appeared while converting"):
        tool.main(["--input", str(svd_path), "--output", str(out), "--config", str(TINY_V02),
                   "--random_pretrained_encoders"])
    assert out.read_bytes() == b"another run's result"
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no partial file left beside it
