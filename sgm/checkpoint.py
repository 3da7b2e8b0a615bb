"""Reading checkpoints in the three layouts Hi3D meets, and loading them strictly.

Layouts (chosen by file suffix and content):

- ``.safetensors``: a flat state dict (SVD's ``svd_xt_image_decoder.safetensors``, our conversions).
- ``.ckpt``: a Lightning checkpoint whose ``state_dict`` holds the weights.
- ``.pt``: a DeepSpeed model-states file whose ``module`` dict holds the weights behind a
  ``module.`` prefix (the released ``first_stage.pt`` / ``second_stage.pt``); a plain state
  dict saved as ``.pt`` is accepted too.
- ``.bin`` / ``.pth``: a plain ``torch.save`` state dict.
- a folder: a DeepSpeed ZeRO stage 1/2 checkpoint (Lightning's ``last.ckpt/`` under
  ``deepspeed_stage_2``), read by :mod:`sgm.zero_checkpoint` (float32 master weights).

A path may also be a hub reference (``hf://OWNER/NAME/FILE``, :mod:`sgm.hub`): the file is
downloaded into the hub cache first.

Loading is strict by default: missing, unexpected and shape-mismatched keys are reported by
name. A partial load must be asked for explicitly with ``allow_missing`` prefixes.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from .common.errors import CheckpointError
from .hub import local_path
from .zero_checkpoint import ZeroCheckpointError, read_zero_checkpoint

log = logging.getLogger(__name__)

DEEPSPEED_PREFIX = "module."
SUFFIXES = (".safetensors", ".ckpt", ".pt", ".bin", ".pth")


def _torch_load(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling refused, truncated file, not a torch file...
        raise CheckpointError(
            f"cannot read {path} as a torch checkpoint with weights_only=True ({type(err).__name__}: {err}). "
            "If the file is trusted and holds pickled Python objects, re-save its state_dict with torch.save."
        ) from err


def _strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read the flat ``{key: tensor}`` weights of a checkpoint file (on the CPU).

    ``path`` is a file, a DeepSpeed folder or an ``hf://`` hub reference (:func:`sgm.hub.local_path`).

    Raises:
        FileNotFoundError: if ``path`` does not exist (:class:`sgm.hub.HubFileError` for a hub
            file that cannot be had, naming where to get it).
        CheckpointError: if the suffix is unknown, the content is not a state dict, or a folder
            is not a readable DeepSpeed checkpoint.
    """
    path = local_path(path)
    if path.is_dir():
        try:
            return read_zero_checkpoint(path)
        except ZeroCheckpointError as err:
            raise CheckpointError(str(err)) from err
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise CheckpointError(f"{path}: unknown checkpoint suffix {suffix!r} (expected one of {', '.join(SUFFIXES)})")
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except SafetensorError as err:
            raise CheckpointError(f"cannot read {path} as a .safetensors checkpoint ({err}): the file is damaged or "
                                  "not a safetensors file") from err
    content = _torch_load(path)
    if not isinstance(content, Mapping):
        raise CheckpointError(f"{path}: expected a dict, found {type(content).__name__}")
    if "state_dict" in content:  # Lightning
        content = content["state_dict"]
    elif "module" in content and isinstance(content["module"], Mapping):  # DeepSpeed model states
        content = _strip_prefix(content["module"], DEEPSPEED_PREFIX)
    tensors = {k: v for k, v in content.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: no tensors found (top-level keys: {sorted(content)[:10]})")
    return tensors


@dataclass
class LoadReport:
    """What a load found: keys the model lacks in the file, extra file keys, and shape clashes."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self, limit: int = 20) -> str:
        lines = []
        for title, items in (("missing from the checkpoint", self.missing), ("unexpected in the checkpoint", self.unexpected)):
            if items:
                shown = ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")
                lines.append(f"{len(items)} keys {title}: {shown}")
        if self.mismatched:
            shown = "; ".join(f"{k}: checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in self.mismatched[:limit])
            lines.append(f"{len(self.mismatched)} shape mismatches: {shown}")
        return "\n".join(lines) if lines else "all keys match"


def compare_state_dicts(
    model_state: Mapping[str, torch.Tensor], checkpoint: Mapping[str, torch.Tensor]
) -> LoadReport:
    """Key-by-key comparison of a model's state dict with a checkpoint's."""
    report = LoadReport(
        missing=sorted(set(model_state) - set(checkpoint)),
        unexpected=sorted(set(checkpoint) - set(model_state)),
    )
    for key in sorted(set(model_state) & set(checkpoint)):
        want, have = tuple(model_state[key].shape), tuple(checkpoint[key].shape)
        if want != have:
            report.mismatched.append((key, have, want))
    return report


def load_into(
    model: nn.Module,
    checkpoint: Mapping[str, torch.Tensor],
    allow_missing: Iterable[str] = (),
    source: str = "checkpoint",
) -> LoadReport:
    """Copy ``checkpoint`` into ``model`` (values are cast to the model's dtypes).

    Args:
        allow_missing: key prefixes the checkpoint may lack (their weights stay as built,
            e.g. encoders loaded from their own files). Everything else must match exactly.
        source: name used in messages (usually the file path).

    Raises:
        CheckpointError: on any missing (outside ``allow_missing``), unexpected or
            shape-mismatched key, listing them by name.
    """
    prefixes = tuple(allow_missing)
    report = compare_state_dicts(model.state_dict(), checkpoint)
    tolerated = [k for k in report.missing if prefixes and k.startswith(prefixes)]
    report.missing = [k for k in report.missing if k not in set(tolerated)]
    if not report.ok:
        raise CheckpointError(f"{source} does not fit {type(model).__name__}:\n{report.describe()}")
    model.load_state_dict(dict(checkpoint), strict=not tolerated)
    if tolerated:
        log.info("%s: %d keys under %s kept from construction", source, len(tolerated), ", ".join(prefixes))
    return report


def load_checkpoint(model: nn.Module, path: str | Path, allow_missing: Iterable[str] = ()) -> LoadReport:
    """Read ``path`` in any supported layout and load it into ``model`` (see :func:`load_into`)."""
    return load_into(model, read_state_dict(path), allow_missing=allow_missing, source=str(path))
