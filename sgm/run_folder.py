"""Run folder names that two runs never share, and their hand-over to DDP child processes.

A fresh run's folder is ``<logdir>/<stamp>_<name>`` with ``stamp`` the start time
(``%Y-%m-%dT%H-%M-%S``). Two runs that start in the same second with the same name would get the
same folder and mix their checkpoints, logs and configs. So the folder is claimed with an
exclusive ``mkdir`` (atomic on local filesystems and NFS): the run that creates it owns it, and
the other one takes the next free ``<stamp>.2_<name>``, ``<stamp>.3_<name>``, ... (these sort
after ``<stamp>_<name>`` and before the next second).

Lightning's DDP launcher re-runs the training script for ranks 1.. as child processes of rank 0,
and they must use rank 0's folder (ranks started by torchrun or SLURM: see :func:`external_rank`). The launching process hands its stamp down through
``$HI3D_RUN_TIMESTAMP``, with its own process id in ``$HI3D_RUN_TIMESTAMP_OWNER``; a process
whose parent is that owner uses the stamp as it is and claims nothing. A value left in a shell,
or by an earlier run in the same process, does not pass that test and is ignored.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

RUN_TIMESTAMP_ENV = "HI3D_RUN_TIMESTAMP"
RUN_TIMESTAMP_OWNER_ENV = "HI3D_RUN_TIMESTAMP_OWNER"
TIMESTAMP_FORMAT = "%Y-%m-%dT%H-%M-%S"
# Runs of one name started within one second; beyond this something is wrong (a loop).
MAX_SAME_SECOND = 1000


def new_timestamp() -> str:
    """The current local time as a run stamp."""
    return datetime.now().strftime(TIMESTAMP_FORMAT)


def inherited_stamp() -> str | None:
    """The stamp handed down by the process that launched this one, or None (this process launches)."""
    stamp = os.environ.get(RUN_TIMESTAMP_ENV)
    if stamp and os.environ.get(RUN_TIMESTAMP_OWNER_ENV) == str(os.getppid()):
        return stamp
    return None


def external_rank() -> int:
    """This process's global rank as set by an external launcher (torchrun's ``RANK``, SLURM's
    ``SLURM_PROCID``), else 0. Such ranks are not children of rank 0 and inherit nothing: a non-zero
    one claims no folder (rank 0 does; the checkpoint folder is taken from rank 0 when fitting starts)."""
    for name in ("RANK", "SLURM_PROCID"):
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


@contextmanager
def handed_down(stamp: str) -> Iterator[None]:
    """Within the block, the processes this one starts (DDP child ranks) inherit ``stamp``; the
    variables are removed afterwards, so later unrelated processes do not pick it up."""
    saved = {name: os.environ.get(name) for name in (RUN_TIMESTAMP_ENV, RUN_TIMESTAMP_OWNER_ENV)}
    os.environ[RUN_TIMESTAMP_ENV] = stamp
    os.environ[RUN_TIMESTAMP_OWNER_ENV] = str(os.getpid())
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def folder_name(stamp: str, name: str) -> str:
    return f"{stamp}_{name}"


def claim(parent: str | Path, stamp: str, name: str) -> tuple[Path, str]:
    """Create a new run folder under ``parent`` that no other run has; (folder, its stamp).

    Raises:
        FileExistsError: if even ``MAX_SAME_SECOND`` variants of the name are taken.
    """
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    for index in range(1, MAX_SAME_SECOND + 1):
        unique = stamp if index == 1 else f"{stamp}.{index}"
        folder = parent / folder_name(unique, name)
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder, unique
    raise FileExistsError(f"{parent}: {MAX_SAME_SECOND} run folders named {folder_name(stamp, name)} or a numbered "
                          "variant exist already")


def release_if_unused(folder: str | Path) -> bool:
    """Remove a claimed run folder that holds no file (only empty folders): a run that failed before
    writing anything leaves nothing behind. A folder with any file is kept. Returns whether removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    if any(files for _, _, files in os.walk(folder)):
        return False
    for root, _, _ in sorted(os.walk(folder), key=lambda entry: len(entry[0]), reverse=True):
        try:
            os.rmdir(root)
        except OSError:  # something appeared meanwhile: keep it
            return False
    return True
