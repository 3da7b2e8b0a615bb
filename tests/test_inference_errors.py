"""Expected failures of the inference CLIs and API (issue 17): each is a named error with exit
code 2 and no traceback, raised before anything is written, and a failed run leaves the output
folder as it was. Tiny demo configs on the CPU; most cases stop before a model is built.

Names added by the fix (the staging module, NonFiniteOutputError) are imported inside the tests
that need them, so that every test here runs, and fails for its own reason, on the code before it.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, digest_tree
from PIL import Image
from safetensors.torch import save_file

import sgm.pipelines.hi3d as hi3d
from sgm.cli import run_main
from sgm.common.errors import CheckpointError, UsageError
from sgm.common.images import InputImageError, read_image
from sgm.pipelines.hi3d import Hi3DPipeline
from sgm.pipelines.loading import ModelSpec, load_stage_model

STEPS = 1
IMAGE_A = ROOT / "demo" / "object_a_elev10.png"
IMAGE_B = ROOT / "demo" / "object_b_elev20.png"
CPU = torch.device("cpu")


def load_script(relative: str):
    """A command-line script of the repository as a module (its ``main(argv)`` runs in-process)."""
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


STAGE1_CLI = load_script("pipeline_i2v_eval_v01.py")
STAGE2_CLI = load_script("pipeline_i2v_eval_v02.py")


def run_cli(script, argv: list[str], capsys) -> tuple[int, str]:
    """(exit code, stderr) of ``script.main(argv)`` under :func:`sgm.cli.run_main`, as ``python script`` runs it.

    Exceptions that are not user errors propagate (a traceback fails the test)."""
    try:
        run_main(lambda: script.main([str(arg) for arg in argv]))
        code = 0
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def stage1_run(pipe, tmp_path_factory) -> Path:
    """A finished stage-1 run on IMAGE_A (do not modify: copy it)."""
    out = tmp_path_factory.mktemp("stage1") / "a"
    pipe.run_orbit(IMAGE_A, out, elevation_deg=10, seed=1, num_steps=STEPS)
    return out


@pytest.fixture
def stage1_copy(stage1_run, tmp_path) -> Path:
    out = tmp_path / "a"
    shutil.copytree(stage1_run, out)
    return out


@pytest.fixture(scope="module")
def demo1_state(configs) -> dict[str, torch.Tensor]:
    model, _ = load_stage_model(ModelSpec(configs[0]), CPU, torch.float32)
    return {key: value.detach().clone().contiguous() for key, value in model.state_dict().items()}


def stage1_args(configs, out, *extra, image=IMAGE_A) -> list:
    return ["--denoise_config", configs[0], "--image_path", image, "--output_dir", out, "--num_steps", STEPS,
            "--device", "cpu", *extra]


def stage2_args(configs, out, *extra) -> list:
    return ["--denoise_config", configs[1], "--output_dir", out, "--num_steps", STEPS, "--device", "cpu", *extra]


# --- settings: refused before anything is read, built or written -------------------------------------------------

def test_nan_elevation_exits_2_before_writing(configs, tmp_path, capsys):
    code, err = run_cli(STAGE1_CLI, stage1_args(configs, tmp_path / "out", "--elevation", "nan"), capsys)
    assert code == 2 and "--elevation" in err and "finite" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_infinite_elevation_is_refused(pipe, tmp_path):
    with pytest.raises(UsageError, match=r"elevation_deg \(--elevation\) must be a finite number"):
        pipe.run_orbit(IMAGE_A, tmp_path / "out", elevation_deg=math.inf, num_steps=STEPS)
    assert not (tmp_path / "out").exists()


def test_nan_min_guidance_is_refused(pipe, tmp_path):
    with pytest.raises(UsageError, match=r"min_cfg \(--min_cfg\) must be a finite number, got nan"):
        pipe.run_orbit(IMAGE_A, tmp_path / "out", min_cfg=math.nan, num_steps=STEPS)
    assert not (tmp_path / "out").exists()


def test_infinite_max_guidance_is_refused(pipe, tmp_path):
    with pytest.raises(UsageError, match=r"max_cfg \(--max_cfg\) must be a finite number, got inf"):
        pipe.run_orbit(IMAGE_A, tmp_path / "out", max_cfg=math.inf, num_steps=STEPS)
    assert not (tmp_path / "out").exists()


def test_elevation_outside_the_trained_range_is_warned_about(pipe, tmp_path, caplog):
    # the missing image stops the run right after the settings are checked
    with caplog.at_level(logging.WARNING), pytest.raises(InputImageError):
        pipe.run_orbit(tmp_path / "none.png", tmp_path / "out", elevation_deg=60, num_steps=STEPS)
    assert any("elevation 60" in r.getMessage() and "-10 to 40 degrees" in r.getMessage() for r in caplog.records)


def test_seed_beyond_64_bits_exits_2_and_leaves_nothing(configs, tmp_path, capsys):
    code, err = run_cli(STAGE1_CLI, stage1_args(configs, tmp_path / "out", "--seed", 2**64), capsys)
    assert code == 2 and "--seed" in err and "18446744073709551615" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # today a traceback left temp_image/ behind


def test_negative_seed_is_refused(pipe, tmp_path):
    with pytest.raises(UsageError, match=r"seed \(--seed\) must be an integer in 0\.\.18446744073709551615"):
        pipe.run_orbit(IMAGE_A, tmp_path / "out", seed=-1, num_steps=STEPS)
    assert not (tmp_path / "out").exists()


# --- input images ----------------------------------------------------------------------------------------------

def test_fully_transparent_image_is_refused(pipe, tmp_path):
    path = tmp_path / "empty.png"
    Image.new("RGBA", (96, 96), (200, 10, 10, 0)).save(path)
    with pytest.raises(InputImageError, match=r"empty\.png is fully transparent"):
        pipe.run_orbit(path, tmp_path / "out", num_steps=STEPS)
    assert not (tmp_path / "out").exists()


def test_16bit_greyscale_png_keeps_its_grey_levels(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 128).round().astype(np.uint16), (64, 1))  # 128 levels, left to right
    path = tmp_path / "grey16.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")  # what Pillow makes of a 16-bit greyscale PNG
    pixels = np.asarray(read_image(path))
    assert pixels.shape == (64, 128, 3)
    np.testing.assert_array_equal(pixels[0, :, 0], np.rint(ramp[0] / 257).astype(np.uint8))
    assert len(np.unique(pixels)) > 100  # today: 2 levels (0 and 255)


def test_unreadable_image_fails_before_any_model_is_built(configs, tmp_path, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was built before the input image was checked")

    monkeypatch.setattr(hi3d, "load_stage_model", no_model)
    fake = tmp_path / "photo.png"
    fake.write_bytes(b"not an image")
    with pytest.raises(InputImageError, match="photo.png"):
        Hi3DPipeline.from_configs(*configs, device="cpu").run_orbit(fake, tmp_path / "out", num_steps=STEPS)


# --- output folder and checkpoints ------------------------------------------------------------------------------

def test_output_dir_under_a_file_exits_2(configs, tmp_path, capsys):
    (tmp_path / "file").write_text("a file")
    code, err = run_cli(STAGE1_CLI, stage1_args(configs, tmp_path / "file" / "out"), capsys)
    assert code == 2 and f"{tmp_path / 'file'} is a file" in err and "Traceback" not in err


def test_output_dir_without_write_permission_exits_2(configs, tmp_path, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    # root ignores permission bits, so the denial is simulated where the check asks for it
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: Path(path) != locked and real_access(path, mode, **kw))
    code, err = run_cli(STAGE1_CLI, stage1_args(configs, locked / "out"), capsys)
    assert code == 2 and f"no permission to write in {locked}" in err and "Traceback" not in err
    assert not (locked / "out").exists()


def test_garbage_safetensors_checkpoint_is_a_checkpoint_error(configs, tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x00 this is not a safetensors file " * 8)
    with pytest.raises(CheckpointError, match=r"broken\.safetensors"):
        load_stage_model(ModelSpec(configs[0], path), CPU, torch.float32)


def test_checkpoint_with_a_nan_weight_is_refused(configs, demo1_state, tmp_path):
    state = dict(demo1_state)
    state["model.diffusion_model.out.2.weight"] = state["model.diffusion_model.out.2.weight"].clone()
    state["model.diffusion_model.out.2.weight"][0] = math.nan
    path = tmp_path / "nan.safetensors"
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match=r"nan\.safetensors.*NaN or inf.*model\.diffusion_model\.out\.2\.weight"):
        load_stage_model(ModelSpec(configs[0], path), CPU, torch.float32)


def test_non_finite_frames_stop_the_run_and_write_nothing(pipe, tmp_path, monkeypatch):
    from sgm.common.errors import NonFiniteOutputError

    monkeypatch.setattr(hi3d, "generate_orbit",
                        lambda model, image, *args, **kwargs: torch.full((16, *image.shape), math.nan))
    with pytest.raises(NonFiniteOutputError, match="stage 1"):
        pipe.run_orbit(IMAGE_A, tmp_path / "out", num_steps=STEPS)
    assert not (tmp_path / "out").exists()  # today: black frames written, exit 0


# --- atomic overwrite and the stage-1 record ----------------------------------------------------------------------

@pytest.mark.parametrize("sampler, run", [
    # today white.png was replaced, first.mp4 kept
    ("generate_orbit", lambda pipe, out: pipe.run_orbit(IMAGE_B, out, num_steps=STEPS, overwrite=True)),
    # a two-stage overwrite whose stage 2 fails: today stage 1 was replaced by image B's orbit
    ("refine_orbit", lambda pipe, out: pipe(IMAGE_B, out, num_steps=STEPS, overwrite=True)),
], ids=["stage1", "stage2-of-two"])
def test_failed_overwrite_keeps_the_earlier_results(pipe, stage1_copy, monkeypatch, sampler, run):
    before = digest_tree(stage1_copy)

    def fail(*args, **kwargs):
        raise RuntimeError("simulated failure while sampling")

    monkeypatch.setattr(hi3d, sampler, fail)
    with pytest.raises(RuntimeError, match="simulated"):
        run(pipe, stage1_copy)
    assert digest_tree(stage1_copy) == before
    assert sorted(p.name for p in stage1_copy.iterdir()) == ["first_step", "temp_image"]  # no temporary folder left


def test_swap_failure_puts_the_earlier_results_back(stage1_copy, monkeypatch):
    from sgm.common.errors import OutputDirError
    from sgm.pipelines.staging import StagedOutput

    before = digest_tree(stage1_copy)
    real_replace, calls = os.replace, []

    def flaky_replace(src, dst):  # the third rename (second entry moved aside) fails
        calls.append(src)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    with pytest.raises(OutputDirError, match="No space left on device"):
        with StagedOutput(stage1_copy, overwrite=True) as folder:
            for name in ("first_step", "temp_image"):
                (folder / name).mkdir()
                (folder / name / "new.txt").write_text("new")
            monkeypatch.setattr(os, "replace", flaky_replace)
    assert digest_tree(stage1_copy) == before
    assert sorted(p.name for p in stage1_copy.iterdir()) == ["first_step", "temp_image"]


def test_stage1_overwrite_warns_that_the_kept_stage2_results_are_stale(pipe, stage1_copy, caplog):
    (stage1_copy / "second_step_video").mkdir()  # stands for stage-2 results made from the old orbit
    with caplog.at_level(logging.WARNING):
        pipe.run_orbit(IMAGE_B, stage1_copy, num_steps=STEPS, overwrite=True)
    assert any("second_step_video holds results made from earlier stage-1 outputs" in r.getMessage()
               for r in caplog.records)


def test_stage1_records_its_input_hash_and_settings(stage1_run):
    from sgm.pipelines.records import file_sha256, image_sha256

    record = json.loads((stage1_run / "first_step" / "run.json").read_text())
    assert record["input"] == {"path": str(IMAGE_A), "image_sha256": image_sha256(read_image(IMAGE_A))}
    assert record["settings"] == {"elevation_deg": 10.0, "seed": 1, "num_steps": STEPS, "min_cfg": None,
                                  "max_cfg": None}
    assert record["outputs"]["first_step/first.mp4"] == file_sha256(stage1_run / "first_step" / "first.mp4")


def test_stage2_refuses_stage1_outputs_of_another_image(configs, stage1_copy, capsys):
    code, err = run_cli(STAGE2_CLI, stage2_args(configs, stage1_copy, "--image_path", IMAGE_B), capsys)
    assert code == 2 and "object_b_elev20.png is not the image" in err and "object_a_elev10.png" in err
    assert not (stage1_copy / "second_step_video").exists()


def test_stage2_image_path_that_does_not_exist_exits_2(configs, stage1_copy, tmp_path, capsys):
    code, err = run_cli(STAGE2_CLI, stage2_args(configs, stage1_copy, "--image_path", tmp_path / "none.png"), capsys)
    assert code == 2 and "input image not found" in err and "none.png" in err  # today silently ignored
    assert not (stage1_copy / "second_step_video").exists()


def test_stage2_refuses_a_mismatched_white_and_first_pair(pipe, stage1_copy):
    Image.open(IMAGE_B).convert("RGB").save(stage1_copy / "temp_image" / "white.png")
    with pytest.raises(UsageError, match=r"white\.png is not the file that stage 1 recorded"):
        pipe.run_refine(stage1_copy, num_steps=STEPS)
    assert not (stage1_copy / "second_step_video").exists()


# --- end to end: the exit code of a real process ------------------------------------------------------------------

def test_run_hi3d_nan_elevation_exits_2_without_a_traceback(configs, tmp_path):
    command = [sys.executable, "scripts/run_hi3d.py", "--stage1_config", str(configs[0]), "--stage2_config",
               str(configs[1]), "--image_path", str(IMAGE_A), "--output_dir", str(tmp_path / "out"),
               "--num_steps", str(STEPS), "--device", "cpu", "--elevation", "nan"]
    done = subprocess.run(command, cwd=ROOT, env=dict(os.environ, PYTHONWARNINGS="ignore"), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "error: elevation_deg (--elevation) must be a finite number" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()
