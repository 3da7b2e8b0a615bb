"""The web app without a browser: upload validation, settings, job folders, the job runner
(models built once, one job at a time), error messages, model choice, the page's handlers, the
output root and its clean-up, and what the server lets a client fetch."""
from __future__ import annotations

import importlib.util
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import ROOT, require
from PIL import Image

from sgm.app.jobs import JOB_ID, Job, JobRunner, user_message
from sgm.app.models import choose_models
from sgm.app.readiness import MaskSummary, problem_for_3d
from sgm.app.storage import OutputRootError, Retention, check_output_root, expired_jobs, remove_expired_jobs
from sgm.app.validation import Settings, upload_name, validate_upload
from sgm.common.errors import MissingCheckpointError, UsageError
from sgm.common.images import InputImageError
from sgm.evaluation.demo_eval import untrained_config
from sgm.pipelines.hi3d import Hi3DPipeline, Hi3DResult

MB = 2**20
IMAGE_A = ROOT / "demo" / "object_a_elev10.png"
IMAGE_B = ROOT / "demo" / "object_b_elev20.png"
HOUR = 3600.0


def _gradio_handlers():
    """sgm.app.ui: the page and its handlers (imports gradio)."""
    require(importlib.util.find_spec("gradio") is not None, "gradio (pip install -e .[app])")
    from sgm.app import ui
    return ui


class StubPipeline:
    """Stands in for Hi3DPipeline (no model): records each stage and returns where its files would be."""

    def __init__(self, untrained: bool = False):
        self.calls: list[tuple[str, Path]] = []
        self.untrained = untrained

    def is_untrained(self, stage: str) -> bool:
        return self.untrained

    def __call__(self, image, output_dir, *, stages, callback=None, **kwargs):
        (stage,) = stages
        folder = Path(output_dir)
        self.calls.append((stage, folder))
        part = SimpleNamespace(views=[folder / stage / f"view_{k:02d}.png" for k in range(16)],
                               video=folder / stage / "video.mp4")
        if stage == "orbit":
            return Hi3DResult(folder, orbit=part)
        if stage == "refine":
            return Hi3DResult(folder, refined=part)
        return Hi3DResult(folder, mesh=SimpleNamespace(mesh_glb=folder / "3d" / "mesh.glb"))


def _stub_handlers(tmp_path: Path, pipeline: StubPipeline | None = None, retention: Retention | None = None):
    handlers = _gradio_handlers()
    stub = pipeline or StubPipeline()
    runner = JobRunner(lambda: stub, tmp_path / "out")
    if retention is not None:
        runner.retention = retention
    return handlers.Handlers(runner, 20 * MB), stub


def _write_masks(folder: Path, object_fractions: list[float], size: int = 32) -> None:
    """Refined-view masks as stage 2 writes them: the first ``fraction`` of the rows are object (255)."""
    masks = folder / "second_step_video" / "masks"
    masks.mkdir(parents=True, exist_ok=True)
    for index, fraction in enumerate(object_fractions):
        mask = np.zeros((size, size), np.uint8)
        mask.reshape(-1)[:round(fraction * size * size)] = 255
        Image.fromarray(mask).save(masks / f"mask_{index:02d}.png")


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
    assert empty.mode == "demo" and "procedural objects" in empty.notice and "ckpts/README.md" in empty.notice
    assert "untrained" not in empty.notice  # the demo models' weights are in demo/models/
    (tmp_path / "first_stage.pt").write_bytes(b"")
    partial_ckpts = choose_models(tmp_path, device="cpu")
    assert partial_ckpts.mode == "pretrained"
    with pytest.raises(MissingCheckpointError, match="second_stage.pt"):
        partial_ckpts.factory()
    assert choose_models(tmp_path, demo=True, device="cpu").mode == "demo"
    explicit = choose_models(tmp_path, stage1_config=configs[0], stage2_config=configs[1], device="cpu")
    assert explicit.mode == "configs" and explicit.notice == "Using the configs `demo-v01.yaml` and `demo-v02.yaml`."
    untrained, _ = untrained_config(configs[0], tmp_path / "untrained")
    no_weights = choose_models(tmp_path, stage1_config=untrained, stage2_config=configs[1], device="cpu")
    assert no_weights.mode == "configs" and "untrained" in no_weights.notice


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
    assert "step 1" in working.refine(None, str(image), 0, 2, 2.0)[-1]
    preview, *_, status = working.upload(str(image))
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
    job = handlers.runner.new_job(10.0, source=str(IMAGE_A), input_name="a.png")
    job.done |= {"orbit", "refine"}
    reports = []
    model, glb, _, status = handlers.mesh(job, str(IMAGE_A), lambda fraction, desc: reports.append((fraction, desc)))
    assert [fraction for fraction, _ in reports] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert reports[0][1].startswith("3D model: starting") and reports[-1][1] == "3D model: step 4 of 4"
    assert model == glb == str(job.folder / "3d" / "mesh.glb") and "3D model of `a.png` done" in status


