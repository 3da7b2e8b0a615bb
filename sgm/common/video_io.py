"""Reading and writing orbit videos (mp4, H.264) and per-view PNGs."""
from __future__ import annotations

import tempfile
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
from PIL import Image

from .errors import UsageError

FPS = 8
CRF = 17


class VideoReadError(UsageError):
    """A video file is missing, unreadable or too short."""


def write_mp4(pixels: np.ndarray, path: str | Path, fps: int = FPS, crf: int = CRF) -> Path:
    """Write uint8 (T, H, W, 3) frames as H.264 mp4 (yuv420p, quality ``crf``, single-threaded
    so the same frames give the same bytes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    params = ["-crf", str(crf), "-threads", "1", "-x264-params", "threads=1", "-fflags", "+bitexact",
              "-map_metadata", "-1"]
    with imageio.get_writer(path, format="FFMPEG", mode="I", fps=fps, codec="libx264", pixelformat="yuv420p",
                            macro_block_size=1, output_params=params) as writer:
        for frame in pixels:
            writer.append_data(frame)
    return path


def read_mp4(path: str | Path) -> np.ndarray:
    """All frames of a video as uint8 (N, H, W, 3)."""
    path = Path(path)
    if not path.is_file():
        raise VideoReadError(f"video not found: {path}")
    try:
        with imageio.get_reader(path, format="FFMPEG") as reader:
            frames = [np.asarray(frame)[..., :3] for frame in reader]
    except Exception as err:
        raise VideoReadError(f"cannot read video {path} ({err})") from err
    if not frames:
        raise VideoReadError(f"video {path} has no frames")
    return np.stack(frames)


def write_views(pixels: np.ndarray, folder: str | Path, prefix: str = "view") -> list[Path]:
    """Write uint8 (T, H, W, 3) views as ``folder/{prefix}_{t:02d}.png``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, view in enumerate(pixels):
        path = folder / f"{prefix}_{index:02d}.png"
        Image.fromarray(view).save(path)
        paths.append(path)
    return paths


def mp4_round_trip(pixels: np.ndarray) -> np.ndarray:
    """uint8 (T, H, W, 3) frames as they come back from :func:`write_mp4` then :func:`read_mp4` (the lossy
    H.264 encoding that stage 2 reads from disk), through a temporary file that is removed."""
    with tempfile.TemporaryDirectory(prefix="hi3d-mp4-") as folder:
        return read_mp4(write_mp4(pixels, Path(folder) / "orbit.mp4"))
