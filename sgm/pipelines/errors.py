"""Errors a user of the pipelines can cause and fix (bad input, bad option, existing results)."""


class UsageError(ValueError):
    """An input file or an option is unusable; the message says what was expected."""


class MissingCheckpointError(FileNotFoundError):
    """Released checkpoints expected in a folder are absent; the message names them and ckpts/README.md."""
