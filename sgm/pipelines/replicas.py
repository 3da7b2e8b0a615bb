"""One image on two devices: the unconditional and the conditional half of every guided UNet call
run at the same time, each on its own device.

Classifier-free guidance doubles each UNet call into a ``[uc ; c]`` batch whose halves are
independent until the guider combines them; a copy of the UNet on a second device takes the
conditional half while the first device runs the unconditional one. The results are those of
:func:`~sgm.modules.diffusionmodules.guiders.in_two_halves` (the same two half-size calls, one
after the other), up to the second device's own rounding.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

from ..common.errors import UsageError
from ..modules.diffusionmodules.guiders import guidance_halves
from ..modules.diffusionmodules.sampling import DenoiserFn
from .call_state import call_state, entered, map_tensors

MAX_DEVICES = 2  # the two halves of a guided call


def resolve_devices(device: torch.device, count: int) -> tuple[torch.device, ...]:
    """The ``count`` devices of a run starting at ``device``: ``cuda:1`` and 2 give cuda:1, cuda:2.

    On the CPU every entry is the CPU (two threads share its cores: for tests, not for speed).

    Raises:
        UsageError: ``count`` is not 1 or 2, or fewer CUDA devices are visible than asked for.
    """
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_DEVICES:
        raise UsageError(f"devices must be 1 or {MAX_DEVICES} (one image's guided and unguided halves), got {count!r}")
    if device.type != "cuda":
        return (device,) * count
    first = device.index if device.index is not None else 0
    visible = torch.cuda.device_count()
    if first + count > visible:
        raise UsageError(f"devices={count} from {device} needs cuda:{first} to cuda:{first + count - 1}, "
                         f"but {visible} CUDA device(s) are visible")
    return tuple(torch.device("cuda", first + offset) for offset in range(count))


class ParallelHalves:
    """``denoiser(x, sigma, cond)`` for ``[uc ; c]`` batches: the first half by ``first`` where ``x`` is,
    the second half by ``second`` on ``device`` in a worker thread, at the same time; the result
    (the two halves concatenated) where ``x`` is.

    The worker runs in the caller's grad mode and autocast (both are per thread).
    """

    def __init__(self, first: DenoiserFn, second: DenoiserFn, device: torch.device, pool: ThreadPoolExecutor):
        self.first, self.second, self.device, self.pool = first, second, device, pool

    def _run_second(self, half: tuple, state: dict) -> torch.Tensor:
        with entered(state):
            return self.second(*map_tensors(half, lambda tensor: tensor.to(self.device, non_blocking=True)))

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: dict) -> torch.Tensor:
        first_half, second_half = guidance_halves(x, sigma, cond)
        pending = self.pool.submit(self._run_second, second_half, call_state(x.device.type))
        first_out = self.first(*first_half)
        return torch.cat([first_out, pending.result().to(x.device)])
