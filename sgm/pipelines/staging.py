"""All-or-nothing output: a run writes into a temporary folder inside the output folder, and its
entries replace those of the output folder only once the whole run has succeeded.

::

    OUT/.hi3d-tmp-<pid>-XXXXXXXX/temp_image/...   while the run writes
    OUT/.hi3d-tmp-<pid>-XXXXXXXX/first_step/...
    OUT/temp_image, OUT/first_step                after success: each entry renamed into place

On any failure (an exception, Ctrl-C) the temporary folder is removed and the output folder is
as it was, including folders this run had to create. The replacement renames one top-level entry
after the other (each rename is atomic; they share one file system); if a rename fails, those done
are undone. A process killed outright (SIGKILL, power loss) can leave a ``.hi3d-tmp-*`` folder
behind, which may be deleted.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..common.errors import OutputDirError, OutputExistsError
from .outputs import describe_os_error

TEMP_PREFIX = ".hi3d-tmp-"
REPLACED = ".replaced"  # inside the temporary folder: the old entries, deleted after the swap


def make_folders(root: Path) -> list[Path]:
    """Create ``root`` and missing ancestors; return the created ones, outermost first.

    Raises:
        OutputDirError: naming the folder and the operating system's reason.
    """
    created = []
    path = root.absolute()
    while not path.exists() and path != path.parent:
        created.append(path)
        path = path.parent
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputDirError(f"cannot create --output_dir {root} ({describe_os_error(err)})") from err
    return created[::-1]


class StagedOutput:
    """Context manager yielding the temporary folder (a ``Path``) that a run writes into.

    Args:
        root: the output folder.
        overwrite: whether existing entries of ``root`` may be replaced (checked again at the swap,
            in case another process wrote there meanwhile).
    """

    def __init__(self, root: Path, overwrite: bool):
        self.root = Path(root)
        self.overwrite = overwrite
        self.created: list[Path] = []
        self.folder: Path | None = None

    def __enter__(self) -> Path:
        self.created = make_folders(self.root)
        try:
            self.folder = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-", dir=self.root))
        except OSError as err:
            self._remove_created()
            raise OutputDirError(f"cannot write to --output_dir {self.root} ({describe_os_error(err)})") from err
        return self.folder

    def __exit__(self, exc_type, exc, traceback) -> bool:
        if exc_type is not None:
            self._discard()
            return False
        try:
            self._swap()
        except BaseException:
            self._discard()
            raise
        shutil.rmtree(self.folder, ignore_errors=True)
        return False

    def _swap(self) -> None:
        names = sorted(entry.name for entry in self.folder.iterdir())
        clashes = [name for name in names if os.path.lexists(self.root / name)]
        if clashes and not self.overwrite:
            raise OutputExistsError(f"{self.root / clashes[0]} appeared while this run was writing; "
                                    "nothing was replaced (pass --overwrite to replace it)")
        replaced = self.folder / REPLACED
        replaced.mkdir()
        try:
            for name in names:
                if name in clashes:
                    os.replace(self.root / name, replaced / name)
                os.replace(self.folder / name, self.root / name)
        except BaseException as err:  # an OSError, or Ctrl-C between two renames: undo, or the old entries are lost
            self._undo(names, replaced)
            if isinstance(err, OSError):
                raise OutputDirError(f"cannot move the results into --output_dir {self.root} "
                                     f"({describe_os_error(err)}); the earlier results are unchanged") from err
            raise

    def _undo(self, names: list[str], replaced: Path) -> None:
        """Put back what :meth:`_swap` moved, judged from where each entry now is."""
        for name in reversed(names):
            if not os.path.lexists(self.folder / name) and os.path.lexists(self.root / name):
                os.replace(self.root / name, self.folder / name)  # this run's entry: back into the temporary folder
            if os.path.lexists(replaced / name):
                os.replace(replaced / name, self.root / name)  # the earlier entry: back into place

    def _discard(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
        self._remove_created()

    def _remove_created(self) -> None:
        for folder in reversed(self.created):  # innermost first; stop at one that is not empty
            try:
                folder.rmdir()
            except OSError:
                break
