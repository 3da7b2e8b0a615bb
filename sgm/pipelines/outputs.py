"""The output folder of one image, in the official layout plus per-view files.

::

    OUT/temp_image/rgba.png            input with background removed
    OUT/temp_image/white.png           input composited on white (stage-2 frame 0)
    OUT/first_step/first.mp4           stage-1 orbit, 8 fps
    OUT/first_step/views/view_XX.png   stage-1 views
    OUT/first_step/contact_sheet.png
    OUT/first_step/run.json            stage-1 record: input image hash, settings, output hashes (sgm.pipelines.records)
    OUT/second_step_video/second.mp4   stage-2 refined orbit, 8 fps
    OUT/second_step_video/views/view_XX.png
    OUT/second_step_video/masks/mask_XX.png   foreground masks of the refined views
    OUT/second_step_video/contact_sheet.png
    OUT/second_step_video/run.json     stage-2 record: settings, the stage-1 record it refined
    OUT/3d/                            Gaussian fit, novel views, mesh.obj / mesh.glb (see sgm.recon.reconstruct)

Stages 1 and 2 write through :class:`~sgm.pipelines.staging.StagedOutput`: all of a run's files
or none.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..common.errors import OutputDirError, OutputExistsError

RECORD_NAME = "run.json"


def describe_os_error(err: OSError) -> str:
    """``err`` as a short reason ("Permission denied"), without its Python type."""
    return err.strerror or str(err)


def nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (absolute)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_creatable(root: Path) -> None:
    """Refuse an output folder that cannot be made or written to, without creating anything.

    Raises:
        OutputDirError: an ancestor is a file, or the folder (or its nearest existing ancestor)
            lacks write permission.
    """
    existing = nearest_existing(root)
    if not existing.is_dir():
        raise OutputDirError(f"cannot create --output_dir {root}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "it" if existing == root.absolute() else existing
        raise OutputDirError(f"cannot write to --output_dir {root}: no permission to write in {where}")


@dataclass(frozen=True)
class OutputLayout:
    root: Path

    @property
    def rgba(self) -> Path:
        return self.root / "temp_image" / "rgba.png"

    @property
    def white(self) -> Path:
        return self.root / "temp_image" / "white.png"

    @property
    def stage1_video(self) -> Path:
        return self.root / "first_step" / "first.mp4"

    @property
    def stage1_record(self) -> Path:
        return self.root / "first_step" / RECORD_NAME

    @property
    def stage1_views(self) -> Path:
        return self.root / "first_step" / "views"

    @property
    def stage1_sheet(self) -> Path:
        return self.root / "first_step" / "contact_sheet.png"

    @property
    def stage2_video(self) -> Path:
        return self.root / "second_step_video" / "second.mp4"

    @property
    def stage2_record(self) -> Path:
        return self.root / "second_step_video" / RECORD_NAME

    @property
    def stage2_views(self) -> Path:
        return self.root / "second_step_video" / "views"

    @property
    def stage2_masks(self) -> Path:
        return self.root / "second_step_video" / "masks"

    @property
    def stage2_sheet(self) -> Path:
        return self.root / "second_step_video" / "contact_sheet.png"

    @property
    def mesh_dir(self) -> Path:
        return self.root / "3d"

    def stage_outputs(self, stage: int) -> list[Path]:
        """Files and folders that stage 1 or 2 writes."""
        if stage == 1:
            return [self.rgba, self.white, self.stage1_video, self.stage1_views, self.stage1_sheet, self.stage1_record]
        if stage == 2:
            return [self.stage2_video, self.stage2_views, self.stage2_masks, self.stage2_sheet, self.stage2_record]
        raise ValueError(f"stage must be 1 or 2, got {stage}")

    def ensure_writable(self, stage: int, overwrite: bool) -> None:
        """Refuse to overwrite earlier results of ``stage`` unless ``overwrite``, and a folder
        that cannot be made or written to (:func:`check_creatable`); creates nothing."""
        if self.root.exists() and not self.root.is_dir():
            raise OutputExistsError(f"--output_dir {self.root} exists and is not a folder")
        check_creatable(self.root)
        existing = [p for p in self.stage_outputs(stage) if p.exists()]
        if existing and not overwrite:
            raise OutputExistsError(
                f"{self.root} already holds stage-{stage} results ({existing[0]}); "
                "choose another --output_dir or pass --overwrite"
            )

    def require_stage1(self) -> None:
        """Stage 2 reads stage 1's white.png and first.mp4: fail clearly if they are absent."""
        missing = [p for p in (self.white, self.stage1_video) if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"stage 2 needs the stage-1 outputs in {self.root}, missing: {', '.join(map(str, missing))} "
                "(run pipeline_i2v_eval_v01.py with the same --output_dir first)"
            )