# --- step 3 says what to change when the refined views have no background (issue 17) ---


def test_step_3_on_untrained_models_noise_says_to_use_the_released_checkpoints(tmp_path):
    """The demo's refined views are noise over the whole frame: stage 2's white-threshold masks then mark
    every pixel as object (tests/test_app_browser.py runs the real demo models through the page)."""
    from sgm.app.ui import ERROR_PREFIX
    from sgm.common.images import foreground_masks

    handlers, stub = _stub_handlers(tmp_path, StubPipeline(untrained=True))
    *_, job, _ = handlers.orbit(str(IMAGE_A), 10, 0, 25, 2.5)
    noise = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    _write_masks(job.folder, [float(mask.mean()) for mask in foreground_masks(noise)])
    *_, job, status = handlers.refine(job, str(IMAGE_A), 0, 25, 2.0)
    assert "Stage 2 done" in status and "**Note:**" in status and "ckpts/README.md" in status, status
    *_, status = handlers.mesh(job, str(IMAGE_A))
    assert status.startswith(ERROR_PREFIX) and "demo models are untrained" in status, status
    assert "first_stage.pt" in status and "ckpts/README.md" in status and "covers the whole image" not in status
    assert [stage for stage, _ in stub.calls] == ["orbit", "refine"]  # refused before any reconstruction work


def test_views_without_background_from_trained_models_ask_for_a_white_or_transparent_background():
    message = problem_for_3d(MaskSummary((0.3,) * 15 + (1.0,)), untrained=False)
    assert message.startswith("Step 3 cannot make a 3D model") and "refined view 15" in message
    assert "transparent background" in message and "run steps 1 and 2 again" in message


def test_views_without_an_object_ask_for_a_visible_object():
    message = problem_for_3d(MaskSummary((0.0,) + (0.3,) * 15), untrained=False)
    assert "refined view 0 is all white" in message and "run steps 1 and 2 again" in message


def test_views_with_object_and_background_go_to_the_3d_step(tmp_path):
    handlers, stub = _stub_handlers(tmp_path)
    job = handlers.runner.new_job(10.0, source=str(IMAGE_A), input_name="a.png")
    job.done |= {"orbit", "refine"}
    _write_masks(job.folder, [0.4] * 16)
    *_, status = handlers.mesh(job, str(IMAGE_A))
    assert "3D model of `a.png` done" in status and stub.calls == [("mesh", job.folder)]


# --- which input a step works on (issue 17) ---


def test_a_new_upload_clears_the_job_and_the_results(tmp_path):
    handlers, _ = _stub_handlers(tmp_path)
    *_, job, status = handlers.orbit(str(IMAGE_A), 10, 0, 2, 2.5)
    assert job is not None
    preview, *results, new_job, status = handlers.upload(str(IMAGE_B))
    assert preview is not None and results == [None] * 6 and new_job is None
    assert "`object_b_elev20.png` accepted" in status
    refused = tmp_path / "notes.png"
    refused.write_text("not an image")
    preview, *results, new_job, status = handlers.upload(str(refused))
    assert preview is None and results == [None] * 6 and new_job is None and "`notes.png`" in status


def test_steps_2_and_3_refuse_a_job_made_from_another_upload(tmp_path):
    handlers, stub = _stub_handlers(tmp_path)
    *_, job, _ = handlers.orbit(str(IMAGE_A), 10, 0, 2, 2.5)
    *_, job, _ = handlers.refine(job, str(IMAGE_A), 0, 2, 2.0)
    stub.calls.clear()
    for status in (handlers.refine(job, str(IMAGE_B), 0, 2, 2.0)[-1], handlers.mesh(job, str(IMAGE_B))[-1],
                   handlers.refine(job, None, 0, 2, 2.0)[-1]):
        assert "results on the page are from `object_a_elev10.png`" in status and "1. Generate orbit" in status
    assert "now holds `object_b_elev20.png`" in handlers.mesh(job, str(IMAGE_B))[-1]
    assert stub.calls == []  # nothing ran on the old job


