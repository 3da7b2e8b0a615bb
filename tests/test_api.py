"""The Python API as one object: models built once, the CLI equal to the API, from_pretrained,
guidance, image-size checks and what a result exposes (tiny demo configs, CPU)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, digest_tree
from PIL import Image

import sgm.pipelines.hi3d as hi3d
from sgm.common.errors import MissingCheckpointError, UsageError
from sgm.common.images import MAX_IMAGE_SIDE, MIN_IMAGE_SIDE, InputImageError
from sgm.modules.diffusionmodules.sampling import EulerEDMSampler
from sgm.pipelines.hi3d import Hi3DPipeline

STEPS = 1


@pytest.fixture(scope="module")
def image_path() -> Path:
    return ROOT / "demo" / "object_a_elev10.png"


@pytest.fixture(scope="module")
def built() -> list[str]:
    """The config name of every stage model :func:`pipe` builds (in order)."""
    return []


@pytest.fixture(scope="module")
def pipe(configs, built):
    """This module's pipeline (the conftest one), built with a pass-through spy on the real model loader."""
    real_loader = hi3d.load_stage_model

    def counting_loader(spec, *args, **kwargs):
        built.append(spec.config.name)
        return real_loader(spec, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hi3d, "load_stage_model", counting_loader)
        yield Hi3DPipeline.from_configs(*configs, device="cpu")


API_RUN = dict(elevation_deg=20, seed=11, num_steps=STEPS, max_cfg=1.5)


@pytest.fixture(scope="module")
def api_run(pipe, image_path, tmp_path_factory):
    """Both stages through the API into a folder (the settings of API_RUN)."""
    out = tmp_path_factory.mktemp("api") / "api"
    return out, pipe(image_path, out, **API_RUN)


def test_models_are_built_once_across_calls(pipe, built, api_run, image_path, tmp_path):
    _, first = api_run  # the first call (both stages) on this pipeline
    models = pipe.model("orbit"), pipe.model("refine")
    second = pipe(image_path, tmp_path / "two", elevation_deg=10, seed=2, num_steps=STEPS)
    assert sorted(built) == ["demo-v01.yaml", "demo-v02.yaml"]  # one build per stage for both calls
    assert pipe.model("orbit") is models[0] and pipe.model("refine") is models[1]
    assert not np.array_equal(first.orbit.pixels, second.orbit.pixels)  # the second call did run
    assert not np.array_equal(first.refined.pixels, second.refined.pixels)


