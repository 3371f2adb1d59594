"""Verification scoring: embed what the trial lists name, score them, AS-norm, metrics and outputs.

Trials are scored from two tables, one row per utterance or enrolled speaker, in one vectorised
pass per list: ids are mapped to table rows once per list, then each score is the dot product of
the enrollment side's row of one table and the test side's row of the other, in chunks. A
`Scorer` builds the tables: by default (cosine) both hold the unit-length embeddings; an optional
embedding normalisation (mean subtraction, whitening) comes first; with a PLDA back-end the rows
are Kaldi's PLDA log-likelihood-ratio terms (stklia.evaluation.backends.plda), so the same pass gives LLRs.

Speaker models (enrollment, `1 spk utt` trials) are, for cosine, the mean of the speaker's
length-normalised utterance embeddings, length-normalised again; for PLDA, as in Kaldi, the mean
of the speaker's embeddings, scored with its number of utterances.

AS-norm (adaptive symmetric score normalisation; Cumani et al. 2011, Matejka et al. 2017):
each side x of a trial is scored against every cohort speaker model; the mean mu_x and the
standard deviation sd_x (population, ddof=0) of its top_n highest cohort scores normalise the
raw score s as  0.5 * ((s - mu_a) / sd_a + (s - mu_b) / sd_b).  The cohort is a data directory
(e.g. the training data) reduced to one mean embedding per speaker (stklia.evaluation.backends.cohort), and
top_n is capped at its size. With PLDA each side is scored as the test side against the cohort speakers
enrolled with their utterances. The cohort scores are computed a chunk of rows at a time, each chunk's
scores at most ASNORM_CHUNK_BYTES, so memory stays bounded whatever the sizes of the cohort and the lists.

Each evaluation also measures the sides of its trials (stklia.evaluation.quality): frames, embedding norms and,
with AS-norm, the mean of their top cohort scores, which quality-aware calibration reads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from stklia.data.trials import EvalData, Trials
from stklia.evaluation.backends.cohort import Cohort
from stklia.evaluation.backends.scorer import Scorer
from stklia.evaluation.embeddings import Embedder
from stklia.evaluation.metrics import SortedTrials
from stklia.evaluation.quality import Quality

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# The cohort scores of a chunk of table rows: 64 MiB is about 2,800 rows against 6,000 float32 cohort models,
# enough for matrix products at full speed, and a 1M-model cohort still runs (in chunks of 16 rows).
ASNORM_CHUNK_BYTES = 64 * 2**20


@dataclass
class TrialResult:
    """Scores of one trial list, in trial order, by kind ("raw", "asnorm", "calibrated", ...), their metrics, and
    the quality measures of the sides of the evaluation's trials."""

    trials: Trials
    scores: dict[str, np.ndarray]
    metrics: dict[str, float]
    quality: Quality | None = None

    def figure(self) -> Figure:
        from stklia.evaluation.det import det_figure  # imported here: matplotlib is slow to import, only plots need it

        return det_figure(self.scores, self.trials.labels, self.trials.name)


def trial_indices(index: Mapping[str, int], ids: Sequence[str]) -> np.ndarray:
    """Table rows of the trial ids (the ids were checked when the trials were read)."""
    return np.fromiter(map(index.__getitem__, ids), dtype=np.int64, count=len(ids))


def trial_scores(enroll_table: np.ndarray, test_table: np.ndarray, left: np.ndarray, right: np.ndarray,
                 chunk: int = 4096) -> np.ndarray:
    """Dot products of enroll_table[left[i]] and test_table[right[i]] (cosines of unit rows of one table)."""
    scores = np.empty(len(left), dtype=np.float64)
    for start in range(0, len(left), chunk):  # chunk x dim gathered rows at a time: they stay in cache
        stop = start + chunk
        scores[start:stop] = np.einsum("ij,ij->i", enroll_table[left[start:stop]], test_table[right[start:stop]])
    return scores


