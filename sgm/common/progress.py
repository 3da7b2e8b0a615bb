"""The progress report of any multi-step phase (sampling, refinement, the 3D step's fit and fusion)."""
from __future__ import annotations

from typing import Callable

# callback(step_index, total_steps), step_index from 0, called after each step.
StepCallback = Callable[[int, int], None]
