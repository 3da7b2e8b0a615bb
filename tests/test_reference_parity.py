"""Our modules against the official release's numerics, case by case.

Cases, shapes and settings come from ``$HI3D_REFERENCE_DIR/cases.json`` (default
``../shared/reference/public``); each case's tensors from ``<case>.safetensors``.
Tolerance: max abs error <= 1e-4 * max(1, max |expected|), float32 on the CPU.
"""
from __future__ import annotations

import functools
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import reference_dir
from parity_runners import RUNNERS


def _cases() -> dict:
    path = reference_dir() / "cases.json"
    if not path.is_file():
        raise FileNotFoundError(f"reference cases not found: {path} (set HI3D_REFERENCE_DIR)")
    return json.loads(path.read_text())


CASES = _cases()


@functools.lru_cache(maxsize=None)
def load_case(name: str) -> dict[str, torch.Tensor]:
    return load_file(str(reference_dir() / f"{name}.safetensors"))


def assert_close(name: str, ours: torch.Tensor, expected: torch.Tensor) -> None:
    assert tuple(ours.shape) == tuple(expected.shape), f"{name}: shape {tuple(ours.shape)} != {tuple(expected.shape)}"
    ours = ours.detach().to(torch.float64)
    expected = expected.to(torch.float64)
    tolerance = 1e-4 * max(1.0, expected.abs().max().item())
    error = (ours - expected).abs().max().item()
    assert error <= tolerance, f"{name}: max abs error {error:.3e} > tolerance {tolerance:.3e}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_reference_case(case: str) -> None:
    if case not in RUNNERS:
        pytest.fail(f"no runner for reference case {case!r}: add one to tests/parity_runners.py")
    tensors = load_case(case)
    ours = RUNNERS[case](CASES[case]["config"], tensors, load_case, CASES)
    expected = {k[len("out."):]: v for k, v in tensors.items() if k.startswith("out.")}
    assert set(ours) == set(expected), f"outputs {sorted(ours)} != expected {sorted(expected)}"
    for key in sorted(expected):
        assert_close(f"{case}/{key}", ours[key], expected[key])
