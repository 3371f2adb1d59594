"""`<model_dir>/config.yaml`: the resolved config of the training that made a model directory, from which
test, extract, export and `stklia.load` rebuild the generator and find its data."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from stklia.core.atomic import atomic_output
from stklia.core.errors import InputError

CONFIG_NAME = "config.yaml"
# `_target_`s of earlier releases that saved model dirs may still name, and where they live now
MOVED_TARGETS = {"stklia.features.": "stklia.data.features.", "stklia.augment.": "stklia.data.augment.",
                 "stklia.heads.": "stklia.training.heads.", "stklia.schedulers.": "stklia.training.schedulers.",
                 "stklia.data.demo.": "stklia.demo.corpus."}


def has_config(model_dir: str | os.PathLike) -> bool:
    return (Path(model_dir) / CONFIG_NAME).is_file()


def save_config(cfg: DictConfig, model_dir: str | os.PathLike) -> None:
    """The resolved config, from which test and extract rebuild the generator and data."""
    with atomic_output(Path(model_dir) / CONFIG_NAME) as tmp:
        OmegaConf.save(cfg, tmp, resolve=True)


def load_saved_config(model_dir: str | os.PathLike) -> DictConfig:
    """The config saved by `stklia.train` in a model dir (targets of moved classes updated)."""
    path = Path(model_dir) / CONFIG_NAME
    if not path.is_file():
        raise InputError(path, "not found: is this a model directory written by stklia.train?")
    text = path.read_text()
    for old, new in MOVED_TARGETS.items():
        text = text.replace(f"_target_: {old}", f"_target_: {new}")
    return OmegaConf.create(text)
