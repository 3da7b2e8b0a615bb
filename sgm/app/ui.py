"""The page of the web app and its event handlers (Gradio).

Three steps, each a button: stage 1 (a gallery of the 16 orbit views and the orbit video),
stage 2 (the refined views and video) and the 3D model (a viewer and a ``.glb`` download).
Handlers never raise for errors a user causes: the message is shown in the status box and
the server stays up. All three steps share one concurrency group of size 1, so jobs queue
for the device one at a time.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Callable

from PIL import Image

from ..pipelines.errors import UsageError
from ..pipelines.images import composite_on_white
from .jobs import Job, JobRunner, user_message
from .validation import ELEVATION_RANGE, GUIDANCE_RANGE, STEPS_RANGE, Settings, validate_upload

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # no telemetry or version checks: the app may run offline
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
import gradio as gr  # noqa: E402

log = logging.getLogger(__name__)
DEVICE_QUEUE = "device"  # concurrency id shared by every event that runs a model
ERROR_PREFIX = "**Error:**"
GLB_MIN_WIDTH = 300  # pixels: the download's name, size and padding fit in one row
CSS = """
#notice { background: #fff4d6; border: 1px solid #e6b800; border-radius: 6px; padding: 4px 12px; }
#status { min-height: 3em; }
"""
INTRO = ("Upload a picture of one object (RGBA with a transparent background is best; RGB works too). "
         "**1** turns it into a 16-view orbit, **2** refines the orbit, **3** fuses the views into a 3D model.")


def _error(message: str) -> str:
    return f"{ERROR_PREFIX} {message}"


class Handlers:
    """The functions behind the page's events; callable without a browser (e.g. in tests).

    Args:
        runner: runs the stages.
        max_upload_bytes: largest accepted upload.
    """

    def __init__(self, runner: JobRunner, max_upload_bytes: int):
        self.runner = runner
        self.max_upload_bytes = max_upload_bytes

    def _guarded(self, action: Callable[[], tuple], failure_outputs: int) -> tuple:
        """Run ``action``; on an error return its message as the status, leaving the other outputs as they are."""
        try:
            return action()
        except Exception as err:  # noqa: BLE001 - the page must report every failure and the server stay up
            message = user_message(err)
            if message is None:
                log.exception("job failed")
                message = f"internal error ({type(err).__name__}: {err}); the server log has the details"
            else:
                log.warning("job refused: %s", message)
            return (*[gr.skip()] * failure_outputs, _error(message))

    def upload(self, path: str | None) -> tuple:
        """Check an upload at once: (preview on white, status)."""
        if path is None:
            return None, "Upload an image to start."

        def action():
            image = validate_upload(path, self.max_upload_bytes)
            preview = composite_on_white(image.convert("RGBA"))
            return preview, (f"Image accepted ({image.width}x{image.height}, {image.mode}). "
                             "Set the elevation and press **1. Generate orbit**.")
        return self._guarded(action, 1)

    def orbit(self, path, elevation, seed, steps, guidance, progress: Callable | None = None) -> tuple:
        """Stage 1 in a new job: (gallery, video, refined gallery, refined video, 3D viewer, glb file, job, status)."""
        def action():
            image = validate_upload(path, self.max_upload_bytes)
            settings = Settings.checked(elevation, seed, steps, guidance)
            job = self.runner.new_job(settings.elevation)
            start = time.perf_counter()
            result = self.runner.run(job, "orbit", image=image, seed=settings.seed, num_steps=settings.steps,
                                     guidance=settings.guidance, progress=_reporter(progress)).orbit
            views = [(str(path), f"view {index}") for index, path in enumerate(result.views)]
            return (views, str(result.video), None, None, None, None, job,
                    f"Stage 1 done in {time.perf_counter() - start:.1f} s: {len(views)} views "
                    f"(job `{job.id}`). Press **2. Refine** next.")
        return self._guarded(action, 7)

    def refine(self, job: Job | None, seed, steps, guidance, progress: Callable | None = None) -> tuple:
        """Stage 2 of the current job: (refined gallery, refined video, 3D viewer, glb file, job, status)."""
        def action():
            current = _require_job(job)
            settings = Settings.checked(current.elevation, seed, steps, guidance)
            start = time.perf_counter()
            result = self.runner.run(current, "refine", seed=settings.seed, num_steps=settings.steps,
                                     guidance=settings.guidance, progress=_reporter(progress)).refined
            views = [(str(path), f"view {index}") for index, path in enumerate(result.views)]
            return (views, str(result.video), None, None, current,
                    f"Stage 2 done in {time.perf_counter() - start:.1f} s (job `{current.id}`). "
                    "Press **3. Make 3D model** next.")
        return self._guarded(action, 5)

    def mesh(self, job: Job | None, progress: Callable | None = None) -> tuple:
        """The 3D model of the current job: (3D viewer, glb file, job, status)."""
        def action():
            current = _require_job(job)
            start = time.perf_counter()
            mesh = self.runner.run(current, "mesh", progress=_reporter(progress)).mesh
            return (str(mesh.mesh_glb), str(mesh.mesh_glb), current,
                    f"3D model done in {time.perf_counter() - start:.1f} s (job `{current.id}`).")
        return self._guarded(action, 3)


def _require_job(job: Job | None) -> Job:
    if job is None:
        raise UsageError("run stage 1 (**1. Generate orbit**) for an image first")
    return job


def _reporter(progress: Callable | None):
    """Adapt a ``gr.Progress`` to the runner's ``(fraction, description)`` reports."""
    if progress is None:
        return None
    return lambda fraction, text: progress(fraction, desc=text)


