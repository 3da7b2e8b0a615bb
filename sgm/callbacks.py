"""Training callbacks: run-folder setup, the resumable ``last.ckpt`` and periodic image/video logging.

``ImageLogger`` is also reachable under the official name ``vtdm.callbacks.ImageLogger``
(see :data:`sgm.targets.TARGET_ALIASES`).
"""
from __future__ import annotations

import logging
import math
import signal
import tempfile
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from pytorch_lightning.callbacks import Checkpoint
from pytorch_lightning.trainer.states import TrainerFn
from torchvision.utils import make_grid

from . import atomic_checkpoint
from .common.video_io import write_mp4
from .stop_signals import StopRequest, signal_name
from .util import ConfigError

log = logging.getLogger(__name__)

VIDEO_FPS = 6
LAST_CHECKPOINT = "last.ckpt"
# Where LastCheckpoint's parameters live in a training config (for messages).
LAST_CHECKPOINT_KEY = "lightning.modelcheckpoint.params"
DEFAULT_EVERY_MINUTES = 10.0


class ImageLoggerError(ConfigError):
    """The image logger cannot run with this model (found when fitting starts, before step 0)."""


class SetupCallback(pl.Callback):
    """Create the run folders and save the merged project config (rank 0, at setup).

    Args:
        logdir: run folder.
        ckptdir: checkpoint folder (usually ``logdir/checkpoints``).
        cfgdir: config folder (usually ``logdir/configs``).
        config: the merged project config (model, data, lightning), saved as
            ``cfgdir/<now>-project.yaml``; ``--resume`` reads these files back.
        now: run timestamp used in the file name.
    """

    def __init__(self, logdir: str | Path, ckptdir: str | Path, cfgdir: str | Path, config: DictConfig, now: str):
        super().__init__()
        self.logdir, self.ckptdir, self.cfgdir = Path(logdir), Path(ckptdir), Path(cfgdir)
        self.config = config
        self.now = now

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not trainer.is_global_zero:
            return
        for folder in (self.logdir, self.ckptdir, self.cfgdir):
            folder.mkdir(parents=True, exist_ok=True)
        path = self.cfgdir / f"{self.now}-project.yaml"
        OmegaConf.save(self.config, path)
        log.info("project config saved to %s", path)


