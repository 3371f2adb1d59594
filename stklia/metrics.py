"""Speaker-verification detection metrics with Kaldi-exact definitions.

All functions take array-likes of real scores (higher = more likely the same
speaker) and 0/1 (int, bool or 0.0/1.0 float) labels, where 1 marks a target
trial. Everything is vectorised: each call sorts once (O(n log n)) and never
loops over thresholds in Python, so a million trials take well under a second.

Conventions, reproduced from the Kaldi sources so that numbers are comparable
with published Kaldi results:

``compute_eer`` follows ``src/ivectorbin/compute-eer.cc`` (``ComputeEer``).
    Target scores ``T`` and non-target scores ``N`` are sorted ascending
    (sizes ``nt``, ``nn``). For ``p = 0, 1, ..., nt - 2`` Kaldi looks at
    ``N[nn - 1 - floor(nn * p / nt)]`` (the non-target that would sit at the
    same error rate from the top) and stops at the first ``p`` where that
    score is *strictly* below ``T[p]``; if it never stops, ``p = nt - 1``.
    It reports ``eer = p / nt`` (a miss rate: the fraction of the sorted
    targets before position ``p``) and ``threshold = T[p]``. Consequences:
    perfectly separated scores give EER 0 with the threshold at the lowest
    target score; a single target trial always gives EER 0; a tie between
    ``N[...]`` and ``T[p]`` does *not* stop the walk (strict ``<``), and
    duplicated target scores count individually, so with ties the reported
    EER can exceed the fraction of targets strictly below ``threshold``.

``compute_min_dcf`` follows ``egs/sre08/v1/sid/compute_min_dcf.py``
    (``ComputeErrorRates`` + ``ComputeMinDcf``). All scores are sorted
    ascending with a *stable* sort (Python's ``sorted`` with
    ``key=itemgetter(1)``), so equal scores keep their input order. Every
    sorted position ``i`` is an operating point "reject positions 0..i":
    ``fnr[i] = (#targets in 0..i) / #targets`` and
    ``fpr[i] = 1 - (#non-targets in 0..i) / #non-targets``, with cost
    ``c_miss * fnr * p_target + c_fa * fpr * (1 - p_target)``. The first
    minimum wins and is divided by ``min(c_miss * p_target,
    c_fa * (1 - p_target))``; the reported threshold is the score at that
    position, i.e. the decision is "target iff score > threshold".
    Two Kaldi quirks follow and are kept by default (``kaldi=True``):
    (1) inside a group of tied scores, positions part-way through the group
    are evaluated too, although no threshold can split tied scores, so with
    ties the result depends on trial order and can be optimistic;
    (2) the "accept everything" point (fnr 0, fpr 1) is never evaluated.
    ``kaldi=False`` instead evaluates exactly the operating points a real
    threshold can produce (whole tie groups, plus accept-all) and reports a
    threshold for the rule "target iff score >= threshold", so that
    ``compute_actual_dcf`` at that threshold returns the same minimum.
    Without ties, and when accept-all is not the unique optimum (it never is
    for ``c_fa * (1 - p_target) >= c_miss * p_target``, e.g. the usual
    ``p_target <= 0.5`` with unit costs), both modes give the same minDCF.

``compute_actual_dcf`` evaluates one fixed threshold with the rule
    "target iff score >= threshold" and the same cost and normalisation.

Arithmetic is float64 (Kaldi's ``compute-eer`` reads scores as 32-bit
``BaseFloat``, so scores that differ only beyond float32 precision are ties
there but not here; cast to ``np.float32`` first to reproduce that). NaN
scores are rejected because sorting them is meaningless.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["METRIC_DECIMALS", "compute_actual_dcf", "compute_eer", "compute_min_dcf"]

# Decimals of EER (%) and minDCF in result files: minDCF as Kaldi's compute_min_dcf.py prints it.
METRIC_DECIMALS = 4


def _check_inputs(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validate once so every metric fails loudly on the same bad input."""
    s = np.asarray(scores)
    y = np.asarray(labels)
    if s.ndim != 1 or y.ndim != 1:
        raise ValueError(f"scores and labels must be 1-D, got shapes {s.shape} and {y.shape}")
    if s.shape[0] != y.shape[0]:
        raise ValueError(f"scores and labels differ in length: {s.shape[0]} vs {y.shape[0]}")
    if not (np.issubdtype(s.dtype, np.number) or s.dtype == np.bool_) or np.iscomplexobj(s):
        raise ValueError(f"scores must be real numbers, got dtype {s.dtype}")
    s = s.astype(np.float64, copy=False)
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    if y.dtype == np.bool_:
        y = y.astype(np.int8)
    elif not np.issubdtype(y.dtype, np.number) or np.iscomplexobj(y):
        raise ValueError(f"labels must be 0/1 (int or bool), got dtype {y.dtype}")
    is_target = y == 1
    if not np.all(is_target | (y == 0)):
        bad = np.unique(y[~(is_target | (y == 0))])[:5]
        raise ValueError(f"labels must be 0 or 1, found {bad.tolist()}")
    n_tar = int(np.count_nonzero(is_target))
    if n_tar == 0:
        raise ValueError("no target trials (label 1): the miss rate is undefined")
    if n_tar == s.shape[0]:
        raise ValueError("no non-target trials (label 0): the false-alarm rate is undefined")
    return s, is_target


