"""Test-only optimizer for the CLI tests, selected with `optim._target_=optim_hooks.sgd_then`.

It is torch.optim.SGD (same state, so runs resume with plain `optim=sgd`) that, right after its
`at_step`-th step in this process, does `action` for the tests to observe from outside:
a signal name (e.g. SIGKILL, SIGTERM) is sent to the process itself `times` times, at an exact step, by
the kernel like any other signal; `dump` saves this rank's parameters to <out_dir>/rank<RANK>.pt;
`fail` raises an error (a run that fails); `none` does nothing (the plain run, in a sweep over actions);
`nan_weights` makes a weight NaN; `fill_disk` lowers the process's RLIMIT_FSIZE to half the size of the
checkpoints in <out_dir>/checkpoints, so that the next one cannot be written, as on a full disk.
`nan_grad` instead makes a gradient NaN in the backward pass of step `at_step` (the loss stays finite).
`wait` holds the run after that step until the file <out_dir>/go exists (at most 5 minutes), so that a signal a
test sends from outside arrives mid-run however loaded the machine is (a requeued run finds the file there).
`rank` limits the action to one rank of a distributed run.
"""

from __future__ import annotations

import math
import os
import resource
import signal
import time
from pathlib import Path

import torch


def sgd_then(params, at_step: int, action: str, out_dir: str | None = None, rank: int | None = None,
             times: int = 1, **sgd) -> torch.optim.SGD:
    params = list(params)
    optimizer = torch.optim.SGD(params, **sgd)
    my_rank = int(os.environ.get("RANK", 0))
    if rank is not None and rank != my_rank:
        return optimizer
    steps = backwards = 0

    def after_backward(param: torch.Tensor) -> None:
        nonlocal backwards
        backwards += 1
        if backwards == at_step:
            param.grad.fill_(math.nan)

    def after_step(opt: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        nonlocal steps
        steps += 1
        if steps != at_step:
            return
        if action == "none":
            return
        if action == "fail":
            raise RuntimeError(f"deliberate failure after step {at_step}")
        if action == "dump":
            params = [p.detach().clone() for group in opt.param_groups for p in group["params"]]
            torch.save(params, Path(out_dir) / f"rank{my_rank}.pt")
        elif action == "nan_weights":
            with torch.no_grad():
                opt.param_groups[0]["params"][0].fill_(math.nan)
        elif action == "wait":
            deadline = time.monotonic() + 300
            while not (Path(out_dir) / "go").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        elif action == "fill_disk":
            size = max(p.stat().st_size for p in (Path(out_dir) / "checkpoints").glob("*.pt"))
            resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, resource.RLIM_INFINITY))
        else:
            for _ in range(times):
                os.kill(os.getpid(), signal.Signals[action])

    if action == "nan_grad":
        params[0].register_post_accumulate_grad_hook(after_backward)
    else:
        optimizer.register_step_post_hook(after_step)
    return optimizer
