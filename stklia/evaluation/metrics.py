"""Speaker-verification detection metrics with Kaldi-exact definitions.

All functions take array-likes of real scores (higher = more likely the same
speaker) and 0/1 (int, bool or 0.0/1.0 float) labels, where 1 marks a target
trial. Everything is vectorised: nothing loops over thresholds in Python.
``SortedTrials`` sorts a trial list once and reads every sort-based metric off
that one sort (EER, minDCF at any number of operating points, minCllr, actual
DCF), with values bit-identical to the one-metric functions below, which are
thin wrappers around it; a million trials take well under a tenth of a second.

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
    Applied to log-likelihood ratios at the Bayes threshold
    ``bayes_threshold(p_target, c_miss, c_fa) = log(c_fa (1 - p_target) /
    (c_miss p_target))`` it is the *actual DCF* of a calibrated system
    (``SortedTrials.act_dcf``), the cost its scores pay when taken at face value.

``compute_cllr`` is Brümmer's log-likelihood-ratio cost (Brümmer and du Preez
    2006; the BOSARIS toolkit's ``cllr``): ``(mean over targets of
    log2(1 + exp(-llr)) + mean over non-targets of log2(1 + exp(llr))) / 2``.
    0 for perfect, confident LLRs; 1 for the uninformative llr = 0.
    ``SortedTrials.min_cllr`` is its value after the optimal monotonic
    recalibration: pool-adjacent-violators (PAV) on the target indicator of
    the sorted trials, tied scores pooled (equal scores get equal LLRs), then
    ``llr = logit(posterior) - logit(n_tar / n)`` (BOSARIS ``opt_loglr``).

Arithmetic is float64 (Kaldi's ``compute-eer`` reads scores as 32-bit
``BaseFloat``, so scores that differ only beyond float32 precision are ties
there but not here; cast to ``np.float32`` first to reproduce that). NaN
scores are rejected because sorting them is meaningless.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["METRIC_DECIMALS", "SortedTrials", "bayes_threshold", "check_trials", "compute_actual_dcf", "compute_cllr",
           "compute_eer", "compute_min_cllr", "compute_min_dcf"]

# Decimals of EER (%) and minDCF in result files: minDCF as Kaldi's compute_min_dcf.py prints it.
METRIC_DECIMALS = 4


def check_trials(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Scores (float64) and target flags of a trial list, checked once so that every metric (and calibration)
    fails loudly, the same way, on the same bad input."""
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


def _detection_cost(fnr, fpr, p_target: float, c_miss: float, c_fa: float):
    """Unnormalised detection cost of miss and false-alarm rates (arrays or floats): the same float
    operations, in the same order, as Kaldi's script, so costs and the arg-min's ties are bit-identical."""
    return c_miss * fnr * p_target + c_fa * fpr * (1 - p_target)


def _default_cost(p_target: float, c_miss: float, c_fa: float) -> float:
    """The cost of the better trivial system (accept all or reject all): the DCF normaliser."""
    return min(c_miss * p_target, c_fa * (1 - p_target))


def bayes_threshold(p_target: float, c_miss: float = 1.0, c_fa: float = 1.0) -> float:
    """The log-likelihood ratio above which accepting costs less than rejecting."""
    _check_costs(p_target, c_miss, c_fa)
    return math.log(c_fa * (1 - p_target) / (c_miss * p_target))


def _kaldi_eer(tar: np.ndarray, non: np.ndarray) -> tuple[float, float]:
    """Kaldi's ComputeEer walk on ascending target and non-target scores, as one vectorised comparison."""
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


def compute_eer(scores: ArrayLike, labels: ArrayLike) -> tuple[float, float]:
    """Equal error rate exactly as Kaldi's ``compute-eer`` computes it.

    Returns ``(eer, threshold)`` with ``eer`` a fraction in [0, 1]. Kaldi's
    walk is reproduced position by position (see the module docstring), so
    results, including tie behaviour and the reported threshold (a target
    score), are identical to the C++ tool; only the walk is done as one
    vectorised comparison instead of a loop. Alone, sorting the two classes
    apart is cheaper than ``SortedTrials``'s joint sort; both give the same.
    """
    s, is_target = check_trials(scores, labels)
    return _kaldi_eer(np.sort(s[is_target]), np.sort(s[~is_target]))


