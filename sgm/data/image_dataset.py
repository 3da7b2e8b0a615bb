"""Single-view training data for the autoencoder, read from the stage-1 orbit folders.

The folders are those of :mod:`sgm.data.video_dataset` (``base_folder/<object>/000.png`` ..
``095.png``, RGBA); scanning, decoding, compositing on white, resizing, the replacement of an
unreadable object and the epoch-seeded sampler are that module's. An item is one view: a
one-frame "clip" of :class:`~sgm.data.video_dataset.OrbitClipDataset`, whose start position is
drawn uniformly over all rings and azimuths, so every view of an object is equally likely.

Item ``i`` is a pure function of ``(seed, i)``: object ``i mod N`` (N objects), the view drawn
from the RNG of ``(seed, i)``. An epoch has ``views_per_object`` items per object.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .video_dataset import ClipChoice, OrbitClipDataset, OrbitObject, VideoDataset


class OrbitViewDataset(OrbitClipDataset):
    """Single views of the orbit folders.

    Args:
        base_folder: folder of object folders.
        width, height: output image size in pixels.
        views_per_object: items per object in one epoch (the dataset's length is N times this).
        seed: data seed; item ``i`` depends only on ``(seed, i)``.
        **clip_options: the other keyword arguments of :class:`OrbitClipDataset` (``elevations``,
            ``views_per_ring``, ``check_headers``).

    Item ``i`` (any non-negative integer; object ``i mod N``):
        ``image`` float32 (3, height, width) in [-1, 1], composited on white;
        ``caption`` ``"<object>_<view position>"`` (position in the sorted files).
    """

    def __init__(self, base_folder: str | Path, width: int, height: int, views_per_object: int = 1, seed: int = 0,
                 **clip_options):
        if views_per_object < 1:
            raise ValueError(f"views_per_object must be at least 1, got {views_per_object}")
        super().__init__(base_folder, width, height, sample_frames=1, seed=seed, **clip_options)
        self.views_per_object = int(views_per_object)

    def __len__(self) -> int:
        return len(self.objects) * self.views_per_object

    def make_item(self, obj: OrbitObject, choice: ClipChoice, video: torch.Tensor, alphas: list[np.ndarray],
                  rng: np.random.Generator) -> dict:
        return {"image": video[:, 0], "caption": f"{obj.name}_{choice.ring * self.views_per_ring + choice.start}"}


class ImageDataset(VideoDataset):
    """Autoencoder training data as a Lightning DataModule: batches of ``image`` (B, 3, height, width).

    Args:
        base_folder: folder of object folders.
        width, height: image size in pixels.
        batch_size: images per device and step.
        views_per_object: items per object and epoch (see :class:`OrbitViewDataset`).
        num_workers: DataLoader worker processes.
        shuffle: visit the items in a seeded random order each epoch.
        seed: seed of the order and of every view choice.
        check_headers: open every file's header when scanning folders.

    One epoch visits every object ``views_per_object`` times across all ranks, with fresh views
    each epoch (the sampler of :class:`~sgm.data.video_dataset.VideoDataset`).
    """

    dataset_class = OrbitViewDataset

    def __init__(
        self,
        base_folder: str,
        width: int,
        height: int,
        batch_size: int,
        views_per_object: int = 1,
        num_workers: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        check_headers: bool = True,
    ):
        super().__init__(base_folder, width, height, batch_size, eval_folder=None, sample_frames=1,
                         num_workers=num_workers, shuffle=shuffle, seed=seed, check_headers=check_headers)
        if views_per_object < 1:
            raise ValueError(f"views_per_object must be at least 1, got {views_per_object}")
        self.views_per_object = views_per_object

    def dataset_kwargs(self) -> dict:
        return {"width": self.width, "height": self.height, "views_per_object": self.views_per_object,
                "seed": self.seed, "check_headers": self.check_headers}
