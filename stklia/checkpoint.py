"""Checkpoints of a model directory: `<model_dir>/checkpoints/step_<N>.pt`, written atomically.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
weights_only=True. The objects a run depends on ("recoverables": modules, optimizer, scheduler,
grad scaler, random generators) are saved and restored through their state_dict/load_state_dict.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import torch

from stklia.atomic import atomic_output, write_json
from stklia.errors import InputError
from stklia.metrics import METRIC_DECIMALS

_NAME = re.compile(r"^step_(\d+)\.pt$")
_PARTIAL = re.compile(r"^\.step_\d+\.pt\.tmp-\d+$")  # left by a save that was killed (see atomic.atomic_output)
_RESTART_COUNTS = ("SLURM_RESTART_COUNT", "TORCHELASTIC_RESTART_COUNT")

log = logging.getLogger(__name__)


class Recoverable(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> object: ...


def checkpoint_dir(model_dir: str | os.PathLike) -> Path:
    return Path(model_dir) / "checkpoints"


def list_checkpoints(model_dir: str | os.PathLike) -> dict[int, Path]:
    """Complete checkpoints by step (temporary files of an interrupted save are not listed)."""
    folder = checkpoint_dir(model_dir)
    found = {}
    if folder.is_dir():
        for path in folder.iterdir():
            match = _NAME.match(path.name)
            if match:
                found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def other_checkpoints(model_dir: str | os.PathLike, but: Path | None = None) -> str:
    """The checkpoints of model_dir other than `but`, as the `checkpoint=` values that select them."""
    named = sorted(p.stem for p in checkpoint_dir(model_dir).glob("*.pt") if not _NAME.match(p.name) and p != but)
    choices = [f"checkpoint={step}" for step, path in list_checkpoints(model_dir).items() if path != but] + \
        [f"checkpoint={name}" for name in named]
    return f"available: {', '.join(choices)}" if choices else "no other checkpoint"


def last_checkpoint_note(model_dir: str | os.PathLike, still: str = "") -> str:
    """Which checkpoint a stopped run left as its last: `the last checkpoint is[ still] <path>`."""
    saved = list_checkpoints(model_dir)
    return f"the last checkpoint is {still}{saved[max(saved)]}" if saved else "no checkpoint was written"


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def _os_error(err: BaseException) -> BaseException:
    """The OSError behind an error (a full disk, ...: torch reports a failed write as its own RuntimeError)."""
    cause: BaseException | None = err
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    return cause or err


def save_checkpoint(model_dir: str | os.PathLike, step: int, state: dict) -> Path:
    """Write `<model_dir>/checkpoints/step_<step>.pt` atomically; a failed write (a full disk) leaves the
    checkpoints before it as they were and is one InputError."""
    path = checkpoint_dir(model_dir) / f"step_{step:08d}.pt"
    try:
        with atomic_output(path) as tmp, open(tmp, "wb") as file:  # a file object: torch then reports the OSError
            torch.save(state, file)
    except (OSError, RuntimeError) as err:
        raise InputError(path, f"could not be written ({_first_line(_os_error(err))}): is the disk full? "
                         f"{last_checkpoint_note(model_dir, 'still ')}") from None
    return path


def remove_partial_saves(model_dir: str | os.PathLike) -> None:
    """Delete the temporary files of checkpoint saves that were killed (they may be large)."""
    folder = checkpoint_dir(model_dir)
    if folder.is_dir():
        for path in folder.iterdir():
            if _PARTIAL.match(path.name):
                log.info("removing %s, left by an interrupted save", path)
                path.unlink(missing_ok=True)


def prune_checkpoints(model_dir: str | os.PathLike, keep_last: int | None) -> None:
    """Keep the `keep_last` most recent checkpoints and the best one; None keeps all."""
    if keep_last is None:
        return
    found = list_checkpoints(model_dir)
    best = checkpoint_dir(model_dir) / "best.json"
    best_step = json.loads(best.read_text())["step"] if best.is_file() else None
    for step in list(found)[: max(0, len(found) - keep_last)]:
        if step != best_step:
            found[step].unlink(missing_ok=True)


def save_best(model_dir: str | os.PathLike, step: int, eer: float) -> None:
    """Remember which checkpoint had the best validation EER (`checkpoint=best`)."""
    write_json(checkpoint_dir(model_dir) / "best.json", {"step": step, "eer": round(eer, METRIC_DECIMALS)})


def resolve_checkpoint(model_dir: str | os.PathLike, which: str | int) -> Path:
    """The checkpoint file for `last`, `best`, a step number, or the name of an averaged checkpoint."""
    available = list_checkpoints(model_dir)
    folder = checkpoint_dir(model_dir)
    named = folder / f"{which}.pt"
    if isinstance(which, str) and not _NAME.match(named.name) and named.is_file():
        return named
    if not available:
        raise InputError(folder, "no checkpoint found")
    if which == "last":
        return available[max(available)]
    if which == "best":
        best = folder / "best.json"
        if not best.is_file():
            raise InputError(best, "no best checkpoint recorded (training had no eval trials)")
        which = json.loads(best.read_text())["step"]
    try:
        step = int(which)
    except ValueError:
        raise InputError(folder, f"checkpoint '{which}' is not 'last', 'best', a step number or a saved "
                         "name") from None
    if step not in available:
        raise InputError(folder, f"no checkpoint for step {step} ({other_checkpoints(model_dir)})")
    return available[step]


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


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A checkpoint's state: any file that is not one (truncated, another format) is one InputError that
    names the other checkpoints of its model dir."""
    path = Path(path)
    model_dir = path.parent.parent  # <model_dir>/checkpoints/<file>
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises many kinds for a file that is not a checkpoint
        raise InputError(path, f"not a readable checkpoint ({_first_line(err)}); {other_checkpoints(model_dir, path)}"
                         ) from None
    if not isinstance(state, dict) or not {"step", "generator"} <= state.keys():
        raise InputError(path, f"not a stklia checkpoint (no step and generator); {other_checkpoints(model_dir, path)}")
    return state


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