def build_page(handlers: Handlers, notice: str, title: str = "Hi3D") -> gr.Blocks:
    """The page: inputs and settings on the left, the three steps' outputs on the right."""
    with gr.Blocks(title=title, analytics_enabled=False) as page:
        gr.Markdown(f"# {title}: image to 3D\n{INTRO}")
        gr.Markdown(notice, elem_id="notice")
        job = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                upload = gr.File(label="Input image", file_types=["image"], type="filepath", elem_id="input_file")
                preview = gr.Image(label="Input on white", type="pil", interactive=False, height=220,
                                   elem_id="input_preview")
                elevation = gr.Slider(*ELEVATION_RANGE, value=10, step=1, label="Elevation of the input view (degrees)",
                                      elem_id="elevation")
                seed = gr.Number(value=0, precision=0, minimum=0, label="Seed", elem_id="seed")
                steps = gr.Slider(*STEPS_RANGE, value=25, step=1, label="Sampling steps", elem_id="steps")
                guidance1 = gr.Slider(*GUIDANCE_RANGE, value=2.5, step=0.1, label="Guidance, stage 1 (last frame)",
                                      elem_id="guidance1")
                guidance2 = gr.Slider(*GUIDANCE_RANGE, value=2.0, step=0.1, label="Guidance, stage 2 (last frame)",
                                      elem_id="guidance2")
                status = gr.Markdown("Upload an image to start.", elem_id="status")
            with gr.Column(scale=2):
                run1 = gr.Button("1. Generate orbit", variant="primary", elem_id="run_orbit")
                with gr.Row():
                    gallery1 = gr.Gallery(label="Stage 1: 16 orbit views", columns=4, height=620, scale=3,
                                          elem_id="orbit_gallery")
                    video1 = gr.Video(label="Orbit video", height=240, scale=1, elem_id="orbit_video")
                run2 = gr.Button("2. Refine", elem_id="run_refine")
                with gr.Row():
                    gallery2 = gr.Gallery(label="Stage 2: refined views", columns=4, height=620, scale=3,
                                          elem_id="refined_gallery")
                    video2 = gr.Video(label="Refined video", height=240, scale=1, elem_id="refined_video")
                run3 = gr.Button("3. Make 3D model", elem_id="run_mesh")
                with gr.Row():
                    model3d = gr.Model3D(label="3D model", clear_color=(1.0, 1.0, 1.0, 1.0), height=320, scale=3,
                                         elem_id="model3d")
                    # in a narrower column Gradio shrinks the file name away first ("mesh.glb" showed as ".g");
                    # where the row has no room for GLB_MIN_WIDTH it wraps the file below the viewer
                    glb = gr.File(label="Download mesh.glb", interactive=False, scale=1, min_width=GLB_MIN_WIDTH,
                                  elem_id="glb_file")

        def on_orbit(path, elevation_value, seed_value, steps_value, guidance_value, progress=gr.Progress()):
            return handlers.orbit(path, elevation_value, seed_value, steps_value, guidance_value, progress)

        def on_refine(job_value, seed_value, steps_value, guidance_value, progress=gr.Progress()):
            return handlers.refine(job_value, seed_value, steps_value, guidance_value, progress)

        def on_mesh(job_value, progress=gr.Progress()):
            return handlers.mesh(job_value, progress)

        queued = dict(concurrency_limit=1, concurrency_id=DEVICE_QUEUE)
        upload.change(handlers.upload, inputs=upload, outputs=[preview, status])
        run1.click(on_orbit, inputs=[upload, elevation, seed, steps, guidance1],
                   outputs=[gallery1, video1, gallery2, video2, model3d, glb, job, status],
                   show_progress_on=[gallery1], **queued)
        run2.click(on_refine, inputs=[job, seed, steps, guidance2],
                   outputs=[gallery2, video2, model3d, glb, job, status], show_progress_on=[gallery2], **queued)
        run3.click(on_mesh, inputs=[job], outputs=[model3d, glb, job, status], show_progress_on=[model3d], **queued)
    return page


def theme() -> gr.themes.Base:
    """The default theme with local fonts only (the page must not fetch web fonts: it may run offline)."""
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "monospace"])


def serve(handlers: Handlers, notice: str, host: str = "127.0.0.1", port: int | None = None, share: bool = False,
          max_upload_bytes: int = 20 * 2**20, queue_size: int = 16) -> None:
    """Build the page and serve it until interrupted (jobs queue, ``queue_size`` waiting at most)."""
    page = build_page(handlers, notice)
    page.queue(default_concurrency_limit=1, max_size=queue_size)
    page.launch(server_name=host, server_port=port, share=share, max_file_size=max_upload_bytes,
                allowed_paths=[str(Path(handlers.runner.output_root).resolve())], show_error=False,
                ssr_mode=False, mcp_server=False, enable_monitoring=False, footer_links=[], theme=theme(), css=CSS,
                quiet=False)
