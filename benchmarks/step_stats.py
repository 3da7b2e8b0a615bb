"""A training callback for benchmarks: per-rank step times and peak GPU memory, written as JSON.

Added to a training run from the command line (``benchmarks/`` on ``PYTHONPATH``)::

    python train_ddp_spawn.py --base configs/train-v01.yaml ... \\
        lightning.callbacks.step_stats.target=step_stats.StepStats \\
        lightning.callbacks.step_stats.params.out_dir=outputs/bench lightning.callbacks.step_stats.params.tag=ddp

Each rank writes ``<out_dir>/<tag>-rank<r>.json`` when training ends: the wall time of every
optimizer step in seconds (from the end of the previous step to the end of this one, the GPU
synchronised, so data loading and communication are included), the peak GPU memory allocated
and reserved in GiB (reset after ``warmup_steps``, so the figures are those of steady training),
the clips per step of this rank, the strategy, precision and world size.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytorch_lightning as pl
import torch


class StepStats(pl.Callback):
    """Record step times and peak memory of each rank (see the module docstring).

    Args:
        out_dir: folder of the JSON files.
        tag: file-name prefix.
        warmup_steps: steps after which the peak-memory counters are reset.
    """

    def __init__(self, out_dir: str, tag: str, warmup_steps: int = 3):
        super().__init__()
        self.out_dir, self.tag, self.warmup_steps = Path(out_dir), tag, warmup_steps
        self.step_seconds: list[float] = []
        self.clips_per_step = 0
        self.losses: list[float] = []
        self._last = 0.0
        self._start = 0.0

    def _sync(self, pl_module: pl.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sync(pl_module)
        self._start = self._last = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._sync(pl_module)
        now = time.perf_counter()
        self.step_seconds.append(now - self._last)
        self._last = now
        self.clips_per_step = int(batch[pl_module.input_key].shape[0])
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None:
            self.losses.append(float(loss))
        if len(self.step_seconds) == self.warmup_steps and pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        cuda = pl_module.device.type == "cuda"
        record = {
            "rank": trainer.global_rank, "world_size": trainer.world_size,
            "strategy": type(trainer.strategy).__name__, "precision": str(trainer.precision),
            "clips_per_step": self.clips_per_step, "global_step": trainer.global_step,
            "step_seconds": self.step_seconds, "losses": self.losses,
            "train_seconds": time.perf_counter() - self._start,
            "peak_allocated_gib": torch.cuda.max_memory_allocated(pl_module.device) / 2**30 if cuda else None,
            "peak_reserved_gib": torch.cuda.max_memory_reserved(pl_module.device) / 2**30 if cuda else None,
            "device": torch.cuda.get_device_name(pl_module.device) if cuda else "cpu",
        }
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"{self.tag}-rank{trainer.global_rank}.json").write_text(json.dumps(record))
