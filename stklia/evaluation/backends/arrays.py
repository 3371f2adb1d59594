"""Back-end statistics on disk: named float64 arrays in one .npz file, written atomically, read without pickle."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable

import numpy as np

from stklia.core.atomic import atomic_output
from stklia.core.errors import InputError


def save_arrays(path: str | os.PathLike, **arrays: np.ndarray | None) -> None:
    """Write the arrays that are not None to `path` (.npz)."""
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **{name: np.asarray(a, dtype=np.float64) for name, a in arrays.items() if a is not None})


def load_arrays(path: str | os.PathLike, required: Iterable[str], optional: Iterable[str] = ()
                ) -> dict[str, np.ndarray | None]:
    """The named arrays of a file written by save_arrays (None for absent optional ones)."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            found = {name: stored[name] for name in stored.files}
    except FileNotFoundError:
        raise InputError(path, "no such back-end file") from None
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise InputError(path, f"not a back-end statistics file (.npz): {err}") from None
    missing = [name for name in required if name not in found]
    if missing:
        raise InputError(path, f"missing array(s) {', '.join(missing)}: not the expected back-end file")
    return {name: found.get(name) for name in (*required, *optional)}
