"""Stage-1 and stage-2 inference end to end on the tiny demo configs, and every error path."""
from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, digest_tree, load_script, write_synthetic_stage2
from PIL import Image
from safetensors.torch import save_file

from sgm.cli import add_sampling_args, pipeline_options
from sgm.common.devices import resolve_device
from sgm.common.errors import CheckpointError, DeviceError, OutputExistsError, UsageError
from sgm.common.images import InputImageError, read_image, resize_and_center_crop
from sgm.common.video_io import read_mp4, write_mp4
from sgm.pipelines.background import load_rembg, remove_background
from sgm.pipelines.hi3d import Hi3DPipeline
from sgm.pipelines.compilation import resolve_compile
from sgm.pipelines.loading import ModelSpec, load_stage_model

STEPS = 2  # the flow is the same at any step count; 25 (the default) is exercised by the README demo
SIZE1, SIZE2 = 64, 128  # the sizes of conftest.small_demo_configs (the demo configs' own)


@pytest.fixture(scope="module")
def demo_configs(configs) -> tuple[Path, Path]:
    return configs


@pytest.fixture(scope="module")
def rgba_image(tmp_path_factory) -> Path:
    """A non-square RGBA object (transparent background)."""
    pixels = np.zeros((150, 190, 4), dtype=np.uint8)
    yy, xx = np.mgrid[:150, :190]
    inside = (yy - 75) ** 2 / 50**2 + (xx - 95) ** 2 / 70**2 < 1
    pixels[inside] = (200, 70, 40, 255)
    pixels[inside & (xx > 95)] = (40, 90, 210, 255)
    path = tmp_path_factory.mktemp("inputs") / "object.png"
    Image.fromarray(pixels, "RGBA").save(path)
    return path