def _stable_order(s: np.ndarray) -> np.ndarray:
    """Indices sorting s ascending with equal scores in input order, i.e. a stable sort (Kaldi sorts with
    Python's sorted), at the price of numpy's unstable sort, which is faster than its stable one, plus a sort of the
    tied trials only (docs/benchmarks.md)."""
    order = np.argsort(s)
    sorted_scores = s[order]
    tied = sorted_scores[1:] == sorted_scores[:-1]  # position i + 1 repeats position i
    if tied.any():
        in_group = np.zeros(s.shape[0], dtype=bool)
        in_group[1:] |= tied
        in_group[:-1] |= tied
        members = np.flatnonzero(in_group)
        starts_group = np.concatenate(([True], ~tied))[members]
        group = np.maximum.accumulate(np.where(starts_group, members, 0))  # position of the group's first member
        # Groups occupy consecutive positions in increasing order, so sorting the keys (group, index) puts
        # each group's input indices back in their positions, ascending.
        n = np.int64(s.shape[0])
        order[members] = np.sort(group * n + order[members]) % n
    return order


class SortedTrials:
    """A trial list sorted once, in Kaldi's stable order; every sort-based metric is read off this one sort.

    ``eer()``, ``min_dcf(...)`` (any number of operating points), ``act_dcf(...)``, ``actual_dcf(...)``
    and ``min_cllr()`` equal ``compute_eer``, ``compute_min_dcf``, ... of the same trials, bit for bit.
    """

    def __init__(self, scores: ArrayLike, labels: ArrayLike):
        s, is_target = check_trials(scores, labels)
        order = _stable_order(s)
        self.scores = s[order]  # ascending
        self.is_target = is_target[order]
        self.n_tar = int(np.count_nonzero(is_target))
        self.n_non = s.shape[0] - self.n_tar
        cum_tar = np.cumsum(self.is_target, dtype=np.int64)  # targets in positions 0..i
        cum_non = np.arange(1, s.shape[0] + 1, dtype=np.int64) - cum_tar
        # Kaldi's ComputeErrorRates: operating point i rejects positions 0..i.
        self._fnrs = cum_tar / float(self.n_tar)
        self._fprs = 1 - cum_non / float(self.n_non)
        self._cum_tar = cum_tar

    def _group_ends(self) -> np.ndarray:
        """The last position of each group of tied scores, ascending."""
        s = self.scores
        return np.flatnonzero(np.append(s[1:] != s[:-1], True))

    def det_curve(self) -> tuple[np.ndarray, np.ndarray]:
        """(false-alarm rates, miss rates) of every threshold "target iff score >= t": one point per distinct
        score t, in increasing t (false alarms falling, misses rising), plus t = +inf (reject all)."""
        starts = np.concatenate(([0], self._group_ends() + 1))  # the first position of each group, then n
        targets_below = np.concatenate(([0], self._cum_tar))[starts]
        return 1 - (starts - targets_below) / self.n_non, targets_below / self.n_tar

    def eer(self) -> tuple[float, float]:
        """``compute_eer`` of these trials."""
        return _kaldi_eer(self.scores[self.is_target], self.scores[~self.is_target])

    def min_dcf(self, p_target: float = 0.01, c_miss: float = 1.0, c_fa: float = 1.0, *, kaldi: bool = True
                ) -> tuple[float, float]:
        """``compute_min_dcf`` of these trials."""
        _check_costs(p_target, c_miss, c_fa)
        c_det = _detection_cost(self._fnrs, self._fprs, p_target, c_miss, c_fa)
        c_def = _default_cost(p_target, c_miss, c_fa)
        if kaldi:
            i = int(np.argmin(c_det))  # first minimum, like Kaldi's strict "<"
            return float(c_det[i] / c_def), float(self.scores[i])
        # Only the last position of each tie group is a reachable operating point.
        s = self.scores
        last_of_group = self._group_ends()
        next_score = np.append(s[last_of_group[:-1] + 1], np.inf)
        accept_all = c_fa * 1.0 * (1 - p_target)  # fnr 0, fpr 1
        costs = np.concatenate(([accept_all], c_det[last_of_group]))
        thresholds = np.concatenate(([s[0]], next_score))
        i = int(np.argmin(costs))  # lowest threshold among equal costs
        return float(costs[i] / c_def), float(thresholds[i])

    def actual_dcf(self, threshold: float, p_target: float = 0.01, c_miss: float = 1.0, c_fa: float = 1.0
                   ) -> float:
        """``compute_actual_dcf`` of these trials: a binary search instead of a pass over them."""
        _check_costs(p_target, c_miss, c_fa)
        threshold = _check_threshold(threshold)
        rejected = int(np.searchsorted(self.scores, threshold, side="left"))  # scores < threshold
        misses = int(self._cum_tar[rejected - 1]) if rejected else 0
        false_alarms = self.n_non - (rejected - misses)
        c_det = _detection_cost(misses / float(self.n_tar), false_alarms / float(self.n_non), p_target, c_miss, c_fa)
        return float(c_det / _default_cost(p_target, c_miss, c_fa))

    def act_dcf(self, p_target: float = 0.01, c_miss: float = 1.0, c_fa: float = 1.0) -> float:
        """Actual DCF of the scores read as log-likelihood ratios: decisions at the Bayes threshold."""
        return self.actual_dcf(bayes_threshold(p_target, c_miss, c_fa), p_target, c_miss, c_fa)

    def cllr(self) -> float:
        """``compute_cllr`` of these trials (up to the order of summation)."""
        return _cllr(self.scores, self.is_target)

    def min_cllr(self) -> float:
        """Cllr after the optimal monotonic recalibration (PAV, ties pooled): the discrimination part of Cllr."""
        from scipy.optimize import isotonic_regression  # imported here: slow to import, and only min_cllr needs it

        ends = self._group_ends()
        sizes = np.diff(ends, prepend=-1)
        targets = np.diff(self._cum_tar[ends], prepend=0)
        posterior = isotonic_regression(targets / sizes, weights=sizes).x  # P(target) per group, non-decreasing
        with np.errstate(divide="ignore"):  # groups of one class get posterior 0 or 1: llr -inf or +inf
            llr = np.log(posterior) - np.log1p(-posterior) - math.log(self.n_tar / self.n_non)
        non_targets = sizes - targets
        has_tar, has_non = targets > 0, non_targets > 0  # the others' infinite LLRs cost nothing
        tar_cost = np.dot(targets[has_tar], np.logaddexp(0.0, -llr[has_tar]))
        non_cost = np.dot(non_targets[has_non], np.logaddexp(0.0, llr[has_non]))
        return float((tar_cost / self.n_tar + non_cost / self.n_non) / (2 * math.log(2)))


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
    For several operating points, sort once with ``SortedTrials``.
    """
    return SortedTrials(scores, labels).min_dcf(p_target, c_miss, c_fa, kaldi=kaldi)


def _check_threshold(threshold: float) -> float:
    threshold = float(threshold)
    if np.isnan(threshold):
        raise ValueError("threshold is NaN")
    return threshold


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
    and normalisation as ``compute_min_dcf``. One pass, no sort.
    """
    s, is_target = check_trials(scores, labels)
    _check_costs(p_target, c_miss, c_fa)
    threshold = _check_threshold(threshold)
    n_tar = np.count_nonzero(is_target)
    n_non = s.shape[0] - n_tar
    accepted = s >= threshold
    fnr = np.count_nonzero(is_target & ~accepted) / float(n_tar)
    fpr = np.count_nonzero(~is_target & accepted) / float(n_non)
    return float(_detection_cost(fnr, fpr, p_target, c_miss, c_fa) / _default_cost(p_target, c_miss, c_fa))


def _cllr(llrs: np.ndarray, is_target: np.ndarray) -> float:
    tar_cost = np.mean(np.logaddexp(0.0, -llrs[is_target]))
    non_cost = np.mean(np.logaddexp(0.0, llrs[~is_target]))
    return float((tar_cost + non_cost) / (2 * math.log(2)))


def compute_cllr(llrs: ArrayLike, labels: ArrayLike) -> float:
    """Log-likelihood-ratio cost of scores read as natural-log LLRs (Brümmer); no sort."""
    return _cllr(*check_trials(llrs, labels))


def compute_min_cllr(scores: ArrayLike, labels: ArrayLike) -> float:
    """Cllr of the optimally (monotonically) recalibrated scores; see ``SortedTrials.min_cllr``."""
    return SortedTrials(scores, labels).min_cllr()
