"""Pretrained weights for the conditioning embedders: resolving, reading, strict loading, freezing.

Every constructor argument that points at a weights file is called ``version`` or ends in
``_version``. ``None`` means "keep the random initialisation" (architecture only, no file is
read); anything else is a path that must exist, relative to the working directory.

Files are read by :func:`sgm.checkpoint.read_state_dict` (``torch.load(weights_only=True)``,
safetensors, Lightning/DeepSpeed containers) and loaded strictly by
:func:`sgm.checkpoint.load_into`. On top of that, TorchScript archives (OpenAI's CLIP
``ViT-L-14.pt``) are read through ``torch.jit.load(...).state_dict()``, and file keys of parts an
embedder deletes on purpose (CLIP's text transformer) can be discarded before matching.
"""
from __future__ import annotations

import contextlib
import contextvars

import zipfile
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn as nn

from sgm.checkpoint import load_into, read_state_dict
from sgm.modules.encoders.base import AbstractEmbModel

CHECKPOINT_HELP = "see README.md section 'Checkpoints' (ckpts/README.md lists every file)"


class MissingPretrainedError(FileNotFoundError):
    """A configured pretrained-weights file does not exist."""

    def __init__(self, path: Path, config_key: str):
        self.path = Path(path)
        self.config_key = config_key
        super().__init__(
            f"pretrained weights file {str(self.path)!r} (config key {config_key}) does not exist; "
            f"{CHECKPOINT_HELP}. Set the key to null to build the network with random weights."
        )


def _is_torchscript_archive(path: Path) -> bool:
    """TorchScript archives are zip files holding compiled ``code/`` and a ``constants.pkl``."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.rsplit("/", 1)[-1] == "constants.pkl" or "/code/" in name for name in archive.namelist())


def read_pretrained_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file on the CPU: a TorchScript archive's ``state_dict()``, or whatever
    :func:`sgm.checkpoint.read_state_dict` reads."""
    path = Path(path)
    if _is_torchscript_archive(path):
        return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    return read_state_dict(path)


_RANDOM_WEIGHTS: contextvars.ContextVar[bool] = contextvars.ContextVar("hi3d_random_pretrained", default=False)


@contextlib.contextmanager
def random_pretrained_weights():
    """Within this context, embedders keep their random initialisation and read no weight file.

    The switch behind the config key ``model.random_pretrained_encoders`` (tests, demos,
    meta-device inspection, and loading a full checkpoint that holds the encoders anyway).
    """
    token = _RANDOM_WEIGHTS.set(True)
    try:
        yield
    finally:
        _RANDOM_WEIGHTS.reset(token)


def load_pretrained(
    module: nn.Module,
    version: str | Path | None,
    config_key: str,
    *,
    discard_prefixes: Iterable[str] = (),
    discard_keys: Iterable[str] = (),
) -> bool:
    """Load the weights file ``version`` into ``module`` with strict key matching.

    Args:
        module: network whose ``state_dict()`` keys the file must match.
        version: path of the weights file, or ``None`` to keep the random initialisation.
        config_key: human-readable config key that set ``version`` (named in errors).
        discard_prefixes: file keys starting with one of these are dropped before matching
            (parts the embedder deletes on purpose, e.g. CLIP's text ``transformer.``).
        discard_keys: exact file keys dropped before matching (non-weight metadata).

    Returns:
        ``True`` if weights were loaded, ``False`` for ``version=None`` or inside
        :func:`random_pretrained_weights`.

    Raises:
        MissingPretrainedError: the file does not exist.
        sgm.checkpoint.CheckpointError: the file is unreadable or its keys/shapes do not match
            (offending keys listed by name).
    """
    if version is None or _RANDOM_WEIGHTS.get():
        return False
    path = Path(version)
    if not path.is_file():
        raise MissingPretrainedError(path, config_key)
    prefixes = tuple(discard_prefixes)
    dropped = set(discard_keys)
    state_dict = {
        k: v for k, v in read_pretrained_state_dict(path).items() if k not in dropped and not k.startswith(prefixes)
    }
    load_into(module, state_dict, source=f"{path} ({config_key})")
    return True


class FrozenEmbModel(AbstractEmbModel):
    """An embedder wrapping pretrained networks that can be frozen.

    Frozen means: every parameter has ``requires_grad=False`` and the module stays in eval
    mode, also after ``.train()`` (which is how Lightning switches modes). Subclasses build
    their networks and then call :meth:`freeze` when asked to.
    """

    def __init__(self) -> None:
        super().__init__()
        self.frozen = False

    def freeze(self) -> None:
        """Stop gradients to all parameters and switch to eval mode for good."""
        self.frozen = True
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FrozenEmbModel:
        return super().train(mode and not self.frozen)
