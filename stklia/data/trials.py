"""Verification trial lists (`<1|0> <enroll> <test>` or Kaldi's `<enroll> <test> target|nontarget`), read and
checked in one place for every command, and what an evaluation scores them on."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stklia.core.errors import InputError
from stklia.data.kaldi import DataSet
from stklia.data.tables import read_table


@dataclass
class Trials:
    """A verification trial list: labels[i] says whether enroll[i] and test[i] share a speaker."""

    path: Path
    labels: np.ndarray
    enroll: list[str]
    test: list[str]

    @property
    def name(self) -> str:
        return trials_name(self.path)


def trials_name(path: str | os.PathLike) -> str:
    """A trial list's short name in tables and plots: its parent dir and file name (test/trials)."""
    path = Path(path)
    return f"{path.parent.name}/{path.name}"


# The two forms of a trial line, told apart by where the label is; one form per file.
LABEL_FIRST = "<1|0> <enroll> <test>"
KALDI_FORM = "<enroll> <test> <target|nontarget>"  # Kaldi's VoxCeleb recipes
KALDI_LABELS = {"target": 1, "nontarget": 0}


def _trial_form(fields: list[str]) -> str | None:
    """Which form a trial line is in (None: neither)."""
    if fields[0] in ("0", "1"):
        return LABEL_FIRST
    return KALDI_FORM if fields[2] in KALDI_LABELS else None


def read_trials(path: str | os.PathLike, known_utts: set[str] | dict[str, object] | None,
                speakers: set[str] | dict[str, object] | None = None) -> Trials:
    """Read `<1|0> <a> <b>` lines (1: target, 0: non-target), or Kaldi's `<a> <b> target|nontarget` lines;
    the first line sets the form of the file.

    `b` is an utterance of the evaluation data; `a` is one too, or, when enrollment `speakers`
    are given, one of those speakers (scored by their speaker model). An id that is both is
    ambiguous and rejected. With `known_utts` None the ids are not checked (the labels of a list
    whose scores exist already).
    """
    path = Path(path)
    labels: list[int] = []
    enroll: list[str] = []
    test: list[str] = []
    form, first = None, None
    for lineno, fields in read_table(path, 3, 3):
        line_form = _trial_form(fields)
        if line_form is None:
            raise InputError(path, f"'{' '.join(fields)}' is not a trial: expected '{LABEL_FIRST}' "
                             f"or Kaldi's '{KALDI_FORM}'", lineno)
        if form is None:
            form, first = line_form, lineno
        elif line_form != form:
            raise InputError(path, f"'{' '.join(fields)}' is of the form '{line_form}' but line {first} is of the "
                             f"form '{form}': one form per file", lineno)
        if form == LABEL_FIRST:
            label, a, b = int(fields[0]), fields[1], fields[2]
        else:
            a, b, label = fields[0], fields[1], KALDI_LABELS[fields[2]]
        if known_utts is not None:
            if speakers is not None and a in speakers:
                if a in known_utts:
                    raise InputError(path, f"'{a}' is ambiguous: both an enrollment speaker and an utterance", lineno)
            elif a not in known_utts:
                message = (f"'{a}' is neither an enrollment speaker nor an utterance of the evaluation data"
                           if speakers is not None else f"utterance '{a}' is not in the evaluation data")
                raise InputError(path, message, lineno)
            if b not in known_utts:
                raise InputError(path, f"utterance '{b}' is not in the evaluation data", lineno)
        labels.append(label)
        enroll.append(a)
        test.append(b)
    if not labels:
        raise InputError(path, "empty: no trials")
    return Trials(path, np.array(labels, dtype=np.int8), enroll, test)


@dataclass
class EvalData:
    """What an evaluation needs: the data and trial lists, and optional speaker sets."""

    data: DataSet  # the utterances the trials name
    trial_lists: list[Trials]
    enroll: DataSet | None = None  # speakers whose models `<label> <speaker> <utt>` trials score
    cohort: DataSet | None = None  # AS-norm cohort speakers (None: raw scores only)
    asnorm_top_n: int = 0  # AS-norm's top-N cohort scores (with a cohort)
