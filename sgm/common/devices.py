"""Which device a run uses: the one place that turns a ``--device`` value into a torch device."""
from __future__ import annotations

import torch

from .errors import DeviceError


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """``None`` / ``"auto"`` -> CUDA when present, else the CPU; an explicit CUDA request on a
    machine without CUDA is a :class:`DeviceError` naming the fix."""
    if name is None or str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"--device {name} requested but CUDA is not available on this machine (use --device cpu)")
    return device
