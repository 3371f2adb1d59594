"""How embeddings become trial scores: an optional normalisation, then cosine or PLDA, as two tables.

Every score is a dot product: the enrollment side's row of one table with the test side's row of
the other (stklia.evaluation.scoring.trial_scores). For cosine both tables hold the unit-length embeddings
(speaker models: the mean of a speaker's unit embeddings); for PLDA they hold the terms of Kaldi's
log-likelihood ratio (speaker models: the mean of a speaker's embeddings, with its count).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from stklia.evaluation.backends.cohort import Cohort
from stklia.evaluation.backends.lda import speaker_statistics
from stklia.evaluation.backends.normalize import EmbeddingNormalizer, unit
from stklia.evaluation.backends.plda import PldaBackend


@dataclass(frozen=True)
class Scorer:
    """How embeddings become trial scores: an optional normalisation, then cosine (no `plda`) or PLDA."""

    normalizer: EmbeddingNormalizer | None = None
    plda: PldaBackend | None = None

    def utterances(self, emb: np.ndarray) -> np.ndarray:
        """Rows for `tables` of single utterances: normalised, and for cosine of unit length."""
        x = self.normalizer(emb) if self.normalizer is not None else emb.astype(np.float64)
        return x if self.plda is not None else unit(x)

    def speaker_models(self, emb: np.ndarray, speakers: Sequence[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Sorted speaker ids, their models (rows for `tables`: the mean of their utterances' rows, as
        Kaldi's ivector-mean for PLDA) and their utterance counts."""
        names, counts, means, _ = speaker_statistics(self.utterances(emb), speakers)
        return names, means, counts

    def cohort_table(self, cohort: Cohort) -> np.ndarray:
        """Enrollment-side rows of the AS-norm cohort's speakers, each the model of its mean embedding."""
        return self.tables(self.utterances(cohort.means), cohort.counts)[0]

    def tables(self, rows: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(enrollment-side, test-side) tables whose row dot products are the scores; rows[i] stands for
        counts[i] utterances."""
        if self.plda is None:
            table = unit(rows).astype(np.float32)
            return table, table
        return self.plda.scoring_tables(rows, counts)
