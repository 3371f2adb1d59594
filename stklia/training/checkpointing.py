"""What a training run saves at its checkpoints and restores from them: every "recoverable" (an object with
state_dict / load_state_dict: modules, optimizer, scheduler, grad scaler, random generators, the best validation
so far), and which checkpoint a run resumes from. One mechanism serves resume, pre-emption and requeue."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from stklia.core.errors import InputError
from stklia.modeldir.checkpoints import list_checkpoints, resolve_checkpoint

_RESTART_COUNTS = ("SLURM_RESTART_COUNT", "TORCHELASTIC_RESTART_COUNT")


class Recoverable(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> object: ...


@dataclass
class BestValidation:
    """The best validation so far: its step and the EER (%) of the first validation list (`checkpoint=best`), and
    the lowest EER of each list (what a sweep optimises on `optimized_trials`). A recoverable."""

    step: int | None = None
    eer: float = math.inf
    lowest_eers: list[float] = field(default_factory=list)

    def update(self, step: int, eers: list[float]) -> bool:
        """Record the validation EERs of `step` (one per list); whether it is the new best."""
        self.lowest_eers = [min(low, eer) for low, eer in zip(self.lowest_eers or [math.inf] * len(eers), eers)]
        if eers[0] < self.eer:
            self.step, self.eer = step, eers[0]
            return True
        return False

    def state_dict(self) -> dict:
        return {"step": self.step, "eer": self.eer, "lowest_eers": list(self.lowest_eers)}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.eer = state["step"], state["eer"]
        self.lowest_eers = list(state.get("lowest_eers", []))  # checkpoints of earlier releases have none


def snapshot(recoverables: Mapping[str, Recoverable]) -> dict:
    return {name: obj.state_dict() for name, obj in recoverables.items()}


def restore(recoverables: Mapping[str, Recoverable], state: dict, path: str | os.PathLike) -> None:
    """Load every recoverable from a checkpoint's state; a mismatch is the user's (config) error."""
    for name, obj in recoverables.items():
        if name not in state:
            raise InputError(path, f"holds no '{name}' state")
        try:
            obj.load_state_dict(state[name])
        except (RuntimeError, KeyError, ValueError) as err:
            first_line = str(err).splitlines()[0]
            raise InputError(path, f"its '{name}' does not match the configuration: {first_line}") from None


def restarted() -> bool:
    """Whether this process restarts an interrupted job: a Slurm requeue or a torchrun restart."""
    return any(int(os.environ.get(name) or 0) > 0 for name in _RESTART_COUNTS)


def checkpoint_to_resume(model_dir: str | os.PathLike, which: str | int | None) -> Path | None:
    """The checkpoint a training run starts from, or None to start from scratch.

    A restarted job (requeued by Slurm, restarted by torchrun) continues from the last checkpoint of
    its model_dir whatever `which` says; otherwise a model_dir holding checkpoints is only resumed
    when asked, never overwritten.
    """
    if restarted() and list_checkpoints(model_dir):
        return resolve_checkpoint(model_dir, "last")
    if which is not None:
        return resolve_checkpoint(model_dir, which)
    if list_checkpoints(model_dir):
        raise InputError(model_dir, "already holds checkpoints: resume with checkpoint=last, or set another model_dir")
    return None