def test_each_step_says_which_image_it_works_on(tmp_path):
    handlers, _ = _stub_handlers(tmp_path)
    assert "`object_a_elev10.png`" in handlers.starting(1, str(IMAGE_A), None)
    *_, job, status = handlers.orbit(str(IMAGE_A), 10, 0, 2, 2.5)
    assert "Stage 1 done for `object_a_elev10.png`" in status
    assert "**2. Refine** on `object_a_elev10.png`" in handlers.starting(2, str(IMAGE_A), job)
    *_, job, status = handlers.refine(job, str(IMAGE_A), 0, 2, 2.0)
    assert "Stage 2 done for `object_a_elev10.png`" in status
    assert "3D model of `object_a_elev10.png` done" in handlers.mesh(job, str(IMAGE_A))[-1]


def test_upload_names_shown_on_the_page_are_plain_text():
    assert upload_name("/tmp/gradio/abc/my photo (1).png") == "my photo _1_.png"
    assert upload_name("/x/`rm -rf`<b>.png") == "_rm -rf__b_.png"
    assert upload_name("/x/" + "a" * 100 + ".png").endswith("...") and len(upload_name("/x/" + "a" * 100)) == 60


# --- refusals the browser shows only in a toast stay in the status (issue 17) ---


def test_a_browser_side_refusal_is_kept_in_the_status(tmp_path):
    handlers, _ = _stub_handlers(tmp_path)
    status = handlers.client_refusal('3|File(s) exceed the maximum allowed size of 20.0 Mb: "big.png"')
    assert status == _gradio_handlers().ERROR_PREFIX + ' File(s) exceed the maximum allowed size of 20.0 Mb: "big.png"'
    assert "<" not in handlers.client_refusal("1|<img src=x onerror=alert(1)>")


def test_a_bad_seed_is_reported_in_the_status(tmp_path):
    handlers, stub = _stub_handlers(tmp_path)
    status = handlers.orbit(str(IMAGE_A), 10, -1, 2, 2.5)[-1]
    assert "the seed must be between 0 and 4294967295, got -1" in status and stub.calls == []
    from sgm.app.ui import build_page
    page = build_page(handlers, "notice")
    seed = next(block for block in page.blocks.values() if getattr(block, "elem_id", None) == "seed")
    assert seed.minimum is None  # a gradio minimum would refuse -1 in a passing toast, before the handler


# --- the output root holds only job folders, and old ones go (issue 17) ---


def _run_app(argv: list[str], monkeypatch) -> list:
    """app.main without serving: returns the calls that reached sgm.app.ui.serve."""
    _gradio_handlers()
    import sgm.app.ui
    served = []
    monkeypatch.setattr(sgm.app.ui, "serve", lambda *args, **kwargs: served.append((args, kwargs)))
    _load_app_module().main(["--demo", "--device", "cpu", *argv])
    return served


def test_app_refuses_an_output_root_holding_other_files(tmp_path, monkeypatch, capsys):
    root = tmp_path / "home"
    (root / "Documents").mkdir(parents=True)
    (root / "notes.txt").write_text("keep me")
    (root / "20250101-000000-0123abcd").mkdir()  # a job folder is fine
    with pytest.raises(SystemExit) as info:
        _run_app(["--output_root", str(root)], monkeypatch)
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    assert "holds 2 entries that are not job folders (Documents, notes.txt)" in err and str(root) in err
    assert (root / "notes.txt").read_text() == "keep me" and (root / "Documents").is_dir()


def test_app_refuses_an_output_root_it_cannot_serve_results_from(monkeypatch, capsys):
    with pytest.raises(SystemExit) as info:
        _run_app(["--output_root", "/nonexistent-hi3d-root/app"], monkeypatch)
    assert info.value.code == 2 and "is outside the folder the app runs in" in capsys.readouterr().err


def test_output_root_checks(tmp_path):
    assert check_output_root(tmp_path / "new") == tmp_path / "new"
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputRootError, match="is a file"):
        check_output_root(tmp_path / "file")


