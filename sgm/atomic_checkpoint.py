"""A checkpoint replaced atomically: a process killed at any moment leaves a complete one behind.

Lightning writes a checkpoint straight to its final name, and a DeepSpeed checkpoint is a folder
that every rank writes its part of. A process killed during the write (SIGKILL, the
out-of-memory killer, a preempted node) would leave a truncated file or a half-filled folder
where the previous good checkpoint was. Here the new checkpoint is written under a temporary
name beside the target, ``.<name>.partial`` (same folder, so same filesystem), flushed to disk,
and only then moved into place:

- a file: one ``os.replace`` (atomic on POSIX filesystems): a reader finds the old file or the
  new one, never a mix.
- a folder: one folder cannot be renamed over another atomically on every filesystem, so the old
  one is first renamed to ``.<name>.previous``, then the new one into place, then the old one
  deleted. Nothing is deleted before the new folder is complete and in place. A kill between the
  two renames leaves no ``<name>`` but both complete versions; :func:`recover` puts the newer one
  in place (run before every save and before resuming).

The three steps around a save (:func:`prepare`, the write, :func:`commit`) run on one process
(global rank 0); the write itself may involve every rank (DeepSpeed).
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)


def partial_path(target: str | Path) -> Path:
    """Where the next version of ``target`` is written before it is moved into place."""
    target = Path(target)
    return target.with_name(f".{target.name}.partial")


def previous_path(target: str | Path) -> Path:
    """Where the current folder ``target`` waits while its successor is moved into place."""
    target = Path(target)
    return target.with_name(f".{target.name}.previous")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _fsync(path: Path) -> None:
    """Flush a file, or every file and folder under ``path``, to disk (a crash of the machine
    right after the rename must not leave an empty file under the final name)."""
    paths = [path]
    if path.is_dir():
        paths = [Path(root) / name for root, _, files in os.walk(path) for name in files]
        paths += [Path(root) for root, _, _ in os.walk(path)]
    for item in paths:
        flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if item.is_dir() else os.O_RDONLY
        try:
            descriptor = os.open(item, flags)
        except OSError:  # a folder that cannot be opened for reading on this platform
            continue
        try:
            os.fsync(descriptor)
        except OSError:
            pass  # some filesystems refuse fsync on folders; the data files were flushed
        finally:
            os.close(descriptor)


def recover(target: str | Path) -> None:
    """Finish or undo a replacement of ``target`` that a killed process left halfway.

    - ``.previous`` and ``target`` both there: the kill came after the new version was in
      place; the old one is deleted.
    - ``.previous`` there, ``target`` not: the kill came between the two renames, so the
      ``.partial`` version is complete and newer: it is moved into place (the old one if it is gone).
    - no ``.previous``: a ``.partial`` version may be incomplete (the kill came during the write):
      it is deleted; ``target`` is the last complete version.
    """
    target = Path(target)
    partial, previous = partial_path(target), previous_path(target)
    if previous.exists():
        if not target.exists():
            source = partial if partial.exists() else previous
            os.replace(source, target)
            log.warning("completed the interrupted replacement of %s (from %s)", target, source.name)
        if previous.exists():
            _remove(previous)
    if partial.exists() or partial.is_symlink():
        _remove(partial)
        log.info("removed the incomplete %s left by an interrupted save", partial)


def prepare(target: str | Path) -> Path:
    """Clean up after any interrupted save and return the path to write the new version to."""
    recover(target)
    return partial_path(target)


def commit(target: str | Path) -> None:
    """Move the complete new version (written to :func:`partial_path`) into place as ``target``."""
    target = Path(target)
    partial = partial_path(target)
    _fsync(partial)
    if target.exists() and (partial.is_dir() or target.is_dir()):
        previous = previous_path(target)
        os.replace(target, previous)
        os.replace(partial, target)
        _remove(previous)
    else:
        os.replace(partial, target)
    _fsync(target.parent)