@pytest.fixture(scope="module")
def finished_run(pipe, rgba_image, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "object"
    pipe(rgba_image, out, elevation_deg=10, seed=3, num_steps=STEPS)
    return out


def test_both_stages_write_the_official_layout(finished_run):
    out = finished_run
    white = Image.open(out / "temp_image" / "white.png")
    assert white.mode == "RGB" and white.size == (190, 150)
    assert np.all(np.asarray(white)[0, 0] == 255)  # transparent corner composited on white
    assert Image.open(out / "temp_image" / "rgba.png").mode == "RGBA"
    first = read_mp4(out / "first_step" / "first.mp4")
    assert first.shape == (16, SIZE1, SIZE1, 3)
    views = sorted((out / "first_step" / "views").glob("*.png"))
    assert len(views) == 16 and Image.open(views[0]).size == (SIZE1, SIZE1)
    assert Image.open(out / "first_step" / "contact_sheet.png").size == (8 * SIZE1, 2 * SIZE1)
    second = read_mp4(out / "second_step_video" / "second.mp4")
    assert second.shape == (16, SIZE2, SIZE2, 3)
    refined = sorted((out / "second_step_video" / "views").glob("*.png"))
    masks = sorted((out / "second_step_video" / "masks").glob("*.png"))
    assert len(refined) == 16 and len(masks) == 16
    assert Image.open(refined[5]).size == (SIZE2, SIZE2) and Image.open(masks[5]).mode == "L"


def test_same_seed_gives_byte_identical_outputs(demo_configs, finished_run, rgba_image, tmp_path):
    # a fresh pipeline (models built again) with the same seed reproduces every byte
    again = Hi3DPipeline.from_configs(*demo_configs, device="cpu")
    again(rgba_image, tmp_path / "object", elevation_deg=10, seed=3, num_steps=STEPS)
    assert digest_tree(tmp_path / "object") == digest_tree(finished_run)


def test_other_seed_or_elevation_changes_the_orbit(pipe, finished_run, rgba_image, tmp_path):
    reference = read_mp4(finished_run / "first_step" / "first.mp4")
    for name, elevation, seed in (("seed", 10, 4), ("elevation", 30, 3)):
        result = pipe.run_orbit(rgba_image, tmp_path / name, elevation_deg=elevation, seed=seed, num_steps=STEPS)
        assert not np.array_equal(result.pixels, reference), name


def test_existing_results_are_refused_then_overwritten_on_request(pipe, rgba_image, tmp_path):
    out = tmp_path / "object"
    pipe.run_orbit(rgba_image, out, seed=1, num_steps=STEPS)
    before = digest_tree(out)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        pipe.run_orbit(rgba_image, out, seed=2, num_steps=STEPS)
    assert digest_tree(out) == before  # nothing touched
    pipe.run_orbit(rgba_image, out, seed=2, num_steps=STEPS, overwrite=True)
    assert digest_tree(out) != before


def test_stage2_before_stage1_names_the_missing_files(pipe, tmp_path):
    with pytest.raises(FileNotFoundError, match="first.mp4"):
        pipe.run_refine(tmp_path / "empty", num_steps=STEPS)


def test_short_first_stage_video_is_refused(pipe, finished_run, tmp_path):
    out = tmp_path / "short"
    (out / "temp_image").mkdir(parents=True)
    Image.open(finished_run / "temp_image" / "white.png").save(out / "temp_image" / "white.png")
    write_mp4(read_mp4(finished_run / "first_step" / "first.mp4")[:8], out / "first_step" / "first.mp4")
    with pytest.raises(UsageError, match="8 frames"):
        pipe.run_refine(out, num_steps=STEPS)


def test_bad_images_are_refused(pipe, tmp_path):
    with pytest.raises(InputImageError, match="not found"):
        pipe.run_orbit(tmp_path / "nothere.png", tmp_path / "a")
    fake = tmp_path / "fake.png"
    fake.write_text("this is not an image")
    with pytest.raises(InputImageError, match="fake.png"):
        pipe.run_orbit(fake, tmp_path / "b")


def test_rgb_input_without_rembg_is_used_as_is_with_a_warning(tmp_path, caplog):
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (64, 64), (10, 200, 30)).save(path)
    load_rembg.cache_clear()  # the warning is given once per process
    with caplog.at_level(logging.WARNING):
        rgba = remove_background(read_image(path), use_rembg=True)
    assert rgba.mode == "RGBA" and np.all(np.asarray(rgba)[..., 3] == 255)
    assert any("rembg" in record.getMessage() for record in caplog.records)
    caplog.clear()
    remove_background(read_image(path), use_rembg=False)  # an explicit --no_rembg is not warned about
    assert not caplog.records