def test_cli_output_equals_api_output_byte_for_byte(api_run, configs, image_path, tmp_path):
    cli_out, (api_out, _) = tmp_path / "cli", api_run
    command = [sys.executable, "scripts/run_hi3d.py", "--stage1_config", str(configs[0]), "--stage2_config",
               str(configs[1]), "--image_path", str(image_path), "--output_dir", str(cli_out), "--elevation", "20",
               "--seed", "11", "--num_steps", str(STEPS), "--max_cfg", "1.5", "--device", "cpu"]
    done = subprocess.run(command, cwd=ROOT, env=dict(os.environ, PYTHONWARNINGS="ignore"), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    cli, api = digest_tree(cli_out), digest_tree(api_out)
    assert "second_step_video/second.mp4" in cli and len(cli) > 30
    assert cli == api


def test_from_pretrained_names_every_missing_file(tmp_path):
    with pytest.raises(MissingCheckpointError) as info:
        Hi3DPipeline.from_pretrained(tmp_path, device="cpu")
    message = str(info.value)
    assert "first_stage.pt" in message and "second_stage.pt" in message and "ckpts/README.md" in message
    (tmp_path / "first_stage.pt").write_bytes(b"")
    with pytest.raises(FileNotFoundError) as info:  # MissingCheckpointError is a FileNotFoundError (CLI exit 2)
        Hi3DPipeline.from_pretrained(tmp_path, device="cpu")
    assert "second_stage.pt" in str(info.value) and "first_stage.pt" not in str(info.value)


def test_from_pretrained_uses_the_inference_configs_and_the_folder(tmp_path):
    for name in ("first_stage.pt", "second_stage.pt"):
        (tmp_path / name).write_bytes(b"")
    pipe = Hi3DPipeline.from_pretrained(tmp_path, device="cpu")  # builds nothing yet
    assert pipe.specs["orbit"].config == ROOT / "configs" / "inference-v01.yaml"
    assert pipe.specs["refine"].config == ROOT / "configs" / "inference-v02.yaml"
    assert pipe.specs["orbit"].checkpoint == tmp_path / "first_stage.pt"
    assert pipe.specs["refine"].checkpoint == tmp_path / "second_stage.pt"
    assert not pipe.is_untrained("orbit")


def test_result_exposes_views_videos_and_mesh_path_and_guidance_reaches_both_stages(pipe, image_path, tmp_path,
                                                                                    monkeypatch):
    # the guidance each sampler step uses (the untrained demo UNets output zeros, so guidance
    # cannot show in their pixels: read it where the sampler receives it, per call)
    scales = []
    denoise = EulerEDMSampler.denoise

    def recording(self, denoiser, x, sigma, cond, uc, guider=None):
        used = self.guider if guider is None else guider
        scales.append((float(used.frame_scales[0]), float(used.frame_scales[-1])))
        return denoise(self, denoiser, x, sigma, cond, uc, guider)

    monkeypatch.setattr(EulerEDMSampler, "denoise", recording)
    result = pipe(Image.open(image_path), tmp_path / "out", elevation_deg=10, seed=0, num_steps=STEPS,
                  min_cfg=1.25, max_cfg=3.0)
    assert scales == [(1.25, 3.0)] * (2 * STEPS)  # stage 1, then stage 2
    refine_config = pipe.model("refine").sampler.guider  # the sampler's own guider is untouched
    assert (float(refine_config.frame_scales[0]), float(refine_config.frame_scales[-1])) == (1.0, 2.0)
    assert len(result.orbit.images) == 16 and result.orbit.images[3].size == (64, 64)
    assert result.refined.images[0].mode == "RGB" and result.refined.images[0].size == (128, 128)
    np.testing.assert_array_equal(np.asarray(result.orbit.images[5]), result.orbit.pixels[5])
    assert result.videos == {"orbit": tmp_path / "out" / "first_step" / "first.mp4",
                             "refine": tmp_path / "out" / "second_step_video" / "second.mp4"}
    assert all(path.is_file() for path in result.videos.values())
    assert result.mesh_path is None  # the mesh stage did not run


def test_image_size_is_checked_before_any_work(pipe, tmp_path):
    with pytest.raises(InputImageError, match="too small"):
        pipe.run_orbit(Image.new("RGBA", (MIN_IMAGE_SIDE - 1, 300)), tmp_path / "small")
    large = tmp_path / "large.png"
    Image.new("L", (MAX_IMAGE_SIDE + 1, MIN_IMAGE_SIDE)).save(large)
    with pytest.raises(InputImageError, match="too large"):
        pipe.run_orbit(large, tmp_path / "large")
    assert not (tmp_path / "small" / "first_step").exists() and not (tmp_path / "large" / "first_step").exists()


def test_the_mesh_stage_forwards_the_step_callback_to_the_reconstruction(tmp_path, monkeypatch):
    def fake_reconstruct(views, elevation_deg, output_dir, **kwargs):  # reports 3 steps, writes nothing
        for step in range(3):
            kwargs["callback"](step, 3)
        return f"mesh of {views}"

    monkeypatch.setattr(hi3d, "reconstruct", fake_reconstruct)
    pipe = Hi3DPipeline(None, None, device="cpu")  # the mesh stage needs no diffusion model
    steps = []
    assert pipe.run_mesh(tmp_path, 10, callback=lambda step, total: steps.append((step, total))) == f"mesh of {tmp_path}"
    result = pipe(None, tmp_path, elevation_deg=10, stages=("mesh",), callback=lambda *step: steps.append(step))
    assert result.mesh == f"mesh of {tmp_path}" and steps == [(0, 3), (1, 3), (2, 3)] * 2


def test_output_dir_none_writes_nothing_and_equals_a_run_that_writes(pipe, api_run, image_path, tmp_path,
                                                                     monkeypatch):
    _, written = api_run
    monkeypatch.chdir(tmp_path)
    memory = pipe(image_path, None, output_type="pt", **API_RUN)
    assert list(tmp_path.iterdir()) == [] and memory.output_dir is None and memory.videos == {}
    np.testing.assert_array_equal(memory.orbit.pixels, written.orbit.pixels)
    np.testing.assert_array_equal(memory.refined.pixels, written.refined.pixels)  # stage 2 saw the same mp4 frames
    frames = memory.refined.frames
    assert isinstance(frames, torch.Tensor) and frames.dtype == torch.float32 and frames.shape == (16, 3, 128, 128)
    torch.testing.assert_close(frames, torch.from_numpy(written.refined.pixels).permute(0, 3, 1, 2) / 255.0)
    with pytest.raises(UsageError, match="start at 'orbit'"):
        pipe(None, None, stages=("refine",))


def test_output_types_and_a_callers_generator(pipe, image_path):
    run = dict(elevation_deg=10, num_steps=STEPS, stages=("orbit",))
    seeded = pipe(image_path, None, seed=9, output_type="np", **run)
    assert seeded.orbit.frames.dtype == np.float32 and seeded.orbit.frames.shape == (16, 64, 64, 3)
    np.testing.assert_array_equal(seeded.orbit.frames * 255.0, seeded.orbit.pixels.astype(np.float32))
    drawn = pipe(image_path, None, generator=torch.Generator().manual_seed(9), **run)
    assert isinstance(drawn.orbit.frames, list) and drawn.orbit.frames[0].mode == "RGB"
    np.testing.assert_array_equal(drawn.orbit.pixels, seeded.orbit.pixels)  # the same draws as seed=9
    other = pipe(image_path, None, generator=torch.Generator().manual_seed(10), **run)
    assert not np.array_equal(other.orbit.pixels, seeded.orbit.pixels)
    with pytest.raises(UsageError, match="output_type"):
        pipe(image_path, None, output_type="jpeg", **run)
    with pytest.raises(UsageError, match="torch.Generator"):
        pipe(image_path, None, generator=np.random.default_rng(0), **run)
