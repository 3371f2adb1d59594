"""A trained generator as a model directory holds it: the saved config builds it, a checkpoint fills it."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from omegaconf import DictConfig
from torch import nn

from stklia.core.config import build
from stklia.modeldir.checkpoints import load_checkpoint, resolve_checkpoint
from stklia.modeldir.config import load_saved_config

log = logging.getLogger(__name__)


@dataclass
class TrainedModel:
    """The saved config of a model directory, the generator of one of its checkpoints (in eval mode) and its
    step (or its name, for an averaged checkpoint)."""

    config: DictConfig
    generator: nn.Module
    step: int | str


def load_trained(model_dir: str | os.PathLike, checkpoint: str | int) -> TrainedModel:
    cfg = load_saved_config(model_dir)
    path = resolve_checkpoint(model_dir, checkpoint)
    state = load_checkpoint(path)
    generator = build(cfg.model)
    generator.load_state_dict(state["generator"])
    log.info("loaded %s (step %d)", path, state["step"])
    return TrainedModel(cfg, generator.eval(), state.get("name", state["step"]))
