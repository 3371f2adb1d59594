"""What every `python -m stklia.<command>` shares: one command-line style and one start-up.

Every command is a Hydra app: `key=value` overrides of its config (`stklia/conf/train.yaml`, or
`stklia/conf/commands/<command>.yaml`), `--cfg job`, `-m` where it sweeps. The commands that work on a list of
directories (report, check_data, the demo generator) also take them as positional arguments, which read better
than `dirs=[...]`: `python -m stklia.report multirun/x exp/ sort=eval_eer`.

`command(task, config)` makes a command's `main` of the library function `task(cfg)` it runs: the config is
composed (a mistake on the command line is one line naming the closest valid keys or options, instead of Hydra's
report, whose advice to add an unknown key with `+key` would silently run the defaults), resolvers registered,
mandatory values checked, and an InputError (bad input: file, line, what is wrong) or Ctrl-C turned into one line
and an exit status, without a traceback.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf

from stklia.core.config import CONF_DIR, check_complete, register_resolvers
from stklia.core.errors import exit_on_input_error

T = TypeVar("T")
# Hydra's own flags that take a value (the next argument): never a positional path.
HYDRA_VALUE_FLAGS = ("--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                     "--config-dir", "-cd", "--experimental-rerun", "--info", "-i")


def command(task: Callable[[DictConfig], T], config: str, *, positional: str | tuple[str, ...] | None = None,
            many: bool = True, before: Callable[[Sequence[str]], None] | None = None) -> Callable[[], None]:
    """The `main` of a command that runs `task(cfg)` on the config `config` (a path under stklia/conf without
    .yaml: `train`, `commands/test`). `positional`: the key that positional arguments fill (a list, or with
    `many=False` one value), or several keys that they fill one each, in order (`pack SRC OUT`). `before`: checks
    of the command line that must run before Hydra does (it gets the arguments)."""
    config_dir = CONF_DIR / Path(config).parent
    config_name = Path(config).name

    @hydra.main(version_base="1.3", config_path=str(config_dir), config_name=config_name)
    def run(cfg: DictConfig) -> T:
        register_resolvers()
        with exit_on_input_error():
            check_complete(cfg)
            return task(cfg)

    def main() -> None:
        if positional is not None:
            sys.argv[1:] = with_positional(sys.argv[1:], positional, many)
        if before is not None:
            with exit_on_input_error():
                before(sys.argv[1:])
        run_hydra(run, config_dir, config_name)

    return main


def with_positional(argv: Sequence[str], key: str | tuple[str, ...], many: bool = True) -> list[str]:
    """The arguments with the positional ones (neither a flag, its value, nor `key=value`) gathered into one
    override `key=[...]` (`key=value` unless `many`), or with several keys one `key=value` each, in order, each
    quoted for Hydra's override grammar."""
    paths, rest = [], []
    for i, arg in enumerate(argv):
        is_flag_value = i > 0 and argv[i - 1] in HYDRA_VALUE_FLAGS
        if arg.startswith("-") or is_flag_value or "=" in arg:
            rest.append(arg)
        else:
            paths.append("'" + arg.replace("\\", "\\\\").replace("'", "\\'") + "'")
    if not paths:
        return rest
    if isinstance(key, tuple):
        if len(paths) > len(key):
            raise SystemExit(f"stklia: error: config: at most {len(key)} positional arguments ({' '.join(key)}) "
                             f"expected, got {len(paths)}: {' '.join(paths)}")
        return [*rest, *(f"{k}={path}" for k, path in zip(key, paths))]
    if not many and len(paths) > 1:
        raise SystemExit(f"stklia: error: config: one {key} expected, got {len(paths)}: {' '.join(paths)}")
    return [*rest, f"{key}=[{','.join(paths)}]" if many else f"{key}={paths[0]}"]


def run_hydra(main: Callable[[], object], config_dir: Path, config_name: str) -> None:
    """Run a `@hydra.main` function; a mistake on its command line (a key or option that does not exist, bad
    syntax) exits with one line naming the closest valid ones."""
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
    # Hydra has no public API for the command line that @hydra.main parsed: its own parser, the one it uses.
    from hydra._internal.utils import get_args_parser

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
