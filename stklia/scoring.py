"""Verification scoring: cosine scores of trial lists from an embedding table, and their metrics."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from stklia.data.kaldi import DataSet, Trials
from stklia.embeddings import embed_utterances
from stklia.metrics import compute_eer, compute_min_dcf


def cosine_scores(emb: np.ndarray, index: dict[str, int], enroll: Sequence[str], test: Sequence[str]) -> np.ndarray:
    """Cosine similarity of each (enroll[i], test[i]) pair, vectorised over all trials."""
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(min=1e-12)
    a = unit[[index[u] for u in enroll]]
    b = unit[[index[u] for u in test]]
    return np.einsum("ij,ij->i", a, b)


def trial_metrics(scores: np.ndarray, labels: np.ndarray, p_targets: Sequence[float]) -> dict[str, float]:
    """EER (%) and minDCF at each p_target."""
    eer, _ = compute_eer(scores, labels)
    results = {"eer": 100 * eer}
    for p in p_targets:
        results[f"min_dcf@{p:g}"] = compute_min_dcf(scores, labels, p_target=p)[0]
    return results


def evaluate(generator: nn.Module, data: DataSet, trial_lists: Sequence[Trials], cmn: bool,
             device: torch.device, p_targets: Sequence[float] = (0.01, 0.001), num_workers: int = 0,
             progress: bool = True) -> list[dict]:
    """Embed every utterance the trial lists name (once), score each list, and measure it."""
    utts = sorted({u for trials in trial_lists for u in (*trials.enroll, *trials.test)})
    emb = embed_utterances(generator, data, utts, cmn, device, num_workers, progress)
    index = {u: i for i, u in enumerate(utts)}
    results = []
    for trials in trial_lists:
        scores = cosine_scores(emb, index, trials.enroll, trials.test)
        results.append({"trials": str(trials.path), "num_trials": len(scores),
                        **trial_metrics(scores, trials.labels, p_targets)})
    return results


def format_results(results: Sequence[dict]) -> str:
    """A plain-text table, one row per trial list."""
    columns = [k for k in results[0] if k not in ("trials", "num_trials")]
    header = ["trials", "n", *columns]
    rows = [[r["trials"], str(r["num_trials"]), *(f"{r[c]:.4f}" if c != "eer" else f"{r[c]:.2f}" for c in columns)]
            for r in results]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)
