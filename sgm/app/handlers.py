"""The functions behind the page's events, callable without a browser (e.g. in tests).

Every message goes to the one status area beside the step buttons, and every message that is
about a job names the image it was made from. Handlers never raise for errors a user causes:
the message is shown and the server stays up. A new upload (or a refused one) starts over: it
clears the job and the results on the page, and steps 2 and 3 refuse a job made from another
upload than the one the page holds (e.g. step 1 finished after the user uploaded a new image).
"""
from __future__ import annotations

import logging
import os
import time
from typing import Callable

import numpy as np
from PIL import Image

from ..common.errors import UsageError
from ..common.images import composite_on_white
from .jobs import Job, JobRunner, user_message
from .validation import Settings, upload_name, validate_upload

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # no telemetry or version checks: the app may run offline
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
import gradio as gr  # noqa: E402

log = logging.getLogger(__name__)
ERROR_PREFIX = "**Error:**"
NOTE_PREFIX = "**Note:**"
START_MESSAGE = "Upload an image to start."
STEP_TITLES = {1: "1. Generate orbit", 2: "2. Refine", 3: "3. Make 3D model"}
RESULT_OUTPUTS = 6  # orbit gallery, orbit video, refined gallery, refined video, 3D viewer, glb file
CLIENT_MESSAGE_LENGTH = 300  # characters of a browser-side refusal shown in the status


def error(message: str) -> str:
    """A status line for a refusal or failure."""
    return f"{ERROR_PREFIX} {message}"


class Handlers:
    """The page's event handlers over one :class:`~.jobs.JobRunner`.

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
            return (*[gr.skip()] * failure_outputs, error(message))

    def upload(self, path: str | None) -> tuple:
        """A new (or removed) upload starts over: (preview on white, the 6 results cleared, job None, status)."""
        cleared = (None,) * RESULT_OUTPUTS
        if path is None:
            return (None, *cleared, None, START_MESSAGE)
        try:
            image = validate_upload(path, self.max_upload_bytes)
        except UsageError as err:
            log.warning("upload refused: %s", err)
            return (None, *cleared, None, error(f"`{upload_name(path)}`: {err}"))
        preview = Image.fromarray(composite_on_white(np.asarray(image.convert("RGBA")), "nearest"))
        return (preview, *cleared, None,
                f"Image `{upload_name(path)}` accepted ({image.width}x{image.height}, {image.mode}). "
                "Set the elevation and press **1. Generate orbit**.")

    def starting(self, step: int, path: str | None, job: Job | None) -> str:
        """The status as a step starts (replacing any earlier message): which step, on which image."""
        name = job.input_name if step > 1 and job is not None else upload_name(path)
        return f"**{STEP_TITLES[step]}** on `{name}`: waiting for its turn, then running (progress below)."

    def client_refusal(self, message: str | None) -> str:
        """A refusal the browser showed only as a passing toast (an upload of the wrong type or over the
        size limit), kept in the status. ``message`` is ``"<count>|<text>"``: the count makes a repeated
        message a new value for the page."""
        text = str(message or "").partition("|")[2] or str(message or "")
        text = " ".join(text.split())[:CLIENT_MESSAGE_LENGTH].replace("<", "‹").replace(">", "›")
        return error(text) if text else gr.skip()

    def orbit(self, path, elevation, seed, steps, guidance, progress: Callable | None = None) -> tuple:
        """Stage 1 in a new job: (gallery, video, refined gallery, refined video, 3D viewer, glb file, job, status)."""
        def action():
            image = validate_upload(path, self.max_upload_bytes)
            settings = Settings.checked(elevation, seed, steps, guidance)
            job = self.runner.new_job(settings.elevation, source=str(path), input_name=upload_name(path))
            start = time.perf_counter()
            result = self.runner.run(job, "orbit", image=image, seed=settings.seed, num_steps=settings.steps,
                                     guidance=settings.guidance, progress=_reporter(progress)).orbit
            views = [(str(view), f"view {index}") for index, view in enumerate(result.views)]
            return (views, str(result.video), None, None, None, None, job,
                    f"Stage 1 done for `{job.input_name}` in {time.perf_counter() - start:.1f} s: {len(views)} "
                    f"views (job `{job.id}`). Press **2. Refine** next.")
        return self._guarded(action, 7)

    def refine(self, job: Job | None, path, seed, steps, guidance, progress: Callable | None = None) -> tuple:
        """Stage 2 of the page's job: (refined gallery, refined video, 3D viewer, glb file, job, status)."""
        def action():
            current = _current_job(job, path, 2)
            settings = Settings.checked(current.elevation, seed, steps, guidance)
            start = time.perf_counter()
            result = self.runner.run(current, "refine", seed=settings.seed, num_steps=settings.steps,
                                     guidance=settings.guidance, progress=_reporter(progress)).refined
            views = [(str(view), f"view {index}") for index, view in enumerate(result.views)]
            done = (f"Stage 2 done for `{current.input_name}` in {time.perf_counter() - start:.1f} s "
                    f"(job `{current.id}`).")
            problem = self.runner.views_problem(current)
            status = f"{done}\n\n{NOTE_PREFIX} {problem}" if problem else f"{done} Press **3. Make 3D model** next."
            return (views, str(result.video), None, None, current, status)
        return self._guarded(action, 5)

    def mesh(self, job: Job | None, path, progress: Callable | None = None) -> tuple:
        """The 3D model of the page's job: (3D viewer, glb file, job, status)."""
        def action():
            current = _current_job(job, path, 3)
            start = time.perf_counter()
            mesh = self.runner.run(current, "mesh", progress=_reporter(progress)).mesh
            return (str(mesh.mesh_glb), str(mesh.mesh_glb), current,
                    f"3D model of `{current.input_name}` done in {time.perf_counter() - start:.1f} s "
                    f"(job `{current.id}`).")
        return self._guarded(action, 3)


def _current_job(job: Job | None, path, step: int) -> Job:
    """The job a step works on: the page's, made from the upload the page holds now.

    Raises:
        UsageError: no job yet, or the job was made from another upload than ``path``.
    """
    if job is None:
        image = "an image" if path is None else f"`{upload_name(path)}`"
        raise UsageError(f"run step 1 (**1. Generate orbit**) for {image} first")
    if path is None or str(path) != job.source:
        now = "holds no image" if path is None else f"now holds `{upload_name(path)}`"
        raise UsageError(f"the results on the page are from `{job.input_name}`, but the page {now}: press "
                         f"**1. Generate orbit** to start a job for the image on the page before "
                         f"**{STEP_TITLES[step]}**")
    return job


def _reporter(progress: Callable | None):
    """Adapt a ``gr.Progress`` to the runner's ``(fraction, description)`` reports."""
    if progress is None:
        return None
    return lambda fraction, text: progress(fraction, desc=text)
