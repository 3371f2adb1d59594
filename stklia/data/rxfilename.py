"""Kaldi rxfilenames: what an scp entry reads from (a file, `file:offset` in an ark, a `command |` pipe, stdin)."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

_ARK_OFFSET = re.compile(r"^(?P<path>.+):(?P<offset>\d+)(?P<slice>\[[^\]]*\])?$")


@dataclass(frozen=True)
class RxFilename:
    """One parsed entry: `pipe` (a shell command), `stdin`, `ark` (a member at `offset` of `path`) or `file`."""

    kind: str
    path: Path | None = None  # the file read (ark and file)
    command: str | None = None  # the shell command (pipe)
    offset: int | None = None  # where the member starts in the ark (after its key)
    sliced: bool = False  # an ark entry with a `[...]` range (of a matrix's rows or columns)


@functools.lru_cache(maxsize=1 << 16)  # training reads the same entries again and again
def parse_rxfilename(rxfilename: str) -> RxFilename:
    rx = rxfilename.strip()
    if rx.endswith("|"):
        return RxFilename("pipe", command=rx[:-1])
    if rx == "-":
        return RxFilename("stdin")
    match = _ARK_OFFSET.match(rx)
    if match:
        return RxFilename("ark", path=Path(match["path"]), offset=int(match["offset"]), sliced=bool(match["slice"]))
    return RxFilename("file", path=Path(rx))
