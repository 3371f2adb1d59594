"""Hydra configs: the resolvers they use, checks of a composed config, and the config a model dir keeps.

A trained model directory holds `config.yaml`, the resolved config of its training, from which
test, extract, export and `stklia.load` rebuild the generator and find its data.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import (
    ConfigCompositionException,
    InstantiationException,
    MissingConfigException,
    OverrideParseException,
)
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from stklia.atomic import atomic_output
from stklia.errors import InputError, require_extra

CONFIG_NAME = "config.yaml"
# Hydra launchers of hydra-submitit-launcher (the [slurm] extra), and stklia's presets that extend them
SUBMITIT_LAUNCHERS = ("submitit_slurm", "submitit_local", "slurm_gpu")
CONF_DIR = Path(__file__).parent / "conf"  # the configs of the commands (train.yaml; trained/ for the others)
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


def run_command(main: Callable[[], object], config_dir: Path, config_name: str) -> None:
    """Run a `@hydra.main` entry point whose config is `config_dir/config_name`. A mistake on its command line
    (a key or option that does not exist, bad syntax) exits with one line naming the closest valid ones,
    instead of Hydra's report, whose advice to add an unknown key with `+key` would silently run the defaults."""
    full_error = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra then raises its errors instead of printing them itself
    try:
        main()
    except (ConfigCompositionException, OverrideParseException) as err:
        if full_error == "1":
            raise
        print(f"stklia: error: config: {describe_config_error(err, config_dir, config_name)}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        if full_error is None:
            del os.environ["HYDRA_FULL_ERROR"]
        else:
            os.environ["HYDRA_FULL_ERROR"] = full_error


def describe_config_error(err: Exception, config_dir: Path, config_name: str) -> str:
    """One line for Hydra's composition error `err`, with the closest valid keys or options."""
    if isinstance(err, MissingConfigException) and err.options:
        group, _, option = err.missing_cfg_file.rpartition("/")
        close = difflib.get_close_matches(option, err.options, n=3, cutoff=0.6)
        return f"'{option}' is not an option of {group}{_did_you_mean(close)} (options: {', '.join(err.options)})"
    key = getattr(err.__cause__, "full_key", None)
    if key:
        keys = _known_keys(config_dir, config_name, key)
        if keys and key not in keys:
            last = key.rpartition(".")[2]
            close = difflib.get_close_matches(key, keys, n=3, cutoff=0.8) or \
                [k for k in keys if difflib.get_close_matches(last, [k.rpartition(".")[2]], cutoff=0.8)][:3]
            return f"no key '{key}'{_did_you_mean(close)} (all keys: --cfg job)"
    where = f"'{err.override}': " if isinstance(err, OverrideParseException) else ""
    return where + " ".join(line.strip() for line in str(err).splitlines() if line.strip())


def _did_you_mean(close: list[str]) -> str:
    return f": did you mean {' or '.join(close)}?" if close else ""


def _known_keys(config_dir: Path, config_name: str, unknown: str) -> list[str]:
    """Every key (dotted) of the config the command line composes without the override of `unknown`;
    [] when that fails too."""
    from hydra._internal.utils import get_args_parser  # the parser of @hydra.main's command line

    try:
        overrides = []
        for override in OverridesParser.create().parse_overrides(get_args_parser().parse_args().overrides):
            if override.key_or_group == unknown:
                continue
            overrides.append(f"{override.get_key_element()}={next(override.sweep_string_iterator())}"
                             if override.is_sweep_override() else override.input_line)
        with initialize_config_dir(str(config_dir), version_base="1.3"):
            cfg = compose(config_name, overrides, return_hydra_config=unknown.startswith("hydra."))
    except Exception:  # noqa: BLE001 - the suggestions are a courtesy; the error is reported without them
        return []

    def walk(node: object, prefix: str) -> list[str]:
        if not isinstance(node, dict):
            return []
        return [k for key, value in node.items() for k in (f"{prefix}{key}", *walk(value, f"{prefix}{key}."))]

    return walk(OmegaConf.to_container(cfg, resolve=False), "")
