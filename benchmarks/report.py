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
