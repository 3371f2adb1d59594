"""Hydra configs: the resolvers they use, checks of a composed config, and the config a model dir keeps.

A trained model directory holds `config.yaml`, the resolved config of its training, from which
test, extract, export and `stklia.load` rebuild the generator and find its data.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from stklia.atomic import atomic_output
from stklia.errors import InputError, require_extra

CONFIG_NAME = "config.yaml"
# Hydra launchers of hydra-submitit-launcher (the [slurm] extra), and stklia's presets that extend them
SUBMITIT_LAUNCHERS = ("submitit_slurm", "submitit_local", "slurm_gpu")
# `_target_`s of earlier releases that saved model dirs may still name, and where they live now
MOVED_TARGETS = {"stklia.features.": "stklia.data.features.", "stklia.augment.": "stklia.data.augment."}


def _demo_root() -> str:
    from stklia.data.demo import default_demo_root  # the demo generator is imported only when asked for

    return str(default_demo_root())


def register_resolvers() -> None:
    """Register `${stklia.demo_root:}` (the demo corpus's cache dir); every entry point calls this first."""
    OmegaConf.register_new_resolver("stklia.demo_root", _demo_root, replace=True)


def check_launcher(overrides: Sequence[str]) -> None:
    """A submitit launcher without its plugin installed is one line naming the extra, not Hydra's
    "Could not load 'hydra/launcher/submitit_slurm'" (composition fails before any code of ours runs)."""
    for override in overrides:
        group, _, option = override.partition("=")
        if group == "hydra/launcher" and option in SUBMITIT_LAUNCHERS:
            require_extra("slurm", override, "hydra_plugins.hydra_submitit_launcher")


def check_complete(cfg: DictConfig) -> None:
    """Fail at once, in one line, when a mandatory (`???`) value was not given."""
    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as err:
        raise InputError("config", f"missing mandatory value '{err.full_key}': set it on the command line") from None


def build(node: DictConfig, **kwargs: Any) -> Any:
    """`hydra.utils.instantiate`, letting an InputError raised by the object's constructor (a value that
    cannot work, named by its key) through as itself instead of Hydra's wrapped traceback."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        while cause is not None and not isinstance(cause, InputError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise


def save_config(cfg: DictConfig, model_dir: Path) -> None:
    """The resolved config, from which test and extract rebuild the generator and data."""
    with atomic_output(model_dir / CONFIG_NAME) as tmp:
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