def _check_costs(p_target: float, c_miss: float, c_fa: float) -> None:
    """Same checks as Kaldi's CheckArgs: otherwise the normaliser is <= 0."""
    if not 0.0 < p_target < 1.0:
        raise ValueError(f"p_target must be in (0, 1), got {p_target}")
    if not c_miss > 0.0:
        raise ValueError(f"c_miss must be > 0, got {c_miss}")
    if not c_fa > 0.0:
        raise ValueError(f"c_fa must be > 0, got {c_fa}")


def compute_eer(scores: ArrayLike, labels: ArrayLike) -> tuple[float, float]:
    """Equal error rate exactly as Kaldi's ``compute-eer`` computes it.

    Returns ``(eer, threshold)`` with ``eer`` a fraction in [0, 1]. Kaldi's
    walk is reproduced position by position (see the module docstring), so
    results, including tie behaviour and the reported threshold (a target
    score), are identical to the C++ tool; only the walk is done as one
    vectorised comparison instead of a loop.
    """
    s, is_target = _check_inputs(scores, labels)
    tar = np.sort(s[is_target])
    non = np.sort(s[~is_target])
    nt, nn = tar.shape[0], non.shape[0]
    # Kaldi: nontarget_n = (ssize_t)(nontarget_size * target_position * 1.0 / target_size),
    # a truncated double division; mirror it in float64 rather than integer
    # floor division so even huge sizes round the same way.
    pos = np.arange(nt - 1, dtype=np.int64)
    nontarget_n = ((nn * pos).astype(np.float64) / nt).astype(np.int64)
    nontarget_pos = np.maximum(nn - 1 - nontarget_n, 0)
    stop = non[nontarget_pos] < tar[:-1]
    p = int(np.argmax(stop)) if stop.any() else nt - 1
    return p / nt, float(tar[p])


