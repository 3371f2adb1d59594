"""Progress bars that suit where they are shown: tqdm's bar on a terminal; elsewhere (a Slurm .err file, a CI
log, a pipe) a plain line at each tenth of the work, where tqdm's redraws would make a line per step."""

from __future__ import annotations

import io
import math
import sys
from collections.abc import Iterable
from typing import TextIO

from tqdm import tqdm

STEPS = 10  # lines of a bar away from a terminal, besides its first (0%)


class LineProgress(tqdm):
    """A tqdm that writes a new line to `lines` each time another 1/STEPS of the total is done, and never
    redraws (tqdm's own carriage returns and closing newline go nowhere)."""

    def __init__(self, *args, lines: TextIO, **kwargs):
        self.lines, self.printed = lines, -1  # the last tenth written
        super().__init__(*args, file=io.StringIO(), mininterval=0, miniters=1, maxinterval=math.inf, ascii=True,
                         **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        done = STEPS * self.n // self.total if self.total else 0
        if done != self.printed:
            self.printed = done
            self.lines.write(f"{self}\n")
            self.lines.flush()
        return True


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str, unit: str = "it",
                 enabled: bool = True, leave: bool = True) -> tqdm:
    """A progress bar on stderr (none when not `enabled`): tqdm on a terminal, else LineProgress."""
    if not enabled:
        return tqdm(iterable, total=total, disable=True)
    if sys.stderr.isatty():
        return tqdm(iterable, total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=leave)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, lines=sys.stderr)
