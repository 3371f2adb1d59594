"""AS-norm cohorts: a data set reduced to one mean embedding per speaker, as WeSpeaker's recipes do.

A VoxCeleb2 cohort is then a 6,000-row matrix, not a million rows: it is embedded once per checkpoint and stored
(stklia.evaluation.backends.fitting), and every back-end scores the same means: a cohort speaker is the scorer's
model of its mean raw embedding, which for PLDA is Kaldi's enrolled speaker (`ivector-mean`, scored with its
number of utterances) and for cosine the unit-length (normalised) mean embedding.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from stklia.evaluation.backends.arrays import load_arrays, save_arrays
from stklia.evaluation.backends.lda import speaker_statistics


@dataclass(frozen=True)
class Cohort:
    """The mean raw embedding of each cohort speaker (rows, sorted by speaker id) and its number of utterances."""

    means: np.ndarray
    counts: np.ndarray

    @classmethod
    def of(cls, emb: np.ndarray, speakers: Sequence[str]) -> Cohort:
        _, counts, means, _ = speaker_statistics(np.asarray(emb, dtype=np.float64), speakers)
        return cls(means, counts)

    def save(self, path: str | os.PathLike) -> None:
        save_arrays(path, means=self.means, counts=self.counts)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Cohort:
        arrays = load_arrays(path, ["means", "counts"])
        return cls(arrays["means"], arrays["counts"])