def check_every_minutes(value: object) -> float | None:
    """``every_minutes`` as a float: a positive finite number of minutes, or None (no periodic save).

    Raises:
        ConfigError: naming ``lightning.modelcheckpoint.params.every_minutes``, the value and what is expected.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{LAST_CHECKPOINT_KEY}.every_minutes={value!r}: expected a positive number of minutes "
                          f"(wall time between saves of {LAST_CHECKPOINT}, default {DEFAULT_EVERY_MINUTES:g}), or "
                          "null for saves at epoch ends only")
    return float(value)


class LastCheckpoint(Checkpoint):
    """Keeps ``<dirpath>/last.ckpt`` (the full training state, resumable with ``--resume``) current.

    It is saved:

    - at the end of every training epoch and when training ends;
    - every ``every_minutes`` minutes of wall time (measured on global rank 0 since the last
      save, looked at after each optimizer step, so a save comes at most one step late);
    - when the process receives SIGTERM or SIGINT (:class:`~sgm.stop_signals.StopRequest`): at the
      end of the current step; then training stops (:attr:`stopped_by`, :attr:`stopped_at_step`).

    Every save replaces ``last.ckpt`` atomically (:mod:`sgm.atomic_checkpoint`): a process killed
    at any moment, even during a save, leaves the previous complete checkpoint. A DeepSpeed
    checkpoint (a folder) is handled as well.

    Multi-process runs: after each optimizer step every rank joins one small all-reduce (max)
    of (signal number, rank 0's "interval elapsed"), so all ranks agree on whether to save and stop
    at the same step, whichever rank received the signal (a terminal's Ctrl-C reaches every rank,
    ``kill`` only one, a scheduler's preemption all of them). The signal handler itself only records
    the signal: no collective runs inside it, so it cannot deadlock against one in progress.

    A :class:`~pytorch_lightning.callbacks.Checkpoint`, so Lightning adds no default checkpoint
    callback of its own, and runs it after the other callbacks (their state is saved up to date).

    Args:
        dirpath: checkpoint folder (the run's ``checkpoints/``).
        every_minutes: wall-clock minutes between periodic saves; None: no periodic saves.
        save_last: False: never write ``last.ckpt`` (benchmarks); a signal still stops training.
    """

    def __init__(self, dirpath: str | Path, every_minutes: float | None = DEFAULT_EVERY_MINUTES,
                 save_last: bool = True):
        super().__init__()
        self.dirpath = Path(dirpath)
        self.every_minutes = check_every_minutes(every_minutes)
        self.save_last = save_last
        self.stop = StopRequest()
        self.stopped_by: int | None = None
        self.stopped_at_step: int | None = None
        self.saved_step: int | None = None
        self._checked_step: int | None = None
        self._last_save = time.monotonic()

    @property
    def path(self) -> Path:
        return self.dirpath / LAST_CHECKPOINT

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Rank 0's folder for every rank: ranks started by torchrun / SLURM plan their run folders
        # on their own (a DeepSpeed checkpoint is written by every rank).
        self.dirpath = Path(trainer.strategy.broadcast(str(self.dirpath)))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After Lightning registered its own SIGTERM handler (which runs a collective inside the
        # handler and ends without a checkpoint): ours replaces it while training runs.
        self.stop.install()
        self._last_save = time.monotonic()
        self._checked_step = trainer.global_step
        self.saved_step = trainer.global_step  # what a resumed run started from is saved already

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if trainer.global_step == self._checked_step:
            return  # no optimizer step in this batch (gradient accumulation): nothing new to save
        self._checked_step = trainer.global_step
        signum, due = self._agree(trainer)
        # The epoch's last step is saved here rather than in on_train_epoch_end: Lightning resumes a
        # state saved after the last batch into the next epoch exactly, while one saved in
        # on_train_epoch_end (as Lightning's ModelCheckpoint does) resumes with one batch of the
        # next epoch skipped and its epoch counter one behind.
        if signum and trainer.is_global_zero:
            log.warning("%s received: training stops at global step %d, after saving %s%s", signal_name(signum),
                        trainer.global_step, self.path, " (Ctrl-C again stops at once, without saving)"
                        if signum == signal.SIGINT else "")
        if signum or due or trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            self.save(trainer)
        if signum:
            self.stopped_by, self.stopped_at_step = signum, trainer.global_step
            self._request_stop(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.save(trainer)  # normally saved at the epoch's last step already (see on_train_batch_end)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.save(trainer)
        self.stop.restore()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.stop.restore()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.stop.restore()

    # ------------------------------------------------------------------ decisions
    def _agree(self, trainer: pl.Trainer) -> tuple[int, bool]:
        """(signal number received by any rank or 0, whether rank 0's save interval has elapsed)."""
        due = (self.every_minutes is not None and trainer.is_global_zero
               and time.monotonic() - self._last_save >= 60.0 * self.every_minutes)
        flags = torch.tensor([self.stop.signal or 0, int(due)], device=trainer.strategy.root_device)
        if trainer.world_size > 1:
            flags = trainer.strategy.reduce(flags, reduce_op="max")
        return int(flags[0]), bool(flags[1])

    @staticmethod
    def _request_stop(trainer: pl.Trainer) -> None:
        """End fitting after this step; a signal overrides ``min_steps`` / ``min_epochs``."""
        trainer.fit_loop.min_epochs = None
        trainer.fit_loop.epoch_loop.min_steps = None
        trainer.should_stop = True

    # ------------------------------------------------------------------ saving
    def save(self, trainer: pl.Trainer) -> None:
        """Save ``last.ckpt`` atomically (every rank calls this at the same step); no-op when this
        step is saved already or the trainer is not fitting."""
        if (not self.save_last or trainer.global_step == self.saved_step or trainer.sanity_checking
                or trainer.state.fn != TrainerFn.FITTING):
            return
        if trainer.is_global_zero:
            self.dirpath.mkdir(parents=True, exist_ok=True)
            atomic_checkpoint.prepare(self.path)
        trainer.strategy.barrier("last-checkpoint-prepare")
        started = time.monotonic()
        # every rank (DeepSpeed writes its part); the full state, so that --resume continues it; ends with a barrier
        trainer.save_checkpoint(atomic_checkpoint.partial_path(self.path), weights_only=False)
        if trainer.is_global_zero:
            atomic_checkpoint.commit(self.path)
        trainer.strategy.barrier("last-checkpoint-commit")
        self.saved_step = trainer.global_step
        self._last_save = time.monotonic()
        log.info("saved %s at global step %d in %.1f s", self.path, trainer.global_step, self._last_save - started)

    def stop_message(self, logdir: str | Path) -> str:
        """What to tell the user after a signal stopped training."""
        stopped = f"training stopped by {signal_name(self.stopped_by)} at global step {self.stopped_at_step}"
        if not self.save_last:
            return f"{stopped}; nothing was saved ({LAST_CHECKPOINT_KEY}.save_last is false)"
        return (f"{stopped}; {self.path} holds that step: continue with python train_ddp_spawn.py --resume {logdir} "
                "--train True")


def to_uint8(images: torch.Tensor, clamp: bool) -> torch.Tensor:
    """Float images (N, ...) -> uint8.

    ``clamp``: values are clamped to [-1, 1] and mapped to [0, 255]. Otherwise each image
    is min-max stretched to [0, 255], which shows out-of-range outputs instead of saturating them.
    """
    images = images.detach().float().cpu()
    if clamp:
        unit = (images.clamp(-1.0, 1.0) + 1.0) / 2.0
    else:
        flat = images.flatten(1)
        low = flat.amin(dim=1).reshape(-1, *([1] * (images.ndim - 1)))
        high = flat.amax(dim=1).reshape(-1, *([1] * (images.ndim - 1)))
        unit = (images - low) / (high - low).clamp_min(1e-8)
    return unit.mul(255.0).round().to(torch.uint8)


def write_image_grid(images: torch.Tensor, path: Path, clamp: bool) -> None:
    """Save (N, 3, H, W) images in [-1, 1] as one PNG grid (up to 8 per row)."""
    grid = make_grid(to_uint8(images, clamp), nrow=min(8, images.shape[0]), padding=0)
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(path)


def write_video_row(videos: torch.Tensor, path: Path, clamp: bool, fps: int = VIDEO_FPS) -> None:
    """Save (N, 3, T, H, W) clips in [-1, 1] as one mp4, the clips side by side."""
    frames = to_uint8(videos, clamp).permute(2, 3, 0, 4, 1)  # (T, H, N, W, 3)
    t, h, n, w, c = frames.shape
    write_mp4(np.ascontiguousarray(frames.reshape(t, h, n * w, c).numpy()), path, fps=fps)


def write_video_frames(videos: torch.Tensor, path: Path, clamp: bool) -> None:
    """Save (N, 3, T, H, W) clips in [-1, 1] as one PNG grid: one row per clip, its T frames left to right
    (what the image logger writes instead of an mp4 when no video writer is installed)."""
    n, c, t, h, w = videos.shape
    frames = videos.permute(0, 2, 1, 3, 4).reshape(n * t, c, h, w)
    grid = make_grid(to_uint8(frames, clamp), nrow=t, padding=0)
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(path)


def mp4_writer_problem() -> str | None:
    """Why mp4 files cannot be written here (e.g. imageio without its ffmpeg plugin), or None.

    Probes by writing a 2-frame 16x16 clip with :func:`~sgm.common.video_io.write_mp4` to a
    temporary file: the same call the logger makes, so a missing package, a missing ffmpeg binary
    or a missing codec all show; it takes a fraction of a second.
    """
    with tempfile.TemporaryDirectory(prefix="hi3d-mp4-probe-") as folder:
        try:
            write_mp4(np.zeros((2, 16, 16, 3), dtype=np.uint8), Path(folder) / "probe.mp4", fps=VIDEO_FPS)
        except Exception as err:  # any failure means: no mp4 here
            return f"{type(err).__name__}: {err}"
    return None


class ImageLogger(pl.Callback):
    """Every ``batch_frequency`` batches, call ``pl_module.log_images`` and save the results.

    Files go to ``<trainer.default_root_dir>/image_log/train/`` (rank 0 only): keys containing
    ``video`` (tensors (N, 3, T, H, W)) as mp4 at 6 fps, the others ((N, 3, H, W)) as PNG
    grids, named ``<key>_gs-<global step>_e-<epoch>_b-<batch index>``.

    Logging can never stop or hang training:

    - When fitting starts, a model without ``log_images`` is an :class:`ImageLoggerError` (on
      every rank, before step 0), and rank 0 checks that mp4 files can be written
      (:func:`mp4_writer_problem`); if not, it warns once, naming the ``imageio-ffmpeg`` package,
      and saves video keys as PNG frame grids (:func:`write_video_frames`) instead.
    - Any error inside a logging call (``log_images`` or writing the files) is logged as a
      warning with the global step and its traceback, once per distinct error, and training
      goes on.
    - ``log_images`` runs on rank 0 only, so it must not synchronise across ranks (no
      collectives, no ``self.log(..., sync_dist=True)``): the other ranks would wait for it
      forever. It is called on the bare LightningModule, not on the DDP/DeepSpeed wrapper, so no
      gradient or buffer synchronisation runs either.

    Args:
        batch_frequency: log when the step index is a multiple of this.
        max_images: at most this many images (or clips) per key.
        clamp: clamp to [-1, 1] before converting to 8 bits (else stretch each image's range).
        increase_log_steps: also log once at indices 1, 2, 4, ... below ``batch_frequency``.
        log_first_step: log at index 0.
        log_on_batch_idx: the index is the batch index within the epoch (else the global step).
        log_images_kwargs: keyword arguments of ``log_images`` (e.g. ``N``, ``sample``, ``ucg_keys``).
        disabled: never log.
    """

    def __init__(
        self,
        batch_frequency: int,
        max_images: int = 8,
        clamp: bool = True,
        increase_log_steps: bool = True,
        log_first_step: bool = False,
        log_on_batch_idx: bool = False,
        log_images_kwargs: dict | None = None,
        disabled: bool = False,
    ):
        super().__init__()
        if batch_frequency < 1:
            raise ValueError(f"ImageLogger: batch_frequency must be at least 1, got {batch_frequency}")
        self.batch_frequency = batch_frequency
        self.max_images = max_images
        self.clamp = clamp
        self.log_first_step = log_first_step
        self.log_on_batch_idx = log_on_batch_idx
        self.log_images_kwargs = dict(log_images_kwargs or {})
        self.disabled = disabled
        self.early_steps = {2**k for k in range(batch_frequency.bit_length()) if 2**k < batch_frequency}
        if not increase_log_steps:
            self.early_steps = set()
        self.videos_as_png = False
        self.reported_errors: set[tuple[str, str]] = set()

    def should_log(self, index: int) -> bool:
        """Whether step index ``index`` is logged (early power-of-two steps only once each)."""
        if self.disabled:
            return False
        if index == 0:
            return self.log_first_step
        if index in self.early_steps:
            self.early_steps.discard(index)
            return True
        return index % self.batch_frequency == 0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Refuse a model without ``log_images``; on rank 0, fall back to PNG when mp4 cannot be written."""
        if self.disabled:
            return
        if not callable(getattr(pl_module, "log_images", None)):
            raise ImageLoggerError(f"ImageLogger: {type(pl_module).__name__} has no log_images(batch, ...) method; "
                                   "remove lightning.callbacks.image_logger or set its params.disabled: true")
        if not trainer.is_global_zero:
            return
        problem = mp4_writer_problem()
        if problem is not None:
            self.videos_as_png = True
            log.warning("ImageLogger: cannot write mp4 videos (%s); video keys are saved as PNG frame grids "
                        "instead. Install the 'imageio-ffmpeg' package (pip install imageio-ffmpeg) for mp4 files.",
                        problem)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch: dict,
                           batch_idx: int) -> None:
        index = batch_idx if self.log_on_batch_idx else trainer.global_step
        if not self.should_log(index) or not trainer.is_global_zero:
            return
        try:
            self.log_batch(trainer, pl_module, batch, batch_idx)
        except Exception as err:  # a logging failure must not end the run (see the class docstring)
            self.report_failure(err, trainer.global_step)

    def report_failure(self, err: Exception, global_step: int) -> None:
        """Warn about a failed logging call, once per distinct error (type and message)."""
        key = (type(err).__name__, str(err))
        if key in self.reported_errors:
            log.debug("ImageLogger: logging at global step %d failed again: %s: %s", global_step, *key)
            return
        self.reported_errors.add(key)
        log.warning("ImageLogger: logging at global step %d failed (%s: %s); training goes on, and this error is "
                    "not reported again", global_step, *key, exc_info=err)

    def log_batch(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: dict, batch_idx: int) -> None:
        """Call ``log_images`` on ``batch`` (eval mode, no gradients) and write its results."""
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.no_grad(), trainer.precision_plugin.forward_context():
                images = pl_module.log_images(batch, **self.log_images_kwargs)
        finally:
            pl_module.train(was_training)
        folder = Path(trainer.default_root_dir) / "image_log" / "train"
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"gs-{trainer.global_step:06}_e-{trainer.current_epoch:06}_b-{batch_idx:06}"
        for key, tensor in images.items():
            tensor = tensor[: self.max_images]
            if "video" in key and self.videos_as_png:
                write_video_frames(tensor, folder / f"{key}_{stem}.png", self.clamp)
            elif "video" in key:
                write_video_row(tensor, folder / f"{key}_{stem}.mp4", self.clamp)
            else:
                write_image_grid(tensor, folder / f"{key}_{stem}.png", self.clamp)
        log.info("logged %s to %s (%s)", ", ".join(images), folder, stem)
