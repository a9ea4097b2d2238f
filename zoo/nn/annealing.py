"""Annealing of hyper-parameters over training steps (Gumbel temperature, KL weight, ...) — torch-free, pure functions.

(Named annealing, not schedules: "schedule" is the diffusion noise schedule, zoo/diffusion/schedules.py.)"""

from __future__ import annotations

import math


def cosine_anneal(step: int, start: float, end: float, steps: int) -> float:
    """``start`` at step 0 -> ``end`` at ``steps`` (half-cosine), then ``end`` forever."""
    if steps <= 0 or step >= steps:
        return end
    t = step / steps
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * t))


def linear_ramp(step: int, start: float, end: float, steps: int) -> float:
    """``start`` at step 0 -> ``end`` at ``steps`` linearly, then ``end`` forever."""
    if steps <= 0 or step >= steps:
        return end
    return start + (end - start) * step / steps


def exponential_anneal(step: int, start: float, end: float, steps: int) -> float:
    """Geometric interpolation (constant ratio per step), the natural scale for a temperature 1 -> 1/16. Both ends
    must be > 0 while it runs (a geometric path never reaches or leaves 0)."""
    if steps <= 0 or step >= steps:
        return end
    if not (start > 0 and end > 0):
        raise ValueError(f"exponential_anneal needs start > 0 and end > 0, got start={start}, end={end}")
    return start * (end / start) ** (step / steps)


SCHEDULES = {"cosine": cosine_anneal, "linear": linear_ramp, "exponential": exponential_anneal}
