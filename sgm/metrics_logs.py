"""The metrics logger of a run folder, continuing the history of a resumed run.

A resumed run (``--resume``) logs into the same run folder. TensorBoard writes a new event file
beside the earlier ones, and TensorBoard shows them as one history. Lightning's CSV logger instead
deletes an existing ``metrics.csv`` when it starts (it rewrites the file from the rows it holds in
memory), so every step logged before the resume would be lost. :class:`ContinuingCSVLogger` keeps
the file and appends to it: the earlier rows stay, the header is the union of the columns (the
file is rewritten with the wider header, rows kept, when a new metric appears).

Steps that were trained after the last saved checkpoint and lost with the killed process are
logged again after the resume: their old rows stay (nothing written is deleted) and the new rows
follow them, so for a repeated step the later row is the one of the run that continued.
"""
from __future__ import annotations

import csv
import importlib.util
import logging
import os
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment

log = logging.getLogger(__name__)


class ContinuingExperimentWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an existing ``metrics.csv`` is continued, not deleted."""

    def _check_log_dir_exists(self) -> None:
        # Lightning's version deletes metrics.csv here. Instead: adopt its columns, so that appended
        # rows line up (and a new column rewrites the file with every earlier row kept).
        path = Path(self.metrics_file_path)
        if not path.is_file() or path.stat().st_size == 0:
            return
        with path.open("rb+") as file:  # a row cut short by a killed process: end it, keep it
            file.seek(-1, os.SEEK_END)
            if file.read(1) not in (b"\n", b"\r"):
                file.write(b"\n")
        with path.open(newline="") as file:
            header = next(csv.reader(file), [])
        self.metrics_keys = list(header)
        log.info("continuing %s (%d columns)", path, len(header))


class ContinuingCSVLogger(CSVLogger):
    """:class:`~pytorch_lightning.loggers.CSVLogger` writing through :class:`ContinuingExperimentWriter`."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ContinuingExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = ContinuingExperimentWriter(log_dir=self.log_dir)
        return self._experiment


def tensorboard_installed() -> bool:
    """Whether ``tensorboard`` or ``tensorboardX`` is installed (Lightning's TensorBoard logger needs one)."""
    return any(importlib.util.find_spec(name) is not None for name in ("tensorboard", "tensorboardX"))


def metrics_logger(logdir: str | Path) -> pl.loggers.Logger:
    """TensorBoard (``logdir/tensorboard/``) when :func:`tensorboard_installed`, else CSV
    (``logdir/csv/metrics.csv``); both continue the history of a resumed run."""
    if tensorboard_installed():
        return TensorBoardLogger(save_dir=str(logdir), name="tensorboard", version="")
    return ContinuingCSVLogger(save_dir=str(logdir), name="csv", version="")