def asnorm_stats(table: np.ndarray, cohort: np.ndarray, top_n: int, chunk: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation (ddof=0) of each table row's top_n scores against the cohort rows
    (`table`: test-side rows, `cohort`: enrollment-side rows), `chunk` table rows at a time (default: as many as
    ASNORM_CHUNK_BYTES of scores hold)."""
    top_n = min(top_n, len(cohort))
    if top_n < 2:
        raise ValueError(f"AS-norm needs a top-N of at least 2 cohort models, got {top_n}")
    mean, std = np.empty(len(table)), np.empty(len(table))
    cohort_t = cohort.T.astype(table.dtype)
    chunk = chunk or max(1, ASNORM_CHUNK_BYTES // (cohort_t.itemsize * len(cohort)))
    kth = len(cohort) - top_n
    buffer = np.empty((min(chunk, len(table)), len(cohort)), dtype=table.dtype)  # the one chunk of scores
    for start in range(0, len(table), chunk):
        rows = table[start : start + chunk]
        s = np.matmul(rows, cohort_t, out=buffer[: len(rows)])
        s.partition(kth, axis=1)  # in place: the top_n largest last
        top = s[:, kth:].astype(np.float64)
        mean[start : start + chunk] = top.mean(axis=1)
        std[start : start + chunk] = top.std(axis=1)
    return mean, std


def asnorm(scores: np.ndarray, stats: tuple[np.ndarray, np.ndarray], left: np.ndarray, right: np.ndarray
           ) -> np.ndarray:
    """AS-normalised scores of trials (left[i], right[i]) from their table rows' cohort statistics."""
    mean, std = stats
    return 0.5 * ((scores - mean[left]) / std[left] + (scores - mean[right]) / std[right])


def trial_metrics(scores: np.ndarray, labels: np.ndarray, p_targets: Sequence[float], prefix: str = ""
                  ) -> dict[str, float]:
    """EER (%), minDCF and actual DCF at each p_target, Cllr and minCllr, with keys prefixed by `prefix`,
    from one sort of the trials. actDCF and Cllr read the scores as log-likelihood ratios."""
    trials = SortedTrials(scores, labels)
    results = {f"{prefix}eer": 100 * trials.eer()[0]}
    for p in p_targets:
        results[f"{prefix}min_dcf@{p:g}"] = trials.min_dcf(p)[0]
    for p in p_targets:
        results[f"{prefix}act_dcf@{p:g}"] = trials.act_dcf(p)
    results[f"{prefix}cllr"] = trials.cllr()
    results[f"{prefix}min_cllr"] = trials.min_cllr()
    return results


def evaluate(embed: Embedder, eval_data: EvalData, p_targets: Sequence[float] = (0.01, 0.001),
             scorer: Scorer | None = None, cohort: Cohort | None = None) -> list[TrialResult]:
    """Embed what the trial lists name (each utterance once), score every list and measure it.

    With a cohort (and its asnorm_top_n), the scores are also AS-normalised and measured (metrics prefixed
    `asnorm_`). `scorer`: the normalisation and back-end (default: cosine of the raw embeddings). `cohort`: the
    cohort's speaker means when they are at hand (stored), else they are computed from eval_data.cohort.
    """
    scorer = scorer or Scorer()
    lists = eval_data.trial_lists
    enroll = eval_data.enroll
    lefts = set().union(*(t.enroll for t in lists))
    models = lefts & set(enroll.utt2spk.values()) if enroll is not None else set()
    utts = sorted((lefts - models).union(*(t.test for t in lists)))
    emb = embed(eval_data.data, utts)
    rows, counts = [scorer.utterances(emb)], [np.ones(len(utts))]
    frames, norms = [embed.frames(eval_data.data, utts)], [np.linalg.norm(emb, axis=1)]
    names: list[str] = []
    if models:
        enroll_utts = [u for u in enroll.utts if enroll.utt2spk[u] in models]
        speakers = [enroll.utt2spk[u] for u in enroll_utts]
        enroll_emb = embed(enroll, enroll_utts)
        names, model_rows, model_counts = scorer.speaker_models(enroll_emb, speakers)
        rows.append(model_rows)
        counts.append(model_counts)
        speaker = np.searchsorted(names, speakers)  # names are sorted
        frames.append(np.bincount(speaker, embed.frames(enroll, enroll_utts), len(names)))
        norms.append(np.bincount(speaker, np.linalg.norm(enroll_emb, axis=1), len(names)) / model_counts)
    enroll_table, test_table = scorer.tables(np.concatenate(rows), np.concatenate(counts))
    test_index = {u: i for i, u in enumerate(utts)}
    enroll_index = {**test_index, **{s: len(utts) + i for i, s in enumerate(names)}}  # ids are unambiguous
    measures = {"frames": np.concatenate(frames), "norm": np.concatenate(norms)}

    stats = None
    if eval_data.cohort is not None and eval_data.asnorm_top_n > 0:
        if cohort is None:
            data = eval_data.cohort
            cohort = Cohort.of(embed(data), [data.utt2spk[u] for u in data.utts])
        stats = asnorm_stats(test_table, scorer.cohort_table(cohort), eval_data.asnorm_top_n)
        measures["cohort_mean"] = stats[0]
    quality = Quality([*utts, *names], measures)

    results = []
    for trials in lists:
        left, right = trial_indices(enroll_index, trials.enroll), trial_indices(test_index, trials.test)
        scores = {"raw": trial_scores(enroll_table, test_table, left, right)}
        if stats is not None:
            scores["asnorm"] = asnorm(scores["raw"], stats, left, right)
        metrics: dict[str, float] = {}
        for kind, s in scores.items():
            metrics.update(trial_metrics(s, trials.labels, p_targets, "" if kind == "raw" else f"{kind}_"))
        results.append(TrialResult(trials, scores, metrics, quality))
    return results
