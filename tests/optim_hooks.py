"""Test-only optimizer for the CLI tests, selected with `optim._target_=optim_hooks.sgd_then`.

It is torch.optim.SGD (same state, so runs resume with plain `optim=sgd`) that, right after its
`at_step`-th step in this process, does `action` for the tests to observe from outside:
a signal name (e.g. SIGKILL, SIGTERM) is sent to the process itself, at an exact step, by the
kernel like any other signal; `dump` saves this rank's parameters to <out_dir>/rank<RANK>.pt;
`fail` raises an error (a run that fails); `none` does nothing (the plain run, in a sweep over actions).
`rank` limits the action to one rank of a distributed run.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import torch


def sgd_then(params, at_step: int, action: str, out_dir: str | None = None, rank: int | None = None,
             **sgd) -> torch.optim.SGD:
    optimizer = torch.optim.SGD(params, **sgd)
    my_rank = int(os.environ.get("RANK", 0))
    steps = 0

    def after_step(opt: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        nonlocal steps
        steps += 1
        if steps != at_step or (rank is not None and rank != my_rank):
            return
        if action == "none":
            return
        if action == "fail":
            raise RuntimeError(f"deliberate failure after step {at_step}")
        if action == "dump":
            params = [p.detach().clone() for group in opt.param_groups for p in group["params"]]
            torch.save(params, Path(out_dir) / f"rank{my_rank}.pt")
        else:
            os.kill(os.getpid(), signal.Signals[action])

    optimizer.register_step_post_hook(after_step)
    return optimizer
