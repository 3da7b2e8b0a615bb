"""The web app's output root: one folder per job, nothing else, and old jobs removed.

The root holds only folders named by the server (:data:`JOB_ID`), so that the app can delete
old ones without risk to anything else, and so that a mistyped ``--output_root`` (a home folder,
the repository) is refused at start-up instead of being filled, or cleaned, by the app.
"""
from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..common.errors import UsageError

log = logging.getLogger(__name__)

JOB_ID = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{8}$")
SHOWN_ENTRIES = 3  # entries named in a refusal before "... (N more)"


class OutputRootError(UsageError):
    """``--output_root`` is unusable: a file, outside what the app may serve, or holding other things."""


def new_job_id() -> str:
    """``YYYYmmdd-HHMMSS-<8 hex>``: sorts by creation time, unguessable in its last part."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"


def is_job_folder(path: Path) -> bool:
    """A real folder (not a link) with a server-made job name."""
    return bool(JOB_ID.match(path.name)) and path.is_dir() and not path.is_symlink()


def servable_roots() -> list[Path]:
    """Folders gradio accepts result files from without ``allowed_paths``: the working folder and
    the system temp folder (it copies them into its cache and serves only the copies)."""
    return [Path.cwd().resolve(), Path(tempfile.gettempdir()).resolve()]


def check_output_root(root: str | Path) -> Path:
    """The absolute output root, after checking that the app may use it.

    Raises:
        OutputRootError: it is a file; it lies outside :func:`servable_roots`; or it holds
            anything but job folders (named, up to :data:`SHOWN_ENTRIES`).
    """
    root = Path(root).absolute()
    if root.exists() and not root.is_dir():
        raise OutputRootError(f"--output_root {root} is a file; give a folder for the job folders")
    resolved = root.resolve()
    allowed = servable_roots()
    if not any(resolved == base or base in resolved.parents for base in allowed):
        raise OutputRootError(f"--output_root {root} is outside the folder the app runs in ({allowed[0]}) and the "
                              f"temp folder ({allowed[1]}); the page can show results only from those")
    if root.is_dir():
        others = sorted(entry.name for entry in root.iterdir() if not is_job_folder(entry))
        if others:
            shown = ", ".join(others[:SHOWN_ENTRIES]) + (f", ... ({len(others) - SHOWN_ENTRIES} more)"
                                                         if len(others) > SHOWN_ENTRIES else "")
            entries = "1 entry that is not a job folder" if len(others) == 1 else \
                f"{len(others)} entries that are not job folders"
            raise OutputRootError(f"--output_root {root} holds {entries} "
                                  f"({shown}); the app deletes old job folders there, so give an empty folder "
                                  "or one used only by the app")
    return root


@dataclass(frozen=True)
class Retention:
    """How long job folders stay: at most ``keep_jobs`` of them (the most recently used) and none
    unused for more than ``keep_hours``; 0 turns a limit off."""

    keep_jobs: int = 50
    keep_hours: float = 24.0

    def __post_init__(self):
        if self.keep_jobs < 0 or not self.keep_hours >= 0:
            raise UsageError(f"--keep_jobs and --keep_hours must be 0 (no limit) or more, got {self.keep_jobs} "
                             f"and {self.keep_hours}")


def expired_jobs(root: Path, retention: Retention, keep: frozenset[str] = frozenset(),
                 now: float | None = None) -> list[Path]:
    """Job folders of ``root`` past either limit of ``retention`` (by last use: the folder's
    modification time), except those named in ``keep``."""
    if not root.is_dir():
        return []
    now = time.time() if now is None else now
    jobs = sorted((entry for entry in root.iterdir() if is_job_folder(entry)),
                  key=lambda entry: entry.stat().st_mtime, reverse=True)
    expired = []
    for rank, folder in enumerate(jobs):
        too_many = retention.keep_jobs and rank >= retention.keep_jobs
        too_old = retention.keep_hours and now - folder.stat().st_mtime > retention.keep_hours * 3600
        if (too_many or too_old) and folder.name not in keep:
            expired.append(folder)
    return expired


def remove_expired_jobs(root: Path, retention: Retention, keep: frozenset[str] = frozenset()) -> list[str]:
    """Delete the folders of :func:`expired_jobs`; returns their names. A folder that cannot be
    deleted is logged and left (the next clean-up tries again)."""
    removed = []
    for folder in expired_jobs(root, retention, keep):
        try:
            shutil.rmtree(folder)
            removed.append(folder.name)
        except OSError as err:
            log.warning("cannot remove the old job folder %s: %s", folder, err)
    if removed:
        log.info("removed %d old job folder(s) from %s", len(removed), root)
    return removed


def mark_used(folder: Path) -> None:
    """Record that a job was used now (its folder's modification time), for :class:`Retention`."""
    os.utime(folder)
