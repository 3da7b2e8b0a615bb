"""Orbit-clip training data for stage 1 (official class path ``sgm.data.video_dataset.VideoDataset``).

Layout (the orbit convention of :mod:`sgm.common.orbit`): ``base_folder/<object>/`` holds one
RGBA PNG per view, 6 elevation rings x 16 azimuths = 96 files. Sorted by file name (plain
string order, so names must be zero-padded), ring ``r`` occupies positions ``16 r .. 16 r + 15``
in azimuth order and has elevation ``RING_ELEVATIONS_DEG[r]`` (-10, 0, 10, 20, 30, 40 degrees).

A clip is ``sample_frames`` consecutive azimuths of one ring, starting at a random azimuth
and wrapping around the ring, so frame 0 (the input view) is arbitrary and frame k lies
k/16 of a turn further, counter-clockwise seen from above. Each frame is composited on white, resized to (width, height) and
mapped to [-1, 1].

Difference to the official loader: there the index argument is ignored and every call
draws an object at random from the global RNG, so neither the epoch's coverage nor the
clips are reproducible. Here item ``i`` is a pure function of ``(seed, i)``: object
``i mod N`` with a ring and start drawn from an RNG seeded by ``(seed, i)``. The sampler
(:class:`EpochSeededSampler`) offsets the indices by ``epoch * N`` so every epoch visits
every object once with fresh clips, and a seed fixes the whole data stream.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..common.images import composite_on_white
from ..common.orbit import RING_ELEVATIONS_DEG, VIEWS_PER_RING, clip_azimuth_indices, view_position
from ..stop_signals import ignore_stop_signals
from ..util import ConfigError

log = logging.getLogger(__name__)

# SVD micro-conditioning values carried in every item; the Hi3D models do not read them.
FPS_ID = 7
MOTION_BUCKET_ID = 127
# Errors PIL raises on unreadable or truncated image files.
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, UnidentifiedImageError)


class DatasetError(RuntimeError):
    """The data folder yields no usable sample."""


class NoUsableObjectsError(DatasetError, ConfigError):
    """Every object folder of ``data.params.base_folder`` is unusable: a user error (a
    :class:`~sgm.util.ConfigError`, so the command lines print it in one line and exit with code 2)
    naming the folder, how many object folders it has and why each kind was refused."""


# Kinds of unusable object folders, by the start of their problem text (see folder_problem).
PROBLEM_KINDS = (("has ", "with the wrong number of PNG files"), ("cannot open", "with an unreadable PNG file"),
                 ("mixes", "mixing image sizes"))


def summarize_problems(problems: dict[str, str], examples: int = 3) -> str:
    """``<count> <kind>, ...`` over the unusable object folders (name -> problem), then the first few."""
    kinds: dict[str, int] = {}
    for problem in problems.values():
        kind = next((name for prefix, name in PROBLEM_KINDS if problem.startswith(prefix)), "unusable")
        kinds[kind] = kinds.get(kind, 0) + 1
    counts = ", ".join(f"{count} {kind}" for kind, count in kinds.items())
    shown = "; ".join(f"{name}: {problem}" for name, problem in list(problems.items())[:examples])
    more = f"; and {len(problems) - examples} more" if len(problems) > examples else ""
    return f"{counts} ({shown}{more})"


# ----------------------------------------------------------------------------------------
# Pixels


def read_rgba(path: Path) -> np.ndarray:
    """uint8 (H, W, 4) straight-alpha RGBA of an image file (RGB / gray files get alpha 255)."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGBA"))


def resize_uint8(pixels: np.ndarray, width: int, height: int, resample: Image.Resampling) -> np.ndarray:
    """Resize uint8 (H, W) or (H, W, C) pixels to (height, width) with a PIL filter (no-op when equal)."""
    if pixels.shape[:2] == (height, width):
        return pixels
    return np.asarray(Image.fromarray(pixels).resize((width, height), resample=resample))


