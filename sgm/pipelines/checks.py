"""Checks of the numbers going into a run (its settings) and coming out of it (decoded frames).

Both run before anything is written: settings before any file is read or model built, frames
before they become pixels on disk.
"""
from __future__ import annotations

import logging
import math
import operator
from dataclasses import asdict, dataclass

import torch

from ..common.errors import NonFiniteOutputError, UsageError
from ..common.orbit import TRAINED_ELEVATION_RANGE_DEG

log = logging.getLogger(__name__)

# Seeds are those torch.Generator.manual_seed accepts without wrapping: unsigned 64-bit.
SEED_MAX = 2**64 - 1


@dataclass(frozen=True)
class RunSettings:
    """Checked settings of one run of the diffusion stages.

    Attributes:
        elevation_deg: camera elevation of the input view, degrees (finite).
        seed: integer in 0..:data:`SEED_MAX`; None when the caller passed its own ``torch.Generator``.
        num_steps: sampler steps (>= 1), None for the config's.
        min_cfg, max_cfg: guidance scale of the first / last frame (finite), None for the config's.
    """

    elevation_deg: float
    seed: int | None
    num_steps: int | None
    min_cfg: float | None
    max_cfg: float | None

    def as_dict(self) -> dict:
        """Plain JSON-ready values (None: the config's value)."""
        return asdict(self)


def _finite(value, name: str, flag: str, unit: str = "") -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{name} ({flag}) must be a number{unit}, got {value!r}") from None
    if not math.isfinite(number):
        raise UsageError(f"{name} ({flag}) must be a finite number{unit}, got {number}")
    return number


def _optional_finite(value, name: str, flag: str) -> float | None:
    return None if value is None else _finite(value, name, flag)


def check_seed(seed) -> int:
    """``seed`` as an int in 0..:data:`SEED_MAX` (a named UsageError otherwise)."""
    try:
        number = operator.index(seed)
    except TypeError:
        raise UsageError(f"seed (--seed) must be an integer in 0..{SEED_MAX}, got {seed!r}") from None
    if not 0 <= number <= SEED_MAX:
        raise UsageError(f"seed (--seed) must be an integer in 0..{SEED_MAX} (2^64-1), got {number}")
    return number


def check_steps(num_steps) -> int | None:
    """``num_steps`` as an int >= 1, or None (the config's)."""
    if num_steps is None:
        return None
    try:
        steps = operator.index(num_steps)
    except TypeError:
        raise UsageError(f"num_steps (--num_steps) must be an integer >= 1, got {num_steps!r}") from None
    if steps < 1:
        raise UsageError(f"num_steps (--num_steps) must be >= 1, got {steps}")
    return steps


def check_settings(elevation_deg, seed, num_steps=None, min_cfg=None, max_cfg=None) -> RunSettings:
    """Refuse non-finite, non-integer or out-of-range settings; warn about untrained elevations.

    ``seed`` None: the caller draws from its own generator (recorded as such).

    Raises:
        UsageError: naming the setting, its flag and the value expected.
    """
    elevation = _finite(elevation_deg, "elevation_deg", "--elevation", " of degrees")
    low, high = TRAINED_ELEVATION_RANGE_DEG  # the training rings' elevations; others run with a warning
    if not low <= elevation <= high:
        log.warning("elevation %g degrees is outside the range the models were trained on (%g to %g degrees): "
                    "the views will likely be poor", elevation, low, high)
    return RunSettings(elevation_deg=elevation, seed=None if seed is None else check_seed(seed),
                       num_steps=check_steps(num_steps),
                       min_cfg=_optional_finite(min_cfg, "min_cfg", "--min_cfg"),
                       max_cfg=_optional_finite(max_cfg, "max_cfg", "--max_cfg"))


def require_finite_frames(frames: torch.Tensor, stage: str, dtype: torch.dtype) -> torch.Tensor:
    """Return decoded frames (T, 3, H, W) unchanged if every value is finite, else raise.

    Raises:
        NonFiniteOutputError: naming the stage, the count of NaN/inf values and what to try.
    """
    bad = int((~torch.isfinite(frames)).sum())
    if bad:
        hint = (" Half precision can overflow: try --dtype float32." if dtype in (torch.float16, torch.bfloat16)
                else " The model weights may be broken.")
        raise NonFiniteOutputError(f"{stage} produced {bad} non-finite values (NaN or inf) in its {frames.shape[0]} "
                                   f"decoded frames; nothing was written.{hint}")
    return frames