def _dcf_curve(
    s: np.ndarray, is_target: np.ndarray, p_target: float, c_miss: float, c_fa: float
) -> tuple[np.ndarray, np.ndarray]:
    """Kaldi's ComputeErrorRates + per-point cost, with cumsum instead of loops.

    Returns the stable-sorted scores and the unnormalised detection cost at
    every sorted position (operating point "reject positions 0..i").
    """
    # Kaldi sorts stably (Python's sorted), so tied scores keep input order.
    # With all scores distinct every sort gives that same order, so try the
    # ~3x faster unstable sort first and redo it stably only if ties exist.
    order = np.argsort(s)
    sorted_scores = s[order]
    if np.any(sorted_scores[1:] == sorted_scores[:-1]):
        order = np.argsort(s, kind="stable")
        sorted_scores = s[order]
    sorted_tar = is_target[order]
    n_tar = np.count_nonzero(is_target)
    n_non = s.shape[0] - n_tar
    cum_tar = np.cumsum(sorted_tar, dtype=np.int64)
    cum_non = np.arange(1, s.shape[0] + 1, dtype=np.int64) - cum_tar
    # Same float operations, in the same order, as the Kaldi script, so the
    # costs (and hence the arg-min and its ties) are bit-identical.
    fnrs = cum_tar / float(n_tar)
    fprs = 1 - cum_non / float(n_non)
    c_det = c_miss * fnrs * p_target + c_fa * fprs * (1 - p_target)
    return sorted_scores, c_det


def compute_min_dcf(
    scores: ArrayLike,
    labels: ArrayLike,
    p_target: float = 0.01,
    c_miss: float = 1.0,
    c_fa: float = 1.0,
    *,
    kaldi: bool = True,
) -> tuple[float, float]:
    """Normalised minimum detection cost, as Kaldi's ``compute_min_dcf.py``.

    Returns ``(min_dcf, threshold)``. With ``kaldi=True`` (default) the value
    and threshold are identical to the Kaldi script, including its tie and
    accept-all quirks; the threshold then means "target iff score >
    threshold". With ``kaldi=False`` only operating points reachable by a
    threshold are considered and the threshold means "target iff score >=
    threshold" (``+inf`` = reject everything). See the module docstring.
    """
    s, is_target = _check_inputs(scores, labels)
    _check_costs(p_target, c_miss, c_fa)
    c_def = min(c_miss * p_target, c_fa * (1 - p_target))
    sorted_scores, c_det = _dcf_curve(s, is_target, p_target, c_miss, c_fa)
    if kaldi:
        i = int(np.argmin(c_det))  # first minimum, like Kaldi's strict "<"
        return float(c_det[i] / c_def), float(sorted_scores[i])
    # Only the last position of each tie group is a reachable operating point.
    last_of_group = np.flatnonzero(np.append(sorted_scores[1:] != sorted_scores[:-1], True))
    next_score = np.append(sorted_scores[last_of_group[:-1] + 1], np.inf)
    accept_all = c_fa * 1.0 * (1 - p_target)  # fnr 0, fpr 1
    costs = np.concatenate(([accept_all], c_det[last_of_group]))
    thresholds = np.concatenate(([sorted_scores[0]], next_score))
    i = int(np.argmin(costs))  # lowest threshold among equal costs
    return float(costs[i] / c_def), float(thresholds[i])


def compute_actual_dcf(
    scores: ArrayLike,
    labels: ArrayLike,
    threshold: float,
    p_target: float = 0.01,
    c_miss: float = 1.0,
    c_fa: float = 1.0,
) -> float:
    """Normalised DCF of the fixed decision "target iff score >= threshold".

    This is the cost a deployed system actually pays (e.g. with a threshold
    tuned on a dev set), as opposed to the oracle minimum; same cost formula
    and normalisation as ``compute_min_dcf``.
    """
    s, is_target = _check_inputs(scores, labels)
    _check_costs(p_target, c_miss, c_fa)
    threshold = float(threshold)
    if np.isnan(threshold):
        raise ValueError("threshold is NaN")
    n_tar = np.count_nonzero(is_target)
    n_non = s.shape[0] - n_tar
    accepted = s >= threshold
    fnr = np.count_nonzero(is_target & ~accepted) / float(n_tar)
    fpr = np.count_nonzero(~is_target & accepted) / float(n_non)
    c_det = c_miss * fnr * p_target + c_fa * fpr * (1 - p_target)
    return float(c_det / min(c_miss * p_target, c_fa * (1 - p_target)))
