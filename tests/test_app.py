"""The web app without a browser: upload validation, settings, job folders, the job runner
(models built once, one job at a time), error messages, model choice and the page's handlers."""
from __future__ import annotations

import importlib.util
import threading
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from conftest import ROOT, require, small_demo_configs
from sgm.app.jobs import JOB_ID, Job, JobRunner, user_message
from sgm.app.models import choose_models
from sgm.app.validation import Settings, validate_upload
from sgm.pipelines.errors import MissingCheckpointError, UsageError
from sgm.pipelines.hi3d import Hi3DPipeline, Hi3DResult
from sgm.pipelines.images import InputImageError

MB = 2**20


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    return small_demo_configs(tmp_path_factory.mktemp("configs"))


@pytest.fixture(scope="module")
def demo_image() -> Image.Image:
    return Image.open(ROOT / "demo" / "object_b_elev20.png")


def test_upload_is_decoded_and_size_limited(tmp_path):
    good = ROOT / "demo" / "object_a_elev10.png"
    image = validate_upload(good, 20 * MB)
    assert image.mode == "RGBA" and image.size == (256, 256)
    with pytest.raises(InputImageError, match="too large.*limit is 1 MB"):
        big = tmp_path / "big.png"
        big.write_bytes(b"\0" * (MB + 1))
        validate_upload(big, MB)
    text = tmp_path / "notes.png"
    text.write_text("not an image at all")
    with pytest.raises(InputImageError) as info:
        validate_upload(text, MB)
    assert "not a known image format" in str(info.value) and str(tmp_path) not in str(info.value)
    small = tmp_path / "small.png"
    Image.new("RGB", (32, 400)).save(small)
    with pytest.raises(InputImageError, match="too small"):
        validate_upload(small, MB)
    with pytest.raises(InputImageError, match="upload an image"):
        validate_upload(None, MB)


def test_settings_are_range_checked():
    assert Settings.checked(-10, 3, 2.0, 2.5) == Settings(-10.0, 3, 2, 2.5)
    for bad in ((41, 0, 25, 2.5), (10, -1, 25, 2.5), (10, 0, 0, 2.5), (10, 0, 25, 50.0), (10, 0.5, 25, 2.5),
                (float("nan"), 0, 25, 2.5), (10, None, 25, 2.5)):
        with pytest.raises(UsageError):
            Settings.checked(*bad)


def test_jobs_get_their_own_server_made_folders(tmp_path):
    runner = JobRunner(lambda: None, tmp_path / "app")
    one, two = runner.new_job(10.0), runner.new_job(10.0)
    assert one.folder != two.folder and one.folder.parent == two.folder.parent == tmp_path / "app"
    assert JOB_ID.match(one.id) and one.folder.is_dir()
    with pytest.raises(ValueError, match="not a job"):
        runner.job_folder(Job("../../etc", tmp_path / "app" / "../../etc", 0.0))
    with pytest.raises(UsageError, match="stage 1"):
        runner.run(one, "refine")


def test_runner_builds_models_once_and_runs_one_job_at_a_time(configs, demo_image, tmp_path):
    builds = []

    def factory():  # pass-through spy on the real constructor
        builds.append(1)
        return Hi3DPipeline.from_configs(*configs, device="cpu")

    runner = JobRunner(factory, tmp_path / "app")
    events, errors = [], []

    def job(name):
        try:
            handle = runner.new_job(10.0)
            runner.run(handle, "orbit", image=demo_image, seed=1, num_steps=2,
                       progress=lambda fraction, text: events.append((name, fraction)))
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=job, args=(name,)) for name in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors and len(builds) == 1
    names = [name for name, _ in events]
    assert len(names) == 6 and names in (["a"] * 3 + ["b"] * 3, ["b"] * 3 + ["a"] * 3)  # never interleaved
    assert sorted(fraction for name, fraction in events if name == "a") == [0.0, 0.5, 1.0]
    folders = sorted((tmp_path / "app").iterdir())
    assert len(folders) == 2 and all((folder / "first_step" / "first.mp4").is_file() for folder in folders)


def test_error_messages_for_the_page():
    oom = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert "--low_memory" in user_message(oom) and "Tried to allocate" in user_message(oom)
    assert "README" in user_message(MissingCheckpointError("checkpoints not found: ckpts/first_stage.pt (README)"))
    assert user_message(InputImageError("bad")) == "bad"
    assert user_message(RuntimeError("a bug")) is None


