"""Verification scoring: embed what the trial lists name, cosine-score them, AS-norm, metrics and outputs.

Trials are scored from an embedding table in one vectorised pass per list: ids are mapped to
table rows once per list, then scores are row-wise dot products of unit vectors, in chunks.

Speaker models (enrollment, `1 spk utt` trials) are the mean of the speaker's length-normalised
utterance embeddings, length-normalised again.

AS-norm (adaptive symmetric score normalisation; Cumani et al. 2011, Matejka et al. 2017):
each side x of a trial is scored against every cohort speaker model; the mean mu_x and the
standard deviation sd_x (population, ddof=0) of its top_n highest cohort scores normalise the
raw score s as  0.5 * ((s - mu_a) / sd_a + (s - mu_b) / sd_b).  The cohort is the speaker
models of a data directory (e.g. the training data), and top_n is capped at its size.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from stklia.atomic import atomic_output, write_json
from stklia.data.kaldi import DataSet, EvalData, Trials
from stklia.det import det_figure
from stklia.embeddings import embed_utterances
from stklia.metrics import METRIC_DECIMALS, compute_eer, compute_min_dcf


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
        return det_figure(self.scores, self.trials.labels, self.trials.name)


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1."""
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)


def speaker_models(emb: np.ndarray, speakers: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Sorted speaker ids and their models: the length-normalised mean of their length-normalised embeddings."""
    names, inverse = np.unique(np.asarray(speakers), return_inverse=True)
    sums = np.zeros((len(names), emb.shape[1]))
    np.add.at(sums, inverse, unit(emb.astype(np.float64)))
    return names.tolist(), unit(sums)  # dividing the sums by the counts would not change their direction


def trial_indices(index: Mapping[str, int], ids: Sequence[str]) -> np.ndarray:
    """Table rows of the trial ids (the ids were checked when the trials were read)."""
    return np.fromiter(map(index.__getitem__, ids), dtype=np.int64, count=len(ids))


def cosine_scores(table: np.ndarray, left: np.ndarray, right: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Dot products of table rows left[i] and right[i] (cosines when the rows are unit vectors)."""
    scores = np.empty(len(left), dtype=np.float64)
    for start in range(0, len(left), chunk):  # chunk x dim gathered rows at a time: they stay in cache
        stop = start + chunk
        scores[start:stop] = np.einsum("ij,ij->i", table[left[start:stop]], table[right[start:stop]])
    return scores


def asnorm_stats(table: np.ndarray, cohort: np.ndarray, top_n: int, chunk: int = 4096
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation (ddof=0) of each table row's top_n cosine scores against the cohort."""
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
    """EER (%) and minDCF at each p_target, with keys prefixed by `prefix`."""
    eer, _ = compute_eer(scores, labels)
    results = {f"{prefix}eer": 100 * eer}
    for p in p_targets:
        results[f"{prefix}min_dcf@{p:g}"] = compute_min_dcf(scores, labels, p_target=p)[0]
    return results


def evaluate(generator: nn.Module, eval_data: EvalData, cmn: bool, device: torch.device,
             p_targets: Sequence[float] = (0.01, 0.001), num_workers: int = 0, progress: bool = True, *,
             extraction: Mapping[str, Any] | None = None, asnorm_top_n: int = 0) -> list[TrialResult]:
    """Embed what the trial lists name (each utterance once), score every list and measure it.

    With a cohort and asnorm_top_n > 0, the scores are also AS-normalised and measured
    (metrics prefixed `asnorm_`). `extraction`: keyword arguments of embed_utterances.
    """
    def embed(data: DataSet, utts: list[str]) -> np.ndarray:
        return embed_utterances(generator, data, utts, cmn, device, num_workers, progress, **(extraction or {}))

    lists = eval_data.trial_lists
    enroll = eval_data.enroll
    lefts = set().union(*(t.enroll for t in lists))
    models = lefts & set(enroll.utt2spk.values()) if enroll is not None else set()
    utts = sorted((lefts - models).union(*(t.test for t in lists)))
    parts = [unit(embed(eval_data.data, utts))]
    names: list[str] = []
    if models:
        enroll_utts = [u for u in enroll.utts if enroll.utt2spk[u] in models]
        names, model_emb = speaker_models(embed(enroll, enroll_utts), [enroll.utt2spk[u] for u in enroll_utts])
        parts.append(model_emb)
    table = np.concatenate(parts).astype(np.float32)
    test_index = {u: i for i, u in enumerate(utts)}
    enroll_index = {**test_index, **{s: len(utts) + i for i, s in enumerate(names)}}  # ids are unambiguous

    stats = None
    if eval_data.cohort is not None and asnorm_top_n > 0:
        cohort = eval_data.cohort
        _, cohort_models = speaker_models(embed(cohort, cohort.utts), [cohort.utt2spk[u] for u in cohort.utts])
        stats = asnorm_stats(table, cohort_models, asnorm_top_n)

    results = []
    for trials in lists:
        left, right = trial_indices(enroll_index, trials.enroll), trial_indices(test_index, trials.test)
        scores = {"raw": cosine_scores(table, left, right)}
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


def result_names(results: Sequence[TrialResult]) -> list[str]:
    """A name per trial list for files and TensorBoard tags, from its directory and file (test/trials ->
    test_trials), numbered when two lists would share one."""
    names: list[str] = []
    for result in results:
        name = base = re.sub(r"[^\w.-]+", "_", result.trials.name)
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
    """A plain-text table, one row per trial list: raw and normalised metrics side by side."""
    columns = [k for k in results[0] if k not in ("trials", "num_trials", "files")]
    header = ["trials", "n", *columns]
    rows = [[r["trials"], str(r["num_trials"]), *(f"{r[c]:.2f}" if c.endswith("eer") else f"{r[c]:.4f}"
                                                  for c in columns)]
            for r in results]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)
