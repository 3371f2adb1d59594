"""Learning-rate schedules (stepped once per optimizer step) beyond those torch ships."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_multistep(optimizer: Optimizer, warmup_steps: int, milestones: Sequence[int], gamma: float) -> LambdaLR:
    """Linear warm-up to the base rate over `warmup_steps`, then times `gamma` at each milestone."""
    milestones = sorted(milestones)

    def factor(step: int) -> float:
        warmup = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
        return warmup * gamma ** bisect_right(milestones, step)

    return LambdaLR(optimizer, factor)
