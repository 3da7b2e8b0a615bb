"""The state a call runs in, to run it again elsewhere: in another thread or another process.

Grad mode and autocast are per thread, so a worker thread must enter the caller's; a compiled graph
is also specialised on them and on the precision settings of matrix products, so a child process
that compiles for its parent must run in the parent's.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch


def map_tensors(value: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``value`` with ``fn`` applied to every tensor in it (also inside tuples, lists and dicts)."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, (tuple, list)):
        return type(value)(map_tensors(item, fn) for item in value)
    if isinstance(value, dict):
        return {key: map_tensors(item, fn) for key, item in value.items()}
    return value


# Precision settings of matrix products that torch's compiled-graph cache is keyed on.
MATMUL_SETTINGS = ("fp32_precision", "allow_fp16_reduced_precision_reduction", "allow_bf16_reduced_precision_reduction")


def call_state(device_type: str) -> dict:
    """The state a compiled graph is specialised on beside its inputs: grad mode, autocast, and the
    precision settings of matrix products and cuDNN."""
    matmul = torch.backends.cuda.matmul
    return {"device_type": device_type, "grad": torch.is_grad_enabled(),
            "autocast": torch.is_autocast_enabled(device_type),
            "autocast_dtype": str(torch.get_autocast_dtype(device_type)).removeprefix("torch."),
            "matmul": {name: getattr(matmul, name) for name in MATMUL_SETTINGS if hasattr(matmul, name)},
            "cudnn_tf32": torch.backends.cudnn.allow_tf32}


@contextlib.contextmanager
def entered(state: dict):
    """Enter the grad mode and autocast of a :func:`call_state` (both are per thread)."""
    autocast_dtype = getattr(torch, state["autocast_dtype"])
    with torch.set_grad_enabled(state["grad"]), torch.autocast(state["device_type"], dtype=autocast_dtype,
                                                               enabled=state["autocast"]):
        yield


def set_precision(state: dict) -> None:
    """Take over the precision settings of a :func:`call_state` (process-wide)."""
    # Set only where the parent's differ: setting a flag to the value it has can still change the
    # precision state that torch's compiled-graph cache is keyed on.
    for name, value in state["matmul"].items():
        if getattr(torch.backends.cuda.matmul, name) != value:
            setattr(torch.backends.cuda.matmul, name, value)
    if torch.backends.cudnn.allow_tf32 != state["cudnn_tf32"]:
        torch.backends.cudnn.allow_tf32 = state["cudnn_tf32"]
