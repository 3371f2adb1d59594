"""Hydra configs: where they are, the resolvers they use, and the two checks every composed config gets.

The configs ship inside the package (`stklia/conf/`, also reachable as the top-level `conf/` of a checkout), so
that any install, editable or not, runs from any directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from stklia.core.errors import InputError

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"  # train.yaml and its groups; commands/ for the others


def demo_root() -> Path:
    """Where the demo corpus is generated on first use: `$STKLIA_CACHE/demo-v1`, else `~/.cache/stklia/demo-v1`."""
    cache = os.environ.get("STKLIA_CACHE")
    return (Path(cache) if cache else Path.home() / ".cache" / "stklia") / "demo-v1"


def register_resolvers() -> None:
    """Register `${stklia.demo_root:}` (demo_root), which the demo's data config names its corpus by."""
    OmegaConf.register_new_resolver("stklia.demo_root", lambda: str(demo_root()), replace=True)


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
