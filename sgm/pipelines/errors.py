"""Errors a user of the pipelines can cause and fix (bad input, bad option, existing results, broken weights)."""


class UsageError(ValueError):
    """An input file or an option is unusable; the message says what was expected."""


class MissingCheckpointError(FileNotFoundError):
    """Released checkpoints expected in a folder are absent; the message names them and ckpts/README.md."""


class NonFiniteOutputError(RuntimeError):
    """A stage decoded NaN or inf values; nothing of the run was written (the message says what to try)."""