def test_models_choice(tmp_path, configs):
    empty = choose_models(tmp_path, device="cpu")
    assert empty.mode == "demo" and "untrained" in empty.notice and "ckpts/README.md" in empty.notice
    (tmp_path / "first_stage.pt").write_bytes(b"")
    partial_ckpts = choose_models(tmp_path, device="cpu")
    assert partial_ckpts.mode == "pretrained"
    with pytest.raises(MissingCheckpointError, match="second_stage.pt"):
        partial_ckpts.factory()
    assert choose_models(tmp_path, demo=True, device="cpu").mode == "demo"
    explicit = choose_models(tmp_path, stage1_config=configs[0], stage2_config=configs[1], device="cpu")
    assert explicit.mode == "configs" and "untrained" in explicit.notice


def _load_app_module():
    spec = importlib.util.spec_from_file_location("hi3d_app", ROOT / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_app_listens_on_localhost_unless_told_otherwise():
    app = _load_app_module()
    args = app.parse_args([])
    assert args.host == "127.0.0.1" and not args.share and args.output_root == "outputs/app"
    assert app.parse_args(["--host", "0.0.0.0"]).host == "0.0.0.0"


def test_handlers_report_errors_in_the_status_and_keep_serving(tmp_path, configs):
    require(importlib.util.find_spec("gradio") is not None, "gradio (pip install -e .[app])")
    from sgm.app.ui import ERROR_PREFIX, Handlers

    image = ROOT / "demo" / "object_c_elev0.png"
    missing = Handlers(JobRunner(partial(Hi3DPipeline.from_pretrained, tmp_path / "ckpts", device="cpu"),
                                 tmp_path / "out"), 20 * MB)
    outputs = missing.orbit(str(image), 10, 0, 2, 2.5)
    assert outputs[-1].startswith(ERROR_PREFIX) and "first_stage.pt" in outputs[-1] and "ckpts/README.md" in outputs[-1]

    def out_of_memory():
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")

    oom = Handlers(JobRunner(out_of_memory, tmp_path / "out"), 20 * MB)
    assert "--low_memory" in oom.orbit(str(image), 10, 0, 2, 2.5)[-1]

    working = Handlers(JobRunner(partial(Hi3DPipeline.from_configs, *configs, device="cpu"), tmp_path / "out"), 20 * MB)
    text = tmp_path / "fake.png"
    text.write_text("hello")
    assert "not a known image format" in working.upload(str(text))[-1]
    assert "not a known image format" in working.orbit(str(text), 10, 0, 2, 2.5)[-1]
    assert "between -10 and 40" in working.orbit(str(image), 60, 0, 2, 2.5)[-1]
    assert "stage 1" in working.refine(None, 0, 2, 2.0)[-1]
    preview, status = working.upload(str(image))
    assert isinstance(preview, Image.Image) and preview.mode == "RGB" and "accepted" in status
    gallery, video, *_, job, status = working.orbit(str(image), 0, 0, 1, 2.5)
    assert len(gallery) == 16 and Path(video).is_file() and "Stage 1 done" in status
    assert Path(gallery[0][0]).parent.parent.parent == job.folder and job.folder.parent == tmp_path / "out"


def test_the_3d_step_reports_the_reconstruction_steps_to_the_progress_bar(tmp_path):
    require(importlib.util.find_spec("gradio") is not None, "gradio (pip install -e .[app])")
    from sgm.app.ui import Handlers

    class ReconstructingPipeline:  # stands in for Hi3DPipeline: its mesh stage reports 4 steps
        def __call__(self, image, output_dir, *, stages, callback, **kwargs):
            assert stages == ("mesh",)
            for step in range(4):
                callback(step, 4)
            return Hi3DResult(output_dir, mesh=SimpleNamespace(mesh_glb=output_dir / "3d" / "mesh.glb"))

    handlers = Handlers(JobRunner(ReconstructingPipeline, tmp_path / "out"), 20 * MB)
    job = handlers.runner.new_job(10.0)
    job.done |= {"orbit", "refine"}
    reports = []
    model, glb, _, status = handlers.mesh(job, lambda fraction, desc: reports.append((fraction, desc)))
    assert [fraction for fraction, _ in reports] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert reports[0][1].startswith("3D model: starting") and reports[-1][1] == "3D model: step 4 of 4"
    assert model == glb == str(job.folder / "3d" / "mesh.glb") and "3D model done" in status
