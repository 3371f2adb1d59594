"""Checkpoint averaging (`python -m stklia.average model_dir=DIR last=10`, or `checkpoints=[...]`).

The mean of the weights of the last checkpoints of a run is usually a better model than any one of
them (as in WeSpeaker's and ESPnet's recipes). The average is saved as
`<model_dir>/checkpoints/<name>.pt` (default `avg_last<N>`, or `avg_<step>_<step>...`), which
test, extract, export, `stklia.load` and `init_from` accept as `checkpoint=<name>`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig

from stklia.core.atomic import atomic_output
from stklia.core.errors import InputError
from stklia.modeldir.checkpoints import checkpoint_dir, list_checkpoints, load_checkpoint, resolve_checkpoint

log = logging.getLogger(__name__)


def average_state_dicts(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of floating-point tensors (in float64); counters such as BatchNorm's
    num_batches_tracked are taken from the last state."""
    out = {}
    for key, last in states[-1].items():
        if last.is_floating_point():
            out[key] = (sum(s[key].double() for s in states) / len(states)).to(last.dtype)
        else:
            out[key] = last.clone()
    return out


def select_checkpoints(model_dir: str | os.PathLike, last: int | None = None,
                       checkpoints: Sequence[str | int] | None = None) -> list[Path]:
    """The files of the `last` N checkpoints, or of the listed ones (`last`, `best` or step numbers)."""
    if (last is None) == (not checkpoints):
        raise InputError("average", "give either last=N or checkpoints=[...]")
    if checkpoints:
        return [resolve_checkpoint(model_dir, which) for which in checkpoints]
    available = list_checkpoints(model_dir)
    if last < 1 or len(available) < last:
        raise InputError(checkpoint_dir(model_dir), f"last={last} but {len(available)} checkpoints are available")
    return list(available.values())[-last:]


def average_checkpoints(model_dir: str | os.PathLike, paths: Sequence[Path], name: str | None = None) -> Path:
    """Average generator and head weights of `paths` into `<model_dir>/checkpoints/<name>.pt`
    (default name: avg_<step>_<step>...)."""
    if name is not None and (name.startswith("step_") or name in ("last", "best")):
        raise InputError("name", f"'{name}' is reserved for training checkpoints")
    states = [load_checkpoint(p) for p in paths]
    for path, state in zip(paths, states):
        if state["speakers"] != states[-1]["speakers"]:
            raise InputError(path, f"was trained on other speakers than {paths[-1]}")
    steps = [s["step"] for s in states]
    name = name or "avg_" + "_".join(map(str, steps))
    averaged = {
        "name": name, "step": max(steps), "averaged_steps": steps, "speakers": states[-1]["speakers"],
        "generator": average_state_dicts([s["generator"] for s in states]),
        "head": average_state_dicts([s["head"] for s in states]),
    }
    out = checkpoint_dir(model_dir) / f"{name}.pt"
    with atomic_output(out) as tmp:
        torch.save(averaged, tmp)
    log.info("averaged steps %s into %s", steps, out)
    return out


def average(cfg: DictConfig) -> None:
    """The command (stklia/conf/commands/average.yaml): average, and say where the average went."""
    paths = select_checkpoints(cfg.model_dir, cfg.last, cfg.checkpoints)
    name = cfg.name or (f"avg_last{cfg.last}" if cfg.last else None)
    print(f"wrote {average_checkpoints(cfg.model_dir, paths, name)}")
