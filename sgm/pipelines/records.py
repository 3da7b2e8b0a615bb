"""Records of what a stage made, kept beside its outputs so that stage 2 can check what it refines.

``OUT/first_step/run.json``::

    {"stage": 1,
     "input": {"path": "demo/a.png" or null (an in-memory image), "image_sha256": "..."},
     "settings": {"elevation_deg": 10.0, "seed": 0, "num_steps": null, "min_cfg": null, "max_cfg": null},
     "model": {"config": "...", "checkpoint": "..." or null},
     "outputs": {"temp_image/white.png": "<sha256>", "first_step/first.mp4": "<sha256>"}}

``OUT/second_step_video/run.json`` holds ``stage``, ``settings``, ``model`` and ``stage1`` (the
stage-1 record's ``input`` and ``outputs``). Settings of null mean the config's value. Records
hold no time or output path, so the same run gives the same bytes.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from PIL import Image

from ..common.errors import UsageError
from .checks import RunSettings
from .outputs import OutputLayout

log = logging.getLogger(__name__)

CHUNK = 1 << 20


def image_sha256(image: Image.Image) -> str:
    """SHA-256 of an image's mode, size and pixels: equal for the same pixels in any file format."""
    digest = hashlib.sha256(f"{image.mode} {image.width}x{image.height}\n".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _stage1_checked_files(layout: OutputLayout) -> list[Path]:
    return [layout.white, layout.stage1_video]


def write_stage1_record(layout: OutputLayout, input_path: str | None, input_sha256: str,
                        settings: RunSettings, model: dict) -> Path:
    """Write ``first_step/run.json`` for the stage-1 outputs already in ``layout``."""
    outputs = {path.relative_to(layout.root).as_posix(): file_sha256(path) for path in _stage1_checked_files(layout)}
    record = {"stage": 1, "input": {"path": input_path, "image_sha256": input_sha256},
              "settings": settings.as_dict(), "model": model, "outputs": outputs}
    return _write(layout.stage1_record, record)


def write_stage2_record(layout: OutputLayout, settings: RunSettings, model: dict, stage1: dict | None) -> Path:
    """Write ``second_step_video/run.json``; ``stage1`` is the record of the outputs refined (None: none found)."""
    source = None if stage1 is None else {key: stage1.get(key) for key in ("input", "outputs")}
    record = {"stage": 2, "settings": settings.as_dict(), "model": model, "stage1": source}
    return _write(layout.stage2_record, record)


def _write(path: Path, record: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return path


def read_stage1_record(layout: OutputLayout) -> dict | None:
    """The stage-1 record of ``layout`` (None when absent: outputs of an older version or of the
    official scripts).

    Raises:
        UsageError: the record is not readable JSON of the expected form.
    """
    path = layout.stage1_record
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UsageError(f"cannot read the stage-1 record {path} ({err}); rerun stage 1 with --overwrite") from err
    well_formed = (isinstance(record, dict) and isinstance(record.get("input"), dict)
                   and isinstance(record["input"].get("image_sha256"), str) and isinstance(record.get("outputs"), dict))
    if not well_formed:
        raise UsageError(f"the stage-1 record {path} lacks 'input.image_sha256' or 'outputs'; rerun stage 1 with "
                         "--overwrite")
    return record


def check_stage1_outputs(layout: OutputLayout, image_sha: str | None = None,
                         image_name: str | None = None) -> dict | None:
    """Check that the stage-1 outputs in ``layout`` are the ones their record lists and, when
    ``image_sha`` (of ``image_name``) is given, that they were made from that image.

    Returns:
        The stage-1 record, or None when there is none (a warning says what could not be checked).

    Raises:
        UsageError: a file differs from the record (outputs changed or mixed with another run's),
            or the image is not the one stage 1 was run on.
    """
    record = read_stage1_record(layout)
    if record is None:
        unchecked = " nor --image_path against them" if image_sha is not None else ""
        log.warning("%s has no stage-1 record (made by an older version or the official scripts): cannot check "
                    "that %s and %s belong together%s", layout.root, layout.white.name, layout.stage1_video.name,
                    unchecked)
        return None
    for relative, expected in record["outputs"].items():
        path = layout.root / relative
        if not path.is_file() or file_sha256(path) != expected:
            raise UsageError(f"{path} is not the file that stage 1 recorded in {layout.stage1_record}: the stage-1 "
                             "outputs were changed or mixed with another run's; rerun stage 1 with --overwrite")
    recorded = record["input"]
    if image_sha is not None and image_sha != recorded["image_sha256"]:
        made_from = recorded.get("path") or "an in-memory image"
        raise UsageError(f"--image_path {image_name} is not the image the stage-1 outputs in {layout.root} were "
                         f"made from ({made_from}, per {layout.stage1_record}); pass that image, or rerun stage 1 "
                         "on this one")
    return record
