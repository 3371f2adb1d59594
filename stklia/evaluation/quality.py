"""Quality measures of the sides of trials, the file that holds them, and the quality measure functions (QMF) that
calibration reads off them.

A trial's score means more or less depending on its two sides: short recordings, embeddings of unusual norm, or
sides that score high against every cohort speaker make less reliable scores. Quality-aware calibration (QMF:
Brümmer's quality measure functions; the VoxSRC systems, WeSpeaker's `score_calibration.py`) gives the logistic
regression of stklia.evaluation.calibration such measures as features beside the score.

The file `quality`, written and read only here: `stklia.test` writes one into each results dir (every utterance and
enrolled speaker its trial lists name), `stklia.extract` one beside the embeddings. Its first line names the
columns, each later line is a side:

    id frames norm cohort_mean
    spk001-utt03 412 13.52 0.3141

* `frames`: the feature frames the network embedded (the speech frames when the data's features are VAD-selected,
  as Kaldi's recipes write them); an enrolled speaker has the sum of its utterances' frames;
* `norm`: the L2 norm of the raw embedding (an enrolled speaker: the mean of its utterances' norms);
* `cohort_mean`: the mean of the side's top-N scores against the AS-norm cohort (only with AS-norm).

A quality measure function turns a measure of the two sides into two features of the trial: the smaller and the
larger value (a trial has no natural order of its sides), of log frames for `duration`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stklia.core.atomic import atomic_output
from stklia.core.errors import InputError
from stklia.data.tables import read_table
from stklia.data.trials import Trials

QUALITY_FILE = "quality"
MEASURES = ("frames", "norm", "cohort_mean")
QMFS = {"duration": "frames", "norm": "norm", "cohort_mean": "cohort_mean"}  # function -> the measure it reads


@dataclass(frozen=True)
class Quality:
    """Measures (name -> one value per side) of the sides `ids`."""

    ids: list[str]
    measures: Mapping[str, np.ndarray]
    path: Path | None = None  # the file it was read from, for error messages

    def write(self, path: str | os.PathLike) -> None:
        names = [m for m in MEASURES if m in self.measures]
        columns = [self.measures[m].tolist() for m in names]
        lines = [" ".join(["id", *names])]
        for i, side in enumerate(self.ids):
            lines.append(" ".join([side, *(str(int(c[i])) if m == "frames" else f"{c[i]:.6g}"
                                            for m, c in zip(names, columns))]))
        with atomic_output(path) as tmp:
            tmp.write_text("\n".join(lines) + "\n")

    @classmethod
    def read(cls, path: str | os.PathLike) -> Quality:
        """A quality file, every line checked."""
        path = Path(path)
        rows = read_table(path, 2)
        try:
            lineno, header = next(rows)
        except StopIteration:
            raise InputError(path, "empty: no quality measures") from None
        names = header[1:]
        if header[0] != "id" or not set(names) <= set(MEASURES) or len(set(names)) != len(names):
            raise InputError(path, f"'{' '.join(header)}' is not a quality header: 'id' then measures among "
                                   f"{', '.join(MEASURES)}", lineno)
        ids: list[str] = []
        values: list[list[float]] = []
        seen: dict[str, int] = {}
        for lineno, (side, *fields) in rows:
            if len(fields) != len(names):
                raise InputError(path, f"{len(fields)} values for the {len(names)} measures of the header", lineno)
            if side in seen:
                raise InputError(path, f"duplicate id '{side}' (first on line {seen[side]})", lineno)
            try:
                row = [float(v) for v in fields]
            except ValueError:
                row = [math.nan]
            if not all(map(math.isfinite, row)) or ("frames" in names and row[names.index("frames")] < 1):
                raise InputError(path, f"'{' '.join(fields)}' are not finite numbers (frames at least 1)", lineno)
            seen[side] = lineno
            ids.append(side)
            values.append(row)
        table = np.array(values, dtype=np.float64).reshape(len(values), len(names))
        return cls(ids, {name: table[:, j] for j, name in enumerate(names)}, path)

    def features(self, trials: Trials, functions: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        """The QMF features (trials, 2 per function: its smaller and larger side) and their names."""
        if not check_functions(functions, "qmf"):
            return np.empty((len(trials.labels), 0)), []
        index = {side: i for i, side in enumerate(self.ids)}
        rows = []
        for ids in (trials.enroll, trials.test):
            try:
                rows.append(np.fromiter(map(index.__getitem__, ids), dtype=np.int64, count=len(ids)))
            except KeyError as err:
                i = ids.index(err.args[0])
                raise InputError(self.path or "quality", f"no line for '{err.args[0]}', a side of trial {i + 1} of "
                                                         f"{trials.path}") from None
        columns, names = [], []
        for function in functions:
            values = self.measure(function)
            if function == "duration":
                values = np.log(values)
            a, b = values[rows[0]], values[rows[1]]
            columns += [np.minimum(a, b), np.maximum(a, b)]
            names += [f"{function}_min", f"{function}_max"]
        return np.stack(columns, axis=1), names

    def measure(self, function: str) -> np.ndarray:
        """The measure a quality measure function reads."""
        measure = QMFS[function]
        if measure not in self.measures:
            hint = " (stklia.test writes it when AS-norm is on)" if measure == "cohort_mean" else ""
            raise InputError(self.path or "quality", f"no '{measure}' column, which the quality measure function "
                                                     f"'{function}' reads{hint}")
        return self.measures[measure]


def check_functions(functions: Sequence[str], what: str) -> list[str]:
    """The QMF names of a config key, checked."""
    for function in functions:
        if function not in QMFS:
            raise InputError(what, f"'{function}' is not a quality measure function: one of {', '.join(QMFS)}")
    if len(set(functions)) != len(functions):
        raise InputError(what, f"{list(functions)} names a function twice")
    return list(functions)