def _jobs_used(root: Path, hours_ago: list[float], now: float) -> list[Path]:
    """Job folders last used ``hours_ago`` before ``now``, newest first."""
    folders = []
    for index, age in enumerate(hours_ago):
        folder = root / f"20250101-0000{index:02d}-0000000{index}"
        folder.mkdir(parents=True)
        os.utime(folder, (now - age * HOUR, now - age * HOUR))
        folders.append(folder)
    return folders


def test_jobs_beyond_the_last_keep_jobs_are_removed(tmp_path):
    now = time.time()
    folders = _jobs_used(tmp_path, [0.1, 0.2, 0.3, 0.4], now)
    assert expired_jobs(tmp_path, Retention(keep_jobs=2, keep_hours=0), now=now) == folders[2:]
    assert expired_jobs(tmp_path, Retention(keep_jobs=0, keep_hours=0), now=now) == []


def test_jobs_unused_for_keep_hours_are_removed(tmp_path):
    now = time.time()
    folders = _jobs_used(tmp_path, [1.0, 30.0, 50.0], now)
    (tmp_path / "not-a-job").mkdir()
    assert expired_jobs(tmp_path, Retention(keep_jobs=0, keep_hours=24), now=now) == folders[1:]
    assert remove_expired_jobs(tmp_path, Retention(keep_jobs=10, keep_hours=24)) == [f.name for f in folders[1:]]
    assert sorted(p.name for p in tmp_path.iterdir()) == [folders[0].name, "not-a-job"]


def test_a_stage_removes_old_jobs_but_never_its_own(tmp_path):
    handlers, stub = _stub_handlers(tmp_path, retention=Retention(keep_jobs=1, keep_hours=0))
    old = handlers.runner.new_job(10.0, source=str(IMAGE_A))
    old.done.add("orbit")
    *_, new, status = handlers.orbit(str(IMAGE_B), 10, 0, 2, 2.5)
    assert "Stage 1 done" in status and not old.folder.exists() and new.folder.is_dir()
    os.utime(new.folder, (time.time() - HOUR, time.time() - HOUR))  # the older of the two now
    handlers.orbit(str(IMAGE_A), 10, 0, 2, 2.5)
    status = handlers.refine(new, str(IMAGE_B), 0, 2, 2.0)[-1]
    assert "were removed as an old job" in status and "1. Generate orbit" in status


def test_app_flags_for_the_clean_up():
    args = _load_app_module().parse_args(["--keep_jobs", "5", "--keep_hours", "2.5"])
    assert (args.keep_jobs, args.keep_hours) == (5, 2.5)
    with pytest.raises(UsageError, match="--keep_jobs and --keep_hours"):
        Retention(keep_jobs=-1)


# --- what the server lets a client fetch (issue 17) ---


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _status_of(url: str, data: bytes | None = None, headers: dict | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers or {}), timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.fixture
def served(tmp_path):
    """The page served in this process on a stub pipeline (uploads and copies swept after 2 s)."""
    handlers, _ = _stub_handlers(tmp_path)
    from sgm.app.ui import serve
    port = _free_port()
    page = serve(handlers, "notice", port=port, keep_hours=2 / HOUR, block=False)
    try:
        yield f"http://127.0.0.1:{port}/", handlers
    finally:
        page.close()


def test_no_file_under_the_output_root_is_served(served, tmp_path):
    url, handlers = served
    job = handlers.runner.new_job(10.0, source=str(IMAGE_A))
    upload_copy = job.folder / "temp_image" / "rgba.png"
    upload_copy.parent.mkdir(parents=True)
    Image.open(IMAGE_A).save(upload_copy)
    (handlers.runner.output_root / "secret.txt").write_text("private")
    for path in (upload_copy, handlers.runner.output_root / "secret.txt"):
        assert _status_of(url + "gradio_api/file=" + urllib.parse.quote(str(path))) == 403, path


def test_uploads_are_deleted_after_keep_hours(served):
    url, _ = served
    boundary = "hi3dtestboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + IMAGE_A.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(url + "gradio_api/upload", data=body,
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        (stored,) = json.loads(response.read())
    assert Path(stored).is_file()
    deadline = time.monotonic() + 10
    while Path(stored).exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not Path(stored).exists()