def to_model_range(pixels: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 (3, H, W) in [-1, 1] (x / 127.5 - 1)."""
    return torch.from_numpy(pixels.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)


def on_white(rgba: np.ndarray, width: int, height: int) -> np.ndarray:
    """uint8 (H0, W0, 4) straight-alpha RGBA -> uint8 (height, width, 3): composited on white
    (truncating), then resized bicubic: a view as the models are trained on it."""
    return resize_uint8(composite_on_white(rgba, "truncate"), width, height, Image.Resampling.BICUBIC)


def load_frame(path: Path, width: int, height: int) -> tuple[torch.Tensor, np.ndarray]:
    """One view: ``(3, height, width)`` in [-1, 1] on white, and its uint8 alpha (H0, W0) at file size."""
    rgba = read_rgba(path)
    return to_model_range(on_white(rgba, width, height)), rgba[..., 3]


# ----------------------------------------------------------------------------------------
# Object folders


@dataclass(frozen=True)
class OrbitObject:
    """One object folder: its name and its view files in ring-major, azimuth-minor order."""

    name: str
    files: tuple[Path, ...]


def png_files(folder: Path) -> list[Path]:
    """PNG files of ``folder`` sorted by name (case-insensitive suffix)."""
    return sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".png"), key=lambda p: p.name)


def folder_problem(files: Sequence[Path], expected: int, check_headers: bool) -> str | None:
    """Why an object folder cannot be used, or None.

    Checks the number of PNGs and, with ``check_headers``, that every file opens as an image
    and all have one size (only the header is read, not the pixels).
    """
    if len(files) != expected:
        return f"has {len(files)} PNG files, expected {expected}"
    if not check_headers:
        return None
    sizes = set()
    for path in files:
        try:
            with Image.open(path) as image:
                sizes.add(image.size)
        except IMAGE_ERRORS as err:
            return f"cannot open {path.name} ({type(err).__name__}: {err})"
    if len(sizes) > 1:
        return f"mixes image sizes {sorted(sizes)}"
    return None


def scan_objects(base_folder: str | Path, expected_files: int, check_headers: bool = True) -> list[OrbitObject]:
    """Usable object folders of ``base_folder`` sorted by name; unusable ones are skipped with a warning.

    Raises:
        FileNotFoundError: if ``base_folder`` is not a folder.
        NoUsableObjectsError: if no object folder is usable (with the counts and reasons).
    """
    base = Path(base_folder)
    if not base.is_dir():
        raise FileNotFoundError(f"data folder not found: {base}")
    objects, problems = [], {}
    for folder in sorted(p for p in base.iterdir() if p.is_dir()):
        files = png_files(folder)
        problem = folder_problem(files, expected_files, check_headers)
        if problem is not None:
            log.warning("skipping object folder %s: %s", folder, problem)
            problems[folder.name] = problem
            continue
        objects.append(OrbitObject(folder.name, tuple(files)))
    skipped = len(problems)
    if not objects:
        found = f"{skipped} object folders, none usable: {summarize_problems(problems)}" if problems else \
            "no sub-folders"
        raise NoUsableObjectsError(f"no usable object folder in {base} ({found}); each object needs a sub-folder with "
                                   f"{expected_files} PNG views (data.params.base_folder)")
    if skipped:
        log.warning("%s: using %d object folders, skipped %d", base, len(objects), skipped)
    return objects


# ----------------------------------------------------------------------------------------
# Clips


def item_rng(seed: int, index: int) -> np.random.Generator:
    """The RNG of item ``index`` under ``seed`` (independent streams for different pairs)."""
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


def clip_positions(ring: int, start: int, num_frames: int, views_per_ring: int) -> list[int]:
    """Sorted-file positions of ``num_frames`` consecutive azimuths of ``ring`` from azimuth ``start``, wrapping."""
    return [view_position(ring, azimuth, views_per_ring)
            for azimuth in clip_azimuth_indices(start, num_frames, views_per_ring)]


@dataclass(frozen=True)
class ClipChoice:
    """Which views make up item ``index``: object, ring, start azimuth (all indices)."""

    object_index: int
    ring: int
    start: int


class OrbitClipDataset(Dataset):
    """Stage-1 orbit clips.

    Args:
        base_folder: folder of object folders (see the module docstring).
        width, height: output frame size in pixels.
        sample_frames: T, frames per clip (at most ``views_per_ring``).
        seed: data seed; item ``i`` depends only on ``(seed, i)``.
        elevations: ring elevations in degrees, in sorted-file order.
        views_per_ring: azimuths per ring.
        check_headers: open every file's header at construction to find corrupt folders.

    Item ``i`` (any non-negative integer; object ``i mod len(self)``):
        ``video`` float32 (3, T, H, W) in [-1, 1]; ``elevation`` int (degrees);
        ``caption`` ``"<object>_<start position>"``; ``fps_id`` 7; ``motion_bucket_id`` 127.
    """

    def __init__(
        self,
        base_folder: str | Path,
        width: int,
        height: int,
        sample_frames: int = VIEWS_PER_RING,
        seed: int = 0,
        elevations: Sequence[int] = RING_ELEVATIONS_DEG,
        views_per_ring: int = VIEWS_PER_RING,
        check_headers: bool = True,
    ):
        if not 1 <= sample_frames <= views_per_ring:
            raise ValueError(f"sample_frames must be in [1, {views_per_ring}] (views per ring), got {sample_frames}")
        if width < 1 or height < 1:
            raise ValueError(f"width and height must be positive, got {width}x{height}")
        self.base_folder = Path(base_folder)
        self.width, self.height = int(width), int(height)
        self.sample_frames = int(sample_frames)
        self.seed = int(seed)
        self.elevations = tuple(int(e) for e in elevations)
        self.views_per_ring = int(views_per_ring)
        self.objects = scan_objects(base_folder, len(self.elevations) * self.views_per_ring, check_headers)
        self._failed: set[str] = set()

    def __len__(self) -> int:
        return len(self.objects)

    def choose(self, index: int) -> tuple[ClipChoice, np.random.Generator]:
        """The clip of item ``index`` and the item's RNG, positioned after the clip draws."""
        if index < 0:
            raise IndexError(f"item index must be non-negative, got {index}")
        rng = item_rng(self.seed, index)
        start = int(rng.integers(len(self.elevations) * self.views_per_ring))
        ring, azimuth = divmod(start, self.views_per_ring)
        return ClipChoice(index % len(self.objects), ring, azimuth), rng

    def read_clip(self, obj: OrbitObject, choice: ClipChoice) -> tuple[torch.Tensor, list[np.ndarray]]:
        """Frames (3, T, H, W) in [-1, 1] and the uint8 alpha (H0, W0) of each frame.

        Raises:
            OSError: naming the first file that does not decode.
        """
        frames, alphas = [], []
        for position in clip_positions(choice.ring, choice.start, self.sample_frames, self.views_per_ring):
            path = obj.files[position]
            try:
                frame, alpha = load_frame(path, self.width, self.height)
            except IMAGE_ERRORS as err:
                raise OSError(f"cannot decode {path} ({type(err).__name__}: {err})") from err
            frames.append(frame)
            alphas.append(alpha)
        return torch.stack(frames, dim=1), alphas

    def make_item(self, obj: OrbitObject, choice: ClipChoice, video: torch.Tensor, alphas: list[np.ndarray],
                  rng: np.random.Generator) -> dict:
        """The sample dict from the decoded clip (subclasses add keys)."""
        return {
            "video": video,
            "elevation": self.elevations[choice.ring],
            "caption": f"{obj.name}_{view_position(choice.ring, choice.start, self.views_per_ring)}",
            "fps_id": FPS_ID,
            "motion_bucket_id": MOTION_BUCKET_ID,
        }

    def __getitem__(self, index: int) -> dict:
        choice, rng = self.choose(index)
        # An object whose files fail to decode is reported and replaced by the next one,
        # keeping the clip choice, so a bad file never stops a run.
        for offset in range(len(self.objects)):
            obj = self.objects[(choice.object_index + offset) % len(self.objects)]
            if obj.name in self._failed:
                continue
            try:
                video, alphas = self.read_clip(obj, choice)
            except IMAGE_ERRORS as err:
                log.warning("object %s is unreadable, using another object instead: %s", obj.name, err)
                self._failed.add(obj.name)
                continue
            return self.make_item(obj, choice, video, alphas, rng)
        raise NoUsableObjectsError(f"no usable object folder in {self.base_folder}: all {len(self.objects)} object "
                                   f"folders failed to decode ({', '.join(sorted(self._failed))}); see the warnings "
                                   "above for their files")


class EpochSeededSampler(DistributedSampler):
    """Distributed sampler over objects whose indices are offset by ``epoch * len(dataset)``.

    With :class:`OrbitClipDataset` this gives each epoch fresh, reproducible clips of every
    object. Lightning keeps a ``DistributedSampler`` it is given and calls ``set_epoch``.
    """

    def __iter__(self) -> Iterator[int]:
        offset = self.epoch * len(self.dataset)
        return (offset + i for i in super().__iter__())


# ----------------------------------------------------------------------------------------
# Evaluation images


class EvalImageFolder(Dataset):
    """Every PNG of a folder as a conditioning image.

    Item: ``input_image`` float32 (3, height, width) in [-1, 1] (composited on white),
    ``elevation`` int (degrees), ``path`` str. The official eval set returns HWC images and
    the elevation in radians, and is consumed by nothing; this one matches the training items.
    """

    def __init__(self, folder: str | Path, width: int, height: int, elevation_deg: int = 0):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"eval folder not found: {self.folder}")
        self.files = png_files(self.folder)
        if not self.files:
            raise DatasetError(f"eval folder {self.folder} has no PNG files")
        self.width, self.height = int(width), int(height)
        self.elevation_deg = int(elevation_deg)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        image, _ = load_frame(self.files[index], self.width, self.height)
        return {"input_image": image, "elevation": self.elevation_deg, "path": str(self.files[index])}


