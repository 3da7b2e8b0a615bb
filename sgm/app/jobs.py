"""Running the pipeline for the web app: job folders, one job at a time, messages for the page.

A :class:`JobRunner` owns one :class:`~sgm.pipelines.hi3d.Hi3DPipeline`, built on the first job
and kept (with its models) for every later job. Jobs run one at a time (a lock per runner, and
the runner serves one device). Each job writes only into its own folder
``<output_root>/<job id>``, whose name the server makes up; nothing a user types becomes a path.
A job remembers which upload it was made from, so that a later step can refuse to work on a job
whose image is no longer the one on the page. Old job folders are removed (:mod:`.storage`)
before each stage, never the folder of the job about to run.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from ..common.errors import USER_ERRORS, UsageError
from ..pipelines.hi3d import Hi3DPipeline, Hi3DResult
from ..recon.reconstruct import ReconstructConfig
from ..recon.views import ViewError
from .readiness import problem_for_3d, summarise_masks
from .storage import JOB_ID, Retention, mark_used, new_job_id, remove_expired_jobs

log = logging.getLogger(__name__)

__all__ = ["JOB_ID", "Job", "JobRunner", "user_message"]
LOW_MEMORY_HINT = ("Restart the app with --low_memory (the models then stay on the CPU and each part visits the "
                   "GPU only for its phase; same results), or close other programs using the GPU.")
# A progress report: (fraction done in [0, 1], description).
Progress = Callable[[float, str], None]
STAGE_TITLES = {"orbit": "stage 1 (orbit)", "refine": "stage 2 (refinement)", "mesh": "3D model"}


def user_message(err: BaseException) -> str | None:
    """The message to show for an error the user can act on; None for anything else (a bug)."""
    if isinstance(err, torch.cuda.OutOfMemoryError):
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else "no details"
        return f"CUDA out of memory ({first_line}). {LOW_MEMORY_HINT}"
    if isinstance(err, USER_ERRORS + (ViewError,)):
        return str(err)
    return None


@dataclass
class Job:
    """One input image and what has been made from it so far.

    Attributes:
        id: made by the server (``YYYYmmdd-HHMMSS-<8 hex>``).
        folder: ``<output_root>/<id>``, the only place the job writes to.
        elevation: elevation of the input view in degrees, used by every stage of the job.
        done: stages finished so far.
        source: where the server stored the upload the job was made from (identifies the upload).
        input_name: the upload's file name as shown to the user.
    """

    id: str
    folder: Path
    elevation: float
    done: set[str] = field(default_factory=set)
    source: str | None = None
    input_name: str = "the image"


class JobRunner:
    """Runs the stages of jobs on one pipeline, one job at a time.

    Args:
        pipeline_factory: builds the pipeline; called once, on the first job that needs it
            (a failure, e.g. missing checkpoints, is raised to that job and retried on the next).
        output_root: folder holding one subfolder per job.
        mesh_config: settings of the 3D stage.
        retention: which old job folders are removed before each stage (None: none are).
    """

    def __init__(self, pipeline_factory: Callable[[], Hi3DPipeline], output_root: str | Path,
                 mesh_config: ReconstructConfig | None = None, retention: Retention | None = None):
        self._factory = pipeline_factory
        self._pipeline: Hi3DPipeline | None = None
        self.output_root = Path(output_root)
        self.mesh_config = mesh_config or ReconstructConfig()
        self.retention = retention
        self._lock = threading.Lock()

    def pipeline(self) -> Hi3DPipeline:
        """The pipeline, built on first use and then kept."""
        if self._pipeline is None:
            self._pipeline = self._factory()
        return self._pipeline

    def untrained(self, stage: str) -> bool:
        """Whether the model of ``stage`` has random weights (the demo); False if the pipeline cannot say."""
        is_untrained = getattr(self.pipeline(), "is_untrained", None)
        return bool(is_untrained(stage)) if is_untrained is not None else False

    def new_job(self, elevation: float, source: str | None = None, input_name: str = "the image") -> Job:
        """A job with a fresh folder under the output root, made from the upload at ``source``."""
        self.output_root.mkdir(parents=True, exist_ok=True)
        while True:
            job_id = new_job_id()
            folder = self.output_root / job_id
            try:
                folder.mkdir()
                return Job(job_id, folder, elevation, source=source, input_name=input_name)
            except FileExistsError:
                continue

    def job_folder(self, job: Job) -> Path:
        """The folder of ``job``, checked to be a server-made name directly under the output root.

        Raises:
            ValueError: ``job`` is not one of this runner's (a bug, or a forged state).
            UsageError: the folder was removed as an old job (see :class:`~.storage.Retention`).
        """
        if not JOB_ID.match(job.id) or job.folder != self.output_root / job.id:
            raise ValueError(f"not a job of this runner: {job.id!r}")
        if not job.folder.is_dir():
            raise UsageError(f"the results of job `{job.id}` ({job.input_name}) were removed as an old job; "
                             "press **1. Generate orbit** to start again")
        return job.folder

    def views_problem(self, job: Job) -> str | None:
        """Why the job's refined views cannot make a 3D model and what to change, or None."""
        return problem_for_3d(summarise_masks(self.job_folder(job)), self.untrained("refine"))

    def run(self, job: Job, stage: str, image: Image.Image | None = None, seed: int = 0,
            num_steps: int | None = None, guidance: float | None = None,
            progress: Progress | None = None) -> Hi3DResult:
        """Run one stage ("orbit", "refine" or "mesh") of ``job``, waiting for any running job first.

        Stage 2 and the mesh replace earlier results of the same stage in the job's folder.
        ``guidance`` is the guidance scale of the last frame (None: the config's). The mesh stage
        is refused, with what to change, when the refined views have no usable background
        (:mod:`.readiness`). Before the stage runs, old job folders other than this job's are removed.
        """
        self.job_folder(job)
        needs = {"refine": "orbit", "mesh": "refine"}.get(stage)
        if needs is not None and needs not in job.done:
            raise UsageError(f"run {STAGE_TITLES[needs]} for this image first")
        title = STAGE_TITLES[stage]

        def on_step(index: int, total: int) -> None:
            if progress is not None:
                progress((index + 1) / total, f"{title}: step {index + 1} of {total}")

        with self._lock:
            folder = self.job_folder(job)  # again: it may have been removed while this stage waited
            mark_used(folder)
            if self.retention is not None:
                remove_expired_jobs(self.output_root, self.retention, keep=frozenset({job.id}))
            if stage == "mesh" and (problem := self.views_problem(job)) is not None:
                raise UsageError(problem)
            if progress is not None:
                progress(0.0, f"{title}: starting (a stage's first run loads its model)")
            pipe = self.pipeline()
            try:
                result = pipe(image, folder, elevation_deg=job.elevation, seed=seed, num_steps=num_steps,
                              max_cfg=guidance, stages=(stage,), overwrite=stage != "orbit", callback=on_step,
                              mesh_config=self.mesh_config)
            except torch.cuda.OutOfMemoryError:
                pipe.release_memory()  # leave the device usable for the next job
                raise
        job.done.add(stage)
        # a new stage-2 result makes an older mesh stale, a new orbit makes both stale
        job.done -= {"orbit": {"refine", "mesh"}, "refine": {"mesh"}}.get(stage, set())
        return result
