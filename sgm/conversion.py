"""SVD -> stage-2 (vid2vid) weight surgery, as pure functions of state dicts.

Stage 2 starts from SVD-XT with two tensors widened (reference section 11):

- the vector MLP input ``model.diffusion_model.label_emb.0.0.weight`` (out, D_svd): SVD's
  vector is ``[fps_id | motion_bucket_id | cond_aug]``, stage 2's is ``[elevation | cond_aug]``.
  Rule: the last ``kept_columns`` columns (cond_aug; its embedding width, 256 in Hi3D) are
  SVD's last ``kept_columns`` columns; the ``D_target - kept_columns`` leading columns (the
  new elevation slot) are zero, so the untouched network initially ignores elevation.
- the first convolution ``model.diffusion_model.input_blocks.0.0.weight`` (out, C_svd, k, k):
  SVD's input is ``[noisy latent | condition latent]``, stage 2's is ``[noisy latent | depth |
  condition latent]``. Rule: the first ``noisy_channels`` (the latent channels, 4) and the
  last ``C_svd - noisy_channels`` input channels are SVD's, the ``C_target - C_svd`` channels
  in between (depth, 9 in Hi3D) are zero.

Every other tensor the target has and SVD has with the same shape is copied; a shape clash on
any other key is an error. Only the tensors of modules SVD does not have (MiDaS, named by key
prefix) keep the target's values: any other target key missing from the input is an error, so
a file that is not SVD (or only part of it) never becomes a checkpoint of fresh random weights.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from .common.errors import CheckpointError

LABEL_EMB_KEY = "model.diffusion_model.label_emb.0.0.weight"
INPUT_CONV_KEY = "model.diffusion_model.input_blocks.0.0.weight"
SHOWN_KEYS = 5  # keys quoted in an error message before "... (N more)"


class ConversionError(CheckpointError):
    """The SVD weights cannot be mapped onto the target model."""


def widen_vector_columns(svd: torch.Tensor, target_shape: torch.Size, kept_columns: int) -> torch.Tensor:
    """(out, D_svd) -> (out, D_target): ``[zeros(out, D_target - kept) | svd[:, -kept:]]``."""
    out_features, target_width = target_shape
    if svd.ndim != 2 or svd.shape[0] != out_features:
        raise ConversionError(f"{LABEL_EMB_KEY}: SVD shape {tuple(svd.shape)} does not fit target "
                              f"{tuple(target_shape)}")
    if not 0 < kept_columns <= min(svd.shape[1], target_width):
        raise ConversionError(f"{LABEL_EMB_KEY}: cannot keep {kept_columns} columns of SVD width {svd.shape[1]} "
                              f"in target width {target_width}")
    new = svd.new_zeros(out_features, target_width - kept_columns)
    return torch.cat([new, svd[:, svd.shape[1] - kept_columns:]], dim=1)


def insert_input_channels(svd: torch.Tensor, target_shape: torch.Size, noisy_channels: int) -> torch.Tensor:
    """(out, C_svd, k, k) -> (out, C_target, k, k): ``[svd[:, :noisy] | zeros | svd[:, noisy:]]``."""
    out_channels, target_in = target_shape[:2]
    if svd.ndim != 4 or svd.shape[0] != out_channels or svd.shape[2:] != target_shape[2:]:
        raise ConversionError(f"{INPUT_CONV_KEY}: SVD shape {tuple(svd.shape)} does not fit target "
                              f"{tuple(target_shape)}")
    added = target_in - svd.shape[1]
    if added < 0 or not 0 < noisy_channels <= svd.shape[1]:
        raise ConversionError(f"{INPUT_CONV_KEY}: cannot split SVD's {svd.shape[1]} input channels after "
                              f"{noisy_channels} and widen them to {target_in}")
    zeros = svd.new_zeros(out_channels, added, *svd.shape[2:])
    return torch.cat([svd[:, :noisy_channels], zeros, svd[:, noisy_channels:]], dim=1)


def _quote(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:SHOWN_KEYS])
    return shown + (f", ... ({len(keys) - SHOWN_KEYS} more)" if len(keys) > SHOWN_KEYS else "")


def _top_level(keys: Iterable[str]) -> list[str]:
    """The distinct first two dotted parts of ``keys`` (``model.diffusion_model``, ...), sorted."""
    return sorted({".".join(key.split(".")[:2]) for key in keys})


def check_coverage(svd: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                   not_in_svd: Sequence[str] = ()) -> None:
    """Refuse an input that lacks any target key SVD has (every key not under a ``not_in_svd`` prefix).

    Raises:
        ConversionError: naming how many keys are missing and the first of them; when the input
            shares no key at all with the target, also the key families each side has.
    """
    prefixes = tuple(not_in_svd)
    expected = [key for key in target if not (prefixes and key.startswith(prefixes))]
    missing = [key for key in expected if key not in svd]
    if not missing:
        return
    message = (f"the input lacks {len(missing)} of the {len(expected)} model weights SVD-XT provides: "
               f"{_quote(missing)}")
    if len(missing) == len(expected):
        message += (f". It shares no key with the model, so it is not SVD-XT weights "
                    f"(svd_xt_image_decoder.safetensors): the model's keys start with "
                    f"{_quote(_top_level(expected))}; the input's with {_quote(_top_level(svd)) or 'nothing'}")
    raise ConversionError(message)


@dataclass
class ConversionReport:
    """Keys copied from SVD unchanged, widened (changed), kept from the target (added), and
    SVD keys the target does not have (dropped)."""

    copied: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    def describe(self) -> str:
        lines = [f"copied from SVD: {len(self.copied)}", f"changed (widened): {len(self.changed)}",
                 f"added (not in SVD, kept from the model as built): {len(self.added)}",
                 f"dropped (in SVD, not in the model): {len(self.dropped)}"]
        lines += [f"  changed: {key}" for key in self.changed]
        return "\n".join(lines)


def convert_svd_state_dict(
    svd: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    kept_columns: int,
    noisy_channels: int,
    not_in_svd: Sequence[str] = (),
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """The target's state dict filled from SVD (see the module docstring).

    Args:
        svd: SVD's weights.
        target: the freshly built stage-2 model's ``state_dict()`` (defines keys, shapes, dtypes).
        kept_columns: width of the cond_aug embedding (last vector slot in both layouts).
        noisy_channels: latent channels of the noisy input (the UNet's output channels).
        not_in_svd: key prefixes of the target's modules SVD does not have (their values are kept).

    Returns:
        (state dict in the target's dtypes, report).

    Raises:
        ConversionError: when SVD lacks a target key outside ``not_in_svd`` (see
            :func:`check_coverage`), or on a shape clash outside the two widened tensors.
    """
    check_coverage(svd, target, not_in_svd)
    state, report = {}, ConversionReport()
    for key, fresh in target.items():
        if key not in svd:
            state[key] = fresh
            report.added.append(key)
            continue
        source = svd[key].to(dtype=fresh.dtype)
        if source.shape == fresh.shape:
            state[key] = source
            report.copied.append(key)
        elif key == LABEL_EMB_KEY:
            state[key] = widen_vector_columns(source, fresh.shape, kept_columns)
            report.changed.append(key)
        elif key == INPUT_CONV_KEY:
            state[key] = insert_input_channels(source, fresh.shape, noisy_channels)
            report.changed.append(key)
        else:
            raise ConversionError(f"{key}: SVD shape {tuple(source.shape)} vs model {tuple(fresh.shape)}")
    report.dropped = sorted(set(svd) - set(target))
    return state, report
