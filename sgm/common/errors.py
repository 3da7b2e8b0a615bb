"""Errors a user can cause and fix, shared by every layer (bad input or option, existing
results, unreadable weights, a missing device), and the tuple the command lines report in one
line with exit code 2 (anything else is a bug and keeps its traceback)."""
from __future__ import annotations


class ConfigError(ValueError):
    """A config node is malformed or names something that cannot be imported."""


class UsageError(ValueError):
    """An input file or an option is unusable; the message says what was expected."""


class MissingCheckpointError(FileNotFoundError):
    """Released checkpoints expected in a folder are absent; the message names them and ckpts/README.md."""


class NonFiniteOutputError(RuntimeError):
    """A stage decoded NaN or inf values; nothing of the run was written (the message says what to try)."""


class OutputExistsError(FileExistsError):
    """The output folder already holds results of the stage about to run."""


class OutputDirError(UsageError):
    """The output folder cannot be created or written to; the message names the folder and why."""


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read, or does not fit the model."""


class DeviceError(RuntimeError):
    """The requested device is not available."""


USER_ERRORS = (FileNotFoundError, OutputExistsError, UsageError, CheckpointError, ConfigError, DeviceError,
               NonFiniteOutputError)
