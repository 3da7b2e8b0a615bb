"""CUDA-graph replay of a training loss: its forward and backward captured once, replayed each step.

A full-size training step issues about 16,000 kernels; launching them one by one from Python
takes longer than the GPU needs to run them (BENCHMARKS.md), so the GPU waits for the CPU. A CUDA
graph launches the whole forward, and then the whole backward, in one call each.

:class:`GraphedLoss` wraps ``loss_fn(batch) -> scalar`` with ``torch.cuda.make_graphed_callables``:
the first call captures, later calls copy the batch's tensors into the graph's input buffers and
replay. The gradients reach the parameters' ``.grad`` through autograd as usual, so the optimizer,
gradient scaling and clipping stay eager and unchanged.

What a graph fixes at capture, and the rules that follow:

- tensor shapes, dtypes and devices of the batch: a later batch that differs raises (use
  ``drop_last`` and one resolution);
- Python scalars of the batch (e.g. ``num_video_frames``): a later batch must have the same values;
  other non-tensor values (e.g. caption lists) are compared by type and length only, so the loss
  must not read them;
- the parameters' storage: nothing may replace a parameter's tensor after capture (moving the
  model to another device does): a later call then raises;
- the gradient buffers: each backward writes the same buffers, which the parameters' ``.grad``
  may alias, so gradients must be cleared (``zero_grad``) after every optimizer step: no gradient
  accumulation over several backwards.

Random numbers (noise levels, condition noise, dropout of conditions) are drawn anew at every
replay from the default CUDA generator, as in eager mode.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

SCALAR_TYPES = (bool, int, float, str, type(None))


def batch_signature(batch: dict) -> tuple:
    """What a captured graph fixes of ``batch``, comparable with ``==``.

    Tensors give (key, shape, dtype, device); Python scalars give (key, value); other values give
    (key, type name, length if any).
    """
    signature = []
    for key in sorted(batch):
        value = batch[key]
        if isinstance(value, torch.Tensor):
            signature.append((key, tuple(value.shape), value.dtype, value.device))
        elif isinstance(value, SCALAR_TYPES):
            signature.append((key, value))
        else:
            signature.append((key, type(value).__name__, len(value) if hasattr(value, "__len__") else None))
    return tuple(signature)


def describe_difference(captured: tuple, given: tuple) -> str:
    """The first entries in which two :func:`batch_signature` values differ, readable."""
    captured_by_key, given_by_key = {e[0]: e for e in captured}, {e[0]: e for e in given}
    lines = []
    for key in sorted(set(captured_by_key) | set(given_by_key)):
        before, now = captured_by_key.get(key), given_by_key.get(key)
        if before != now:
            lines.append(f"{key!r}: captured {before[1:] if before else 'absent'}, now {now[1:] if now else 'absent'}")
    return "; ".join(lines[:4])


class _LossOfTensors(nn.Module):
    """``loss_fn(batch)`` as a module called with the batch's tensors only (what
    ``make_graphed_callables`` accepts); the parameters of ``owner`` are the graph's other inputs."""

    def __init__(self, owner: nn.Module, loss_fn: Callable[[dict], torch.Tensor], keys: list[str], constants: dict):
        super().__init__()
        self.owner = owner
        self.loss_fn = loss_fn
        self.keys = keys
        self.constants = constants

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.loss_fn({**self.constants, **dict(zip(self.keys, tensors))})


def _autocast_without_cache(device_type: str):
    """The current autocast state of ``device_type`` with the weight-cast cache off (a graph
    cannot keep casts cached outside it)."""
    return torch.autocast(device_type, dtype=torch.get_autocast_dtype(device_type),
                          enabled=torch.is_autocast_enabled(device_type), cache_enabled=False)


class GraphedLoss:
    """``loss_fn(batch)`` replayed from a CUDA graph of its forward and backward.

    Args:
        owner: the module whose parameters ``loss_fn`` uses (those with ``requires_grad`` get
            gradients).
        loss_fn: ``batch -> scalar loss`` of CUDA tensors; no host synchronisation inside.
        warmup_iters: eager forward/backward runs on a side stream before capture (lazy
            initialisation, cuDNN autotuning and ``torch.compile`` happen there).

    The first call captures (it takes the time of ``warmup_iters + 2`` steps, plus compilation)
    under the caller's autocast state; see the module docstring for what is fixed from then on.
    Returns the loss as a new tensor each call.
    """

    def __init__(self, owner: nn.Module, loss_fn: Callable[[dict], torch.Tensor], warmup_iters: int = 3):
        self.owner = owner
        self.loss_fn = loss_fn
        self.warmup_iters = warmup_iters
        self.signature: tuple | None = None
        self._keys: list[str] = []
        self._graphed: Callable[..., torch.Tensor] | None = None
        self._parameter_addresses: list[int] = []

    @property
    def captured(self) -> bool:
        return self._graphed is not None

    def __call__(self, batch: dict[str, Any]) -> torch.Tensor:
        signature = batch_signature(batch)
        if self._graphed is None:
            self._capture(batch, signature)
        elif self._current_parameter_addresses() != self._parameter_addresses:
            raise RuntimeError("the parameters of the CUDA-graphed training loss were moved or replaced since "
                               "its capture (e.g. the model went to another device); the graph would read stale "
                               "memory: build a new GraphedLoss")
        elif signature != self.signature:
            raise ValueError(
                "the CUDA-graphed training loss was captured for batches of another form: "
                f"{describe_difference(self.signature, signature)}. A graph replays fixed shapes and "
                "values; give every batch the same size (drop_last=True) and resolution"
            )
        return self._graphed(*(batch[key] for key in self._keys)).clone()

    def _current_parameter_addresses(self) -> list[int]:
        return [param.data_ptr() for param in self.owner.parameters()]

    def _capture(self, batch: dict, signature: tuple) -> None:
        keys = [key for key in sorted(batch) if isinstance(batch[key], torch.Tensor)]
        off_gpu = [key for key in keys if batch[key].device.type != "cuda"]
        if not keys or off_gpu:
            raise ValueError(f"a CUDA-graphed loss needs the batch's tensors on a CUDA device; "
                             f"{off_gpu or 'no tensors'} are not")
        constants = {key: value for key, value in batch.items() if key not in keys}
        module = _LossOfTensors(self.owner, self.loss_fn, keys, constants)
        # fresh buffers: the graph reads its inputs from these at every replay
        sample = tuple(batch[key].detach().clone() for key in keys)
        try:
            with _autocast_without_cache("cuda"):
                self._graphed = torch.cuda.make_graphed_callables(
                    module, sample, num_warmup_iters=self.warmup_iters, allow_unused_input=True)
        except RuntimeError as error:
            raise RuntimeError(
                f"capturing the training loss in a CUDA graph failed: {error}\nA captured step may not "
                "synchronise with the host (.item(), bool(tensor), copies of unpinned host tensors) or choose "
                "its work from tensor values; train without cuda_graph_training"
            ) from error
        self._keys, self.signature = keys, signature
        self._parameter_addresses = self._current_parameter_addresses()
        # the warm-up ran outside the graphs' memory pool: return its cached blocks, so that what is
        # allocated next (e.g. optimizer states) takes fresh memory instead of pinning those blocks
        torch.cuda.empty_cache()
