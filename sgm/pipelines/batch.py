"""Several input images in one run: which files an ``--image_path`` names, and one output folder each.

``--image_path`` may be one image file (the run writes into ``--output_dir`` itself, as before), a
folder (its image files, in name order, not recursing) or a glob pattern (``"photos/*.png"``,
quoted so the shell leaves it alone; ``**`` recurses). A batch writes each image's results into
``--output_dir/<file name without suffix>/``; two inputs with the same stem (``a.png``, ``a.jpg``)
get ``a_png/`` and ``a_jpg/``.
"""
from __future__ import annotations

import glob
from pathlib import Path

from ..common.errors import UsageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
GLOB_CHARACTERS = "*?["


def batch_inputs(spec: str | Path) -> list[Path] | None:
    """The images a folder or glob pattern names, sorted; None when ``spec`` is a single file (or names
    nothing that exists, which the single-image path reports).

    Raises:
        UsageError: a folder or pattern without any image file.
    """
    text = str(spec)
    if any(char in text for char in GLOB_CHARACTERS) and not Path(text).exists():
        found = sorted(Path(p) for p in glob.glob(text, recursive=True))
        where = f"the pattern {text!r}"
    elif Path(text).is_dir():
        found = sorted(Path(text).iterdir())
        where = f"the folder {text}"
    else:
        return None
    images = [path for path in found if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        raise UsageError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {where}")
    return images


def output_folders(images: list[Path], root: Path) -> list[Path]:
    """One folder under ``root`` per image: its stem, or ``stem_suffix`` where stems repeat."""
    stems = [path.stem for path in images]
    return [root / (path.stem if stems.count(path.stem) == 1 else f"{path.stem}_{path.suffix.lstrip('.').lower()}")
            for path in images]
