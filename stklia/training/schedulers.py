"""Learning-rate schedules (stepped once per optimizer step) beyond those torch ships.

Each is a linear warm-up from 0 to the base rate over `warmup_steps`, then a decay.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def _with_warmup(optimizer: Optimizer, warmup_steps: int, decay: Callable[[int], float]) -> LambdaLR:
    def factor(step: int) -> float:
        warmup = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
        return warmup * decay(step)

    return LambdaLR(optimizer, factor)


def warmup_multistep(optimizer: Optimizer, warmup_steps: int, milestones: Sequence[int], gamma: float) -> LambdaLR:
    """Warm-up, then times `gamma` at each milestone."""
    milestones = sorted(milestones)
    return _with_warmup(optimizer, warmup_steps, lambda step: gamma ** bisect_right(milestones, step))


def _progress(step: int, warmup_steps: int, total_steps: int) -> float:
    """0 at the end of the warm-up, 1 at total_steps (and after)."""
    return min(1.0, max(0, step - warmup_steps) / max(1, total_steps - warmup_steps))


def warmup_exponential(optimizer: Optimizer, warmup_steps: int, total_steps: int, final_ratio: float) -> LambdaLR:
    """Warm-up, then exponential decay to `final_ratio` times the base rate at `total_steps` (WeSpeaker)."""
    return _with_warmup(optimizer, warmup_steps,
                        lambda step: final_ratio ** _progress(step, warmup_steps, total_steps))


def warmup_cosine(optimizer: Optimizer, warmup_steps: int, total_steps: int, final_ratio: float) -> LambdaLR:
    """Warm-up, then half a cosine from the base rate down to `final_ratio` times it at `total_steps`."""
    return _with_warmup(optimizer, warmup_steps, lambda step: final_ratio + (1 - final_ratio) * 0.5 * (
        1 + math.cos(math.pi * _progress(step, warmup_steps, total_steps))))
