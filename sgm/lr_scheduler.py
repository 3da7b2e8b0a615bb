"""Learning-rate multipliers per optimizer step, for ``torch.optim.lr_scheduler.LambdaLR``.

A config names one as ``model.params.scheduler_config`` (the class path of Stability AI's
generative-models, ``sgm.lr_scheduler.LambdaLinearScheduler``); the engine calls its
:meth:`~LambdaLinearScheduler.schedule` once per optimizer step.
"""
from __future__ import annotations

import bisect
from collections.abc import Sequence


class LambdaLinearScheduler:
    """Cycles of a linear warm-up followed by a linear decay; the multiplier of the base rate.

    Cycle ``c`` lasts ``cycle_lengths[c]`` steps (``n`` counted from the cycle's start):

    * ``n < warm_up_steps[c]``: ``f_start + (f_max - f_start) * n / warm_up_steps``;
    * otherwise: ``f_min + (f_max - f_min) * (cycle_length - n) / cycle_length``, which reaches
      ``f_min`` at the cycle's end (the decay line runs over the whole cycle, warm-up included).

    Steps past the last cycle keep the last cycle's ``f_min``.

    Args:
        warm_up_steps, f_min, f_max, f_start, cycle_lengths: one value per cycle (equal lengths).
        verbosity_interval: kept for the configs of generative-models; unused (no printing).
    """

    def __init__(self, warm_up_steps: Sequence[int], f_min: Sequence[float], f_max: Sequence[float],
                 f_start: Sequence[float], cycle_lengths: Sequence[int], verbosity_interval: int = 0):
        lists = {"warm_up_steps": warm_up_steps, "f_min": f_min, "f_max": f_max, "f_start": f_start,
                 "cycle_lengths": cycle_lengths}
        lengths = {name: len(values) for name, values in lists.items()}
        if len(set(lengths.values())) != 1 or not cycle_lengths:
            raise ValueError(f"LambdaLinearScheduler: one value per cycle in each list, got lengths {lengths}")
        if any(length < 1 for length in cycle_lengths):
            raise ValueError(f"LambdaLinearScheduler: cycle_lengths must be positive, got {list(cycle_lengths)}")
        if any(steps < 0 for steps in warm_up_steps):
            raise ValueError(f"LambdaLinearScheduler: warm_up_steps must not be negative, got {list(warm_up_steps)}")
        self.warm_up_steps = [int(v) for v in warm_up_steps]
        self.f_min, self.f_max, self.f_start = ([float(v) for v in values] for values in (f_min, f_max, f_start))
        self.cycle_lengths = [int(v) for v in cycle_lengths]
        self.cycle_starts = [sum(self.cycle_lengths[:c]) for c in range(len(self.cycle_lengths))]

    def schedule(self, step: int) -> float:
        """The multiplier at optimizer step ``step`` (0-based)."""
        cycle = max(bisect.bisect_right(self.cycle_starts, step) - 1, 0)
        n = step - self.cycle_starts[cycle]
        warm_up, length = self.warm_up_steps[cycle], self.cycle_lengths[cycle]
        if n >= length:
            return self.f_min[cycle]
        if n < warm_up:
            return self.f_start[cycle] + (self.f_max[cycle] - self.f_start[cycle]) * n / warm_up
        return self.f_min[cycle] + (self.f_max[cycle] - self.f_min[cycle]) * (length - n) / length
