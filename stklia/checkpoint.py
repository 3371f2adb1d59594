"""Checkpoints of a model directory: `<model_dir>/checkpoints/step_<N>.pt`, written atomically.

A checkpoint is a plain dict of tensors and numbers, so it loads with weights_only=True.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from stklia.errors import InputError
from stklia.io import atomic_output, write_json

_NAME = re.compile(r"^step_(\d+)\.pt$")


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


def save_checkpoint(model_dir: str | os.PathLike, step: int, state: dict) -> Path:
    path = checkpoint_dir(model_dir) / f"step_{step:08d}.pt"
    with atomic_output(path) as tmp:
        torch.save(state, tmp)
    return path


def save_best(model_dir: str | os.PathLike, step: int, eer: float) -> None:
    """Remember which checkpoint had the best validation EER (`checkpoint=best`)."""
    write_json(checkpoint_dir(model_dir) / "best.json", {"step": step, "eer": eer})


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
        raise InputError(folder, f"no checkpoint for step {step} (available: {', '.join(map(str, available))})")
    return available[step]


def load_checkpoint(path: str | os.PathLike) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)
