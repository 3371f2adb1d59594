"""Verification scoring: embed what the trial lists name, score them, AS-norm, metrics and outputs.

Trials are scored from two tables, one row per utterance or enrolled speaker, in one vectorised
pass per list: ids are mapped to table rows once per list, then each score is the dot product of
the enrollment side's row of one table and the test side's row of the other, in chunks. A
`Scorer` builds the tables: by default (cosine) both hold the unit-length embeddings; an optional
embedding normalisation (mean subtraction, whitening) comes first; with a PLDA back-end the rows
are Kaldi's PLDA log-likelihood-ratio terms (stklia.backends.plda), so the same pass gives LLRs.

Speaker models (enrollment, `1 spk utt` trials) are, for cosine, the mean of the speaker's
length-normalised utterance embeddings, length-normalised again; for PLDA, as in Kaldi, the mean
of the speaker's embeddings, scored with its number of utterances.

AS-norm (adaptive symmetric score normalisation; Cumani et al. 2011, Matejka et al. 2017):
each side x of a trial is scored against every cohort speaker model; the mean mu_x and the
standard deviation sd_x (population, ddof=0) of its top_n highest cohort scores normalise the
raw score s as  0.5 * ((s - mu_a) / sd_a + (s - mu_b) / sd_b).  The cohort is the speaker
models of a data directory (e.g. the training data), and top_n is capped at its size. With PLDA
each side is scored as the test side against the cohort speakers enrolled with their utterances.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from stklia.atomic import atomic_output, file_stem, write_json
from stklia.backends.scorer import Scorer
from stklia.data.kaldi import EvalData, Trials, read_table
from stklia.embeddings import Embedder
from stklia.errors import InputError
from stklia.metrics import METRIC_DECIMALS, SortedTrials

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass
class TrialResult:
    """Scores of one trial list, in trial order, by kind ("raw", "asnorm"), and their metrics."""

    trials: Trials
    scores: dict[str, np.ndarray]
    metrics: dict[str, float]

    def summary(self) -> dict[str, Any]:
        """What the results JSONs hold: metrics rounded to METRIC_DECIMALS (no 0.5770000000000001)."""
        metrics = {key: round(value, METRIC_DECIMALS) for key, value in self.metrics.items()}
        return {"trials": str(self.trials.path), "num_trials": len(self.trials.labels), **metrics}

    def figure(self) -> Figure:
        from stklia.det import det_figure  # here: matplotlib takes 0.6 s to import

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


def asnorm_stats(table: np.ndarray, cohort: np.ndarray, top_n: int, chunk: int = 4096
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation (ddof=0) of each table row's top_n scores against the cohort rows
    (`table`: test-side rows, `cohort`: enrollment-side rows)."""
    top_n = min(top_n, len(cohort))
    if top_n < 2:
        raise ValueError(f"AS-norm needs a top-N of at least 2 cohort models, got {top_n}")
    mean, std = np.empty(len(table)), np.empty(len(table))
    cohort_t = cohort.T.astype(table.dtype)
    for start in range(0, len(table), chunk):
        s = table[start : start + chunk] @ cohort_t
        top = np.partition(s, len(cohort) - top_n, axis=1)[:, len(cohort) - top_n :].astype(np.float64)
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


