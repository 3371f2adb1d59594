"""Score files: one `<enroll> <test> <score>` line per trial, in the order of its trial list. Every command that
writes or reads them (test, calibrate, report) does it here, and reading checks each line against the trials."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from stklia.core.atomic import atomic_output
from stklia.core.errors import InputError
from stklia.data.tables import read_table
from stklia.data.trials import Trials


def write_scores(path: str | os.PathLike, trials: Trials, scores: np.ndarray) -> None:
    """`<a> <b> <score>` lines in trial order."""
    with atomic_output(path) as tmp:
        tmp.write_text("".join(f"{a} {b} {s:.6f}\n" for a, b, s in zip(trials.enroll, trials.test, scores.tolist())))


def read_scores(path: str | os.PathLike, trials: Trials) -> np.ndarray:
    """The scores of a `<a> <b> <score>` file written for `trials` (same pairs, same order)."""
    path = Path(path)
    scores = []
    for i, (lineno, (a, b, score)) in enumerate(read_table(path, 3, 3)):
        if i >= len(trials.labels):
            raise InputError(path, f"more lines than the {len(trials.labels)} trials of {trials.path}", lineno)
        if (a, b) != (trials.enroll[i], trials.test[i]):
            raise InputError(path, f"'{a} {b}' is not trial {i + 1} of {trials.path} "
                                   f"('{trials.enroll[i]} {trials.test[i]}')", lineno)
        try:
            value = float(score)
        except ValueError:
            value = float("nan")
        if not np.isfinite(value):
            raise InputError(path, f"score '{score}' is not a finite number", lineno)
        scores.append(value)
    if len(scores) != len(trials.labels):
        raise InputError(path, f"{len(scores)} scores for the {len(trials.labels)} trials of {trials.path}")
    return np.array(scores)
