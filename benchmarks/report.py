"""Shared output of the benchmark scripts: one printed line, optionally one appended JSON line."""
from __future__ import annotations

import json
from pathlib import Path

import torch


def require_cuda() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("error: this benchmark needs a CUDA GPU")


def report(result: dict, json_path: Path | None) -> None:
    """Print ``result`` as ``key=value | ...`` and append it to ``json_path`` as one JSON line."""
    if json_path is not None:
        with json_path.open("a") as handle:
            handle.write(json.dumps(result) + "\n")
    print(" | ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))


@torch.no_grad()
def redraw_zero_parameters(module: torch.nn.Module, std: float = 0.02) -> None:
    """Redraw every all-zero parameter (zero-initialised output layers, norm biases) from N(0, std^2).

    With the zero-initialised output convolution a randomly built UNet returns exactly 0, so
    outputs of two execution modes would agree trivially; timings are unaffected.
    """
    for index, param in enumerate(module.parameters()):
        if not param.any():
            generator = torch.Generator(param.device).manual_seed(index)
            param.copy_(torch.randn(param.shape, generator=generator, device=param.device) * std)