def evaluate(generator: nn.Module, eval_data: EvalData, cmn: bool, device: torch.device,
             p_targets: Sequence[float] = (0.01, 0.001), num_workers: int = 0, progress: bool = True, *,
             extraction: Mapping[str, Any] | None = None, asnorm_top_n: int = 0, scorer: Scorer | None = None,
             embed: Embedder | None = None) -> list[TrialResult]:
    """Embed what the trial lists name (each utterance once), score every list and measure it.

    With a cohort and asnorm_top_n > 0, the scores are also AS-normalised and measured
    (metrics prefixed `asnorm_`). `extraction`: keyword arguments of embed_utterances; `scorer`:
    the normalisation and back-end (default: cosine of the raw embeddings); `embed`: an Embedder of these
    settings that may already hold some of the embeddings (default: a new one).
    """
    embed = embed or Embedder(generator, cmn, device, num_workers, progress, extraction)

    scorer = scorer or Scorer()
    lists = eval_data.trial_lists
    enroll = eval_data.enroll
    lefts = set().union(*(t.enroll for t in lists))
    models = lefts & set(enroll.utt2spk.values()) if enroll is not None else set()
    utts = sorted((lefts - models).union(*(t.test for t in lists)))
    rows, counts = [scorer.utterances(embed(eval_data.data, utts))], [np.ones(len(utts))]
    names: list[str] = []
    if models:
        enroll_utts = [u for u in enroll.utts if enroll.utt2spk[u] in models]
        names, model_rows, model_counts = scorer.speaker_models(embed(enroll, enroll_utts),
                                                                [enroll.utt2spk[u] for u in enroll_utts])
        rows.append(model_rows)
        counts.append(model_counts)
    enroll_table, test_table = scorer.tables(np.concatenate(rows), np.concatenate(counts))
    test_index = {u: i for i, u in enumerate(utts)}
    enroll_index = {**test_index, **{s: len(utts) + i for i, s in enumerate(names)}}  # ids are unambiguous

    stats = None
    if eval_data.cohort is not None and asnorm_top_n > 0:
        cohort = eval_data.cohort
        _, cohort_rows, cohort_counts = scorer.speaker_models(embed(cohort, cohort.utts),
                                                              [cohort.utt2spk[u] for u in cohort.utts])
        stats = asnorm_stats(test_table, scorer.tables(cohort_rows, cohort_counts)[0], asnorm_top_n)

    results = []
    for trials in lists:
        left, right = trial_indices(enroll_index, trials.enroll), trial_indices(test_index, trials.test)
        scores = {"raw": trial_scores(enroll_table, test_table, left, right)}
        if stats is not None:
            scores["asnorm"] = asnorm(scores["raw"], stats, left, right)
        metrics: dict[str, float] = {}
        for kind, s in scores.items():
            metrics.update(trial_metrics(s, trials.labels, p_targets, "" if kind == "raw" else f"{kind}_"))
        results.append(TrialResult(trials, scores, metrics))
    return results


def write_scores(path: Path, trials: Trials, scores: np.ndarray) -> None:
    """`<a> <b> <score>` lines in trial order."""
    with atomic_output(path) as tmp:
        tmp.write_text("".join(f"{a} {b} {s:.6f}\n" for a, b, s in zip(trials.enroll, trials.test, scores.tolist())))


def read_scores(path: str | Path, trials: Trials) -> np.ndarray:
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


def result_names(results: Sequence[TrialResult]) -> list[str]:
    """A name per trial list for files and TensorBoard tags, from its directory and file (test/trials ->
    test_trials), numbered when two lists would share one."""
    names: list[str] = []
    for result in results:
        name = base = file_stem(result.trials.name)
        copy = 1
        while name in names:
            copy += 1
            name = f"{base}_{copy}"
        names.append(name)
    return names


def write_results(out_dir: Path, results: Sequence[TrialResult]) -> list[dict[str, Any]]:
    """Per trial list in out_dir: score files, DET plot, results JSON. Returns the summaries (with file names)."""
    summaries = []
    for result, stem in zip(results, result_names(results)):
        files = {}
        for kind, scores in result.scores.items():
            files[f"{kind}_scores"] = f"{stem}.scores" if kind == "raw" else f"{stem}.{kind}.scores"
            write_scores(out_dir / files[f"{kind}_scores"], result.trials, scores)
        files["det"] = f"{stem}.det.png"
        with atomic_output(out_dir / files["det"]) as tmp:
            result.figure().savefig(tmp, format="png", dpi=100)
        summary = {**result.summary(), "files": {k: str(out_dir / v) for k, v in files.items()}}
        write_json(out_dir / f"{stem}.json", summary)
        summaries.append(summary)
    return summaries


def format_results(results: Sequence[dict]) -> str:
    """A plain-text table, one row per trial list and kind of scores (raw, asnorm), one column per metric."""
    rows, columns = [], []
    for r in results:
        prefixes = {kind: "" if kind == "raw" else f"{kind}_"
                    for kind in (k.removesuffix("_scores") for k in r["files"] if k.endswith("_scores"))}
        columns = [k for k in r if k not in ("trials", "num_trials", "files")
                   and not any(prefix and k.startswith(prefix) for prefix in prefixes.values())]
        for kind, prefix in prefixes.items():
            rows.append([r["trials"], kind, str(r["num_trials"]),
                         *(f"{r[prefix + c]:.2f}" if c.endswith("eer") else f"{r[prefix + c]:.4f}" for c in columns)])
    header = ["trials", "scores", "n", *columns]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)