# ----------------------------------------------------------------------------------------
# DataModule


def distributed_layout(trainer: pl.Trainer | None) -> tuple[int, int]:
    """(world size, global rank) from the attached trainer, else from torch.distributed, else (1, 0)."""
    if trainer is not None:
        return trainer.world_size, trainer.global_rank
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class VideoDataset(pl.LightningDataModule):
    """Stage-1 training data as a Lightning DataModule.

    Args:
        base_folder: folder of object folders.
        eval_folder: optional folder of PNG conditioning images (:meth:`eval_dataloader`);
            a missing folder only disables that loader (training never reads it).
        width, height: frame size in pixels.
        sample_frames: T.
        batch_size: clips per device and step.
        num_workers: DataLoader worker processes.
        shuffle: visit objects in a seeded random order each epoch.
        seed: seed of the object order and of every clip choice.
        check_headers: open every file's header when scanning folders.

    One epoch visits every object once across all ranks: ``ceil(N / world size / batch size)``
    steps per rank (the distributed sampler pads to a multiple of the world size).
    """

    dataset_class = OrbitClipDataset

    def __init__(
        self,
        base_folder: str,
        width: int,
        height: int,
        batch_size: int,
        eval_folder: str | None = None,
        sample_frames: int = VIEWS_PER_RING,
        num_workers: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        check_headers: bool = True,
    ):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.base_folder = base_folder
        self.eval_folder = eval_folder
        self.width, self.height = width, height
        self.sample_frames = sample_frames
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.shuffle = shuffle
        self.seed = seed
        self.check_headers = check_headers
        self.train_dataset: OrbitClipDataset | None = None
        self.eval_dataset: EvalImageFolder | None = None

    def dataset_kwargs(self) -> dict:
        """Keyword arguments of :attr:`dataset_class` besides the folder."""
        return {"width": self.width, "height": self.height, "sample_frames": self.sample_frames, "seed": self.seed,
                "check_headers": self.check_headers}

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is None:
            self.train_dataset = self.dataset_class(self.base_folder, **self.dataset_kwargs())
        if self.eval_folder is not None and self.eval_dataset is None:
            if Path(self.eval_folder).is_dir():
                self.eval_dataset = EvalImageFolder(self.eval_folder, self.width, self.height)
            else:
                log.warning("eval_folder %s not found: eval_dataloader() is unavailable", self.eval_folder)

    def train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            self.setup("fit")
        world_size, rank = distributed_layout(self.trainer)
        sampler = EpochSeededSampler(self.train_dataset, num_replicas=world_size, rank=rank, shuffle=self.shuffle,
                                     seed=self.seed)
        # The workers outlive SIGTERM / SIGINT, so that training can save and stop (sgm.stop_signals). They
        # also outlive each epoch: an epoch can be a few steps (a few hundred objects over several devices),
        # and starting the workers again at each one stalled the steps. Items depend on their index only,
        # so no batch changes.
        return DataLoader(self.train_dataset, batch_size=self.batch_size, sampler=sampler,
                          num_workers=self.num_workers, drop_last=False, worker_init_fn=ignore_stop_signals,
                          persistent_workers=self.num_workers > 0)

    def eval_dataloader(self) -> DataLoader:
        """Batches of the eval images (see :class:`EvalImageFolder`)."""
        if self.eval_dataset is None:
            self.setup()
        if self.eval_dataset is None:
            raise DatasetError(f"no eval folder available (eval_folder={self.eval_folder!r})")
        return DataLoader(self.eval_dataset, batch_size=self.batch_size, num_workers=self.num_workers)
