"""Checkpoints of a model directory: `<model_dir>/checkpoints/step_<N>.pt`, written atomically, averaged ones
(`<name>.pt`), and `best.json`, the step with the best validation EER.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
weights_only=True: a checkpoint is data, never code.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from stklia.core.atomic import atomic_output, write_json
from stklia.core.errors import InputError

_NAME = re.compile(r"^step_(\d+)\.pt$")
_PARTIAL = re.compile(r"^\.step_\d+\.pt\.tmp-\d+$")  # left by a save that was killed (see atomic.atomic_output)

log = logging.getLogger(__name__)


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
    best = read_best(model_dir)
    best_step = best.step if best is not None else None
    for step in list(found)[: max(0, len(found) - keep_last)]:
        if step != best_step:
            found[step].unlink(missing_ok=True)


@dataclass(frozen=True)
class BestCheckpoint:
    """`best.json`: the checkpoint with the best validation EER (%), which `checkpoint=best` selects."""

    step: int
    eer: float


def write_best(model_dir: str | os.PathLike, best: BestCheckpoint) -> None:
    write_json(_best_file(model_dir), {"step": best.step, "eer": best.eer})


def read_best(model_dir: str | os.PathLike) -> BestCheckpoint | None:
    """The best checkpoint recorded, or None (training had no validation trials, or has not validated yet)."""
    path = _best_file(model_dir)
    if not path.is_file():
        return None
    values = json.loads(path.read_text())
    return BestCheckpoint(int(values["step"]), float(values["eer"]))


def _best_file(model_dir: str | os.PathLike) -> Path:
    return checkpoint_dir(model_dir) / "best.json"


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
        best = read_best(model_dir)
        if best is None:
            raise InputError(_best_file(model_dir), "no best checkpoint recorded (training had no eval trials)")
        which = best.step
    try:
        step = int(which)
    except ValueError:
        raise InputError(folder, f"checkpoint '{which}' is not 'last', 'best', a step number or a saved "
                         "name") from None
    if step not in available:
        raise InputError(folder, f"no checkpoint for step {step} ({other_checkpoints(model_dir)})")
    return available[step]


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
