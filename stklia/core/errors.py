"""User-facing errors: bad input is reported as one line naming the file and line, then exit 1."""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Iterator


class InputError(Exception):
    """A problem with the user's files or configuration (not a bug in stklia)."""

    def __init__(self, path: str | os.PathLike, message: str | None = None, line: int | None = None):
        if message is None:
            # A DataLoader re-raises a worker's exception as `type(report)`, the report ending with the
            # worker's traceback, whose last line is `stklia.core.errors.InputError: <the error's one line>`.
            super().__init__(os.fspath(path).rstrip().splitlines()[-1].split(f"{type(self).__name__}: ", 1)[-1])
            return
        where = f"{os.fspath(path)}:{line}" if line is not None else os.fspath(path)
        super().__init__(f"{where}: {message}")


def require_extra(extra: str, what: str, *modules: str) -> None:
    """Import the modules an optional feature needs, or stop in one line saying which extra installs them."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise InputError(what, f"needs {module}, which cannot be imported "
                             f"({err}): pip install \"stklia[{extra}]\"") from None


INTERRUPTED = 130  # the exit status of a command stopped by Ctrl-C (128 + SIGINT), as a shell reports it


@contextlib.contextmanager
def exit_on_input_error() -> Iterator[None]:
    """Turn an InputError into `stklia: error: <file>:<line>: <what>` on stderr and exit status 1, and
    Ctrl-C (KeyboardInterrupt) into `stklia: interrupted` and exit status 130, without a traceback."""
    try:
        yield
    except InputError as err:
        print(f"stklia: error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        print("stklia: interrupted", file=sys.stderr, flush=True)
        raise SystemExit(INTERRUPTED) from None