def test_missing_checkpoint_names_path_and_readme(demo_configs, tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_stage_model(ModelSpec(demo_configs[0], tmp_path / "first_stage.pt"), torch.device("cpu"), torch.float32)
    assert "first_stage.pt" in str(info.value) and "README" in str(info.value)


def test_checkpoint_of_the_other_stage_is_refused(demo_configs, tmp_path):
    demo1, demo2 = demo_configs
    stage2, _ = load_stage_model(ModelSpec(demo2), torch.device("cpu"), torch.float32)
    path = tmp_path / "second_stage.safetensors"
    save_file({k: v.contiguous() for k, v in stage2.state_dict().items()}, str(path))
    with pytest.raises(CheckpointError, match="input_blocks.0.0.weight"):
        load_stage_model(ModelSpec(demo1, path), torch.device("cpu"), torch.float32)


def test_init_functions_leave_this_threads_tensors_alone_in_the_block_only():
    import threading

    from sgm.pipelines.loading import weights_left_uninitialised

    original = torch.nn.init.kaiming_uniform_
    with weights_left_uninitialised():
        state = torch.random.get_rng_state()
        torch.nn.Linear(64, 64), torch.nn.Conv2d(4, 8, 3), torch.nn.GroupNorm(2, 8)
        assert torch.equal(torch.random.get_rng_state(), state)  # no initial weight was drawn
        elsewhere = []
        worker = threading.Thread(target=lambda: elsewhere.append(torch.nn.init.ones_(torch.zeros(3))))
        worker.start()
        worker.join()
        assert torch.equal(elsewhere[0], torch.ones(3))  # another thread still initialises
    assert torch.nn.init.kaiming_uniform_ is original
    state = torch.random.get_rng_state()
    torch.nn.Linear(4, 4)
    assert not torch.equal(torch.random.get_rng_state(), state)


def test_a_model_built_for_its_checkpoint_holds_the_files_weights_and_its_constructor_buffers(demo_configs):
    """load_stage_model builds without initial weights when a checkpoint replaces them: every persistent
    tensor is the file's, and the buffers constructors compute (the CLIP text mask) are as built normally."""
    from sgm.checkpoint import read_state_dict
    from sgm.config import build_model, load_config

    demo1 = demo_configs[0]
    model, checkpoint = load_stage_model(ModelSpec(demo1), torch.device("cpu"), torch.float32)
    weights = read_state_dict(checkpoint)
    state = model.state_dict()
    assert set(state) == set(weights)
    for key, value in weights.items():
        assert torch.equal(state[key], value.to(state[key].dtype)), key
    built = dict(build_model(load_config(demo1), random_pretrained_encoders=True).named_buffers())
    masks = {name: buffer for name, buffer in model.named_buffers() if name not in state}
    assert masks, "expected constructor-made (non-persistent) buffers"
    for name, buffer in masks.items():
        assert torch.equal(buffer, built[name]), name


def test_checkpoint_is_loaded_when_given(demo_configs, tmp_path):
    demo1 = demo_configs[0]
    model, _ = load_stage_model(ModelSpec(demo1), torch.device("cpu"), torch.float32)
    state = {k: (v + 1.0 if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    path = tmp_path / "shifted.safetensors"
    save_file(state, str(path))
    loaded, used = load_stage_model(ModelSpec(demo1, path), torch.device("cpu"), torch.float32)
    assert used == path
    torch.testing.assert_close(loaded.model.diffusion_model.out[2].weight, state["model.diffusion_model.out.2.weight"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised when CUDA is absent")
def test_cuda_requested_but_absent():
    with pytest.raises(DeviceError, match="CUDA is not available"):
        resolve_device("cuda")


def test_compile_defaults_to_the_background_on_cuda_except_in_low_memory_mode():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_compile("auto", cuda, low_memory=False) == "background"
    assert resolve_compile("auto", cuda, low_memory=True) == "off"
    assert resolve_compile("auto", cpu, low_memory=False) == "off"
    assert resolve_compile("on", cpu, low_memory=True) == "on" and resolve_compile("off", cuda, low_memory=False) == "off"
    assert resolve_compile("background", cpu, low_memory=False) == "background"
    assert resolve_compile(True, cpu, low_memory=False) == "on" and resolve_compile(False, cuda, low_memory=False) == "off"
    with pytest.raises(UsageError, match="compile must be one of"):
        resolve_compile("yes", cuda, low_memory=False)


def test_compile_flag_values():
    parser = argparse.ArgumentParser()
    add_sampling_args(parser)
    required = ["--image_path", "x.png", "--output_dir", "out"]
    assert parser.parse_args(required).compile == "auto"
    assert parser.parse_args(required + ["--compile"]).compile == "on"
    assert parser.parse_args(required + ["--compile", "off"]).compile == "off"
    assert parser.parse_args(required + ["--compile", "background"]).compile == "background"
    assert Hi3DPipeline(None, device="cpu", compile="auto").compile == "off"


def test_a_command_line_that_runs_one_image_does_not_compile_by_default():
    parser = argparse.ArgumentParser()
    add_sampling_args(parser)
    required = ["--image_path", "x.png", "--output_dir", "out"]
    assert pipeline_options(parser.parse_args(required), single_run=True)["compile"] == "off"
    assert pipeline_options(parser.parse_args(required))["compile"] == "auto"
    for chosen in ("on", "background", "off"):  # what the user asks for is kept
        assert pipeline_options(parser.parse_args(required + ["--compile", chosen]), single_run=True)["compile"] == chosen


def test_resize_and_center_crop_follows_the_official_rounding():
    pixels = np.zeros((150, 190, 3), dtype=np.uint8)
    pixels[:, :95] = 255  # left half white
    out = resize_and_center_crop(pixels, 128)
    # rate = 128 / 150; width ceil(190 * 128 / 150) = 163; left offset round(35 / 2) = 18 (half to even)
    assert out.shape == (128, 128, 3)
    white_columns = int((out[64, :, 0] > 127).sum())
    assert white_columns == pytest.approx(163 / 2 - 18, abs=1)


def run_script(args, cwd=ROOT):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_cli_errors_exit_nonzero_with_a_clear_message(demo_configs, finished_run, tmp_path):
    demo1, demo2 = demo_configs
    missing = run_script(["pipeline_i2v_eval_v01.py", "--denoise_config", str(demo1), "--image_path",
                          str(tmp_path / "none.png"), "--output_dir", str(tmp_path / "o")])
    assert missing.returncode == 2 and "input image not found" in missing.stderr
    existing = run_script(["pipeline_i2v_eval_v02.py", "--denoise_config", str(demo2), "--output_dir",
                           str(finished_run), "--num_steps", "1"])
    assert existing.returncode == 2 and "--overwrite" in existing.stderr
    checkpoint = run_script(["pipeline_i2v_eval_v01.py", "--denoise_config", str(demo1), "--denoise_checkpoint",
                             str(tmp_path / "first_stage.pt"), "--image_path", "x.png", "--output_dir", str(tmp_path / "p")])
    assert checkpoint.returncode == 2 and "first_stage.pt" in checkpoint.stderr


def test_one_command_runs_both_stages(rgba_image, tmp_path, capsys):
    # the script's main in this process (its exit codes are test_cli_errors_exit_nonzero_with_a_clear_message's part)
    load_script("run_hi3d").main(["--demo", "--image_path", str(rgba_image), "--output_dir", str(tmp_path / "both"),
                                  "--num_steps", "1", "--device", "cpu"])
    stdout = capsys.readouterr().out
    assert "procedural objects" in stdout and "UNTRAINED" not in stdout  # the trained demo models
    assert "all outputs are in" in stdout
    assert (tmp_path / "both" / "second_step_video" / "second.mp4").is_file()


def test_low_memory_plan_gives_the_same_orbit(pipe, rgba_image):
    """Half-size guided calls, one-frame decoding and part-by-part placement change no output."""
    from sgm.common.images import pixels_to_tensor
    from sgm.pipelines.loading import ExecutionPlan
    from sgm.pipelines.sampling import generate_orbit

    model = pipe.model("orbit")
    image = pixels_to_tensor(resize_and_center_crop(np.asarray(read_image(rgba_image).convert("RGB")), SIZE1))
    runs = [generate_orbit(model, image, 10.0, torch.Generator().manual_seed(5), num_steps=STEPS,
                           plan=ExecutionPlan(torch.device("cpu"), low_memory=low)) for low in (False, True)]
    # float32 reassociation only (other batch splits): far below one 8-bit level (1 / 127.5 in [-1, 1])
    torch.testing.assert_close(runs[1], runs[0], rtol=0, atol=1e-3)


def test_a_visiting_module_leaves_the_device_without_copying_its_weights_back():
    """Low-memory phases: on the device for the block, then the very CPU tensors it had before
    (same storage, same values), buffers included; the device copies are dropped."""
    from sgm.pipelines.loading import visiting

    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).eval()
    before = {name: (t.data_ptr(), t.clone()) for name, t in module.state_dict().items()}
    with visiting(module, torch.device("meta")):
        assert all(t.device.type == "meta" for t in module.state_dict().values())
    after = module.state_dict()
    assert set(after) == set(before)
    for name, (pointer, values) in before.items():
        assert after[name].device.type == "cpu" and after[name].data_ptr() == pointer, name
        torch.testing.assert_close(after[name], values, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="boom"), visiting(module, torch.device("meta")):
        raise RuntimeError("boom")
    assert module[0].weight.data_ptr() == before["0.weight"][0]  # restored when the phase fails too


def test_two_devices_give_the_images_of_one(configs, pipe, rgba_image):
    """devices=2: the conditional half of every guided call runs on a copy of the UNet (here a second
    CPU thread), in both stages; the images are those of one device."""
    from sgm.pipelines.sampling import refine_orbit

    two = Hi3DPipeline.from_configs(*configs, device="cpu", devices=2)
    calls = []
    for stage in ("orbit", "refine"):
        model = two.model(stage)
        (replica,) = two.plan.replicate(model.model)
        assert replica is not model.model
        replica.diffusion_model.register_forward_hook(lambda *_, stage=stage: calls.append(stage))
    one = pipe(rgba_image, None, elevation_deg=10.0, num_steps=STEPS, stages=("orbit",), output_type="np").orbit
    both = two(rgba_image, None, elevation_deg=10.0, num_steps=STEPS, stages=("orbit",), output_type="np").orbit
    assert calls.count("orbit") == STEPS  # every guided call used the copy
    assert np.abs(both.frames - one.frames).max() <= 1 / 255  # at most one 8-bit level
    # stage 2 on the same input frames (a pipeline run would refine each orbit after its lossy mp4 encoding)
    frames = torch.from_numpy(one.frames).permute(0, 3, 1, 2) * 2 - 1
    frames = torch.nn.functional.interpolate(frames, size=(SIZE2, SIZE2), mode="bilinear")
    refined = [refine_orbit(two.model("refine"), frames, 10.0, torch.Generator().manual_seed(5), num_steps=STEPS,
                            plan=plan) for plan in (pipe.plan, two.plan)]
    assert calls.count("refine") == STEPS
    torch.testing.assert_close(refined[1], refined[0], rtol=0, atol=1e-3)  # float32 reassociation only


def test_devices_are_checked():
    from sgm.pipelines.loading import ExecutionPlan
    from sgm.pipelines.replicas import resolve_devices

    cpu = torch.device("cpu")
    assert resolve_devices(cpu, 2) == (cpu, cpu) and resolve_devices(cpu, 1) == (cpu,)
    for count in (0, 3, True, 1.5):
        with pytest.raises(UsageError, match="devices must be 1 or 2"):
            resolve_devices(cpu, count)
    if torch.cuda.device_count() < 2:
        with pytest.raises(UsageError, match="CUDA device"):
            resolve_devices(torch.device("cuda"), 2)
    with pytest.raises(UsageError, match="low-memory mode runs on one device"):
        ExecutionPlan(cpu, low_memory=True, helpers=(cpu,))


def test_mesh_stage_writes_glb_and_obj_from_refined_views(tmp_path):
    """The API's 3D stage on a synthetic orbit laid out as stage 2 writes it (views + masks)."""
    from sgm.recon.fit import FitConfig
    from sgm.recon.reconstruct import ReconstructConfig

    out = write_synthetic_stage2(tmp_path / "object", 48, 20.0)
    pipe = Hi3DPipeline(None, None, device="cpu")
    config = ReconstructConfig(fit=FitConfig(iterations=40, num_init=2000), resolution=48, num_novel_views=2,
                               mesh_resolution=32, texture_size=64)
    result = pipe.run_mesh(out, elevation_deg=20.0, config=config)
    assert result.mesh_glb == out / "3d" / "mesh.glb" and result.mesh_glb.stat().st_size > 0
    assert result.mesh_obj.read_text().count("\nf ") > 100
    assert result.scene_ply == out / "3d" / "gaussians.ply" and result.scene_ply.stat().st_size > 1000
    assert result.textured.texture.shape == (64, 64, 3) and len(result.textured.uv) == len(result.textured.vertices)
    with pytest.raises(OutputExistsError):
        pipe.run_mesh(out, elevation_deg=20.0, config=config)
