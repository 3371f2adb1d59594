"""Tests for stklia.evaluation.metrics against hand-worked cases and independent references.

References written here, deliberately with plain loops and no code shared with
the module under test:

* ``kaldi_compute_eer``: line-by-line transcription of ``ComputeEer`` in
  kaldi-asr/kaldi src/ivectorbin/compute-eer.cc.
* ``kaldi_min_dcf``: transcription of ``ComputeErrorRates`` + ``ComputeMinDcf``
  in kaldi-asr/kaldi egs/sre08/v1/sid/compute_min_dcf.py.
* ``brute_force_min_dcf``: every candidate threshold (each distinct score and
  +/-inf), error rates by direct comparison, minimum cost.
* ``brute_force_eer``: min over thresholds of max(miss, false alarm), used to
  bound Kaldi's EER.
* ``previous_metrics``: stklia's vectorised EER and minDCF before
  ``SortedTrials`` (one sort per metric; numpy's stable sort when ties exist).
* ``pav_min_cllr``: minCllr from scikit-learn's IsotonicRegression and a
  per-trial Cllr loop; ``direct_cllr``: Cllr as a plain loop.
"""

from __future__ import annotations

import math
from operator import itemgetter

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression

from stklia.evaluation.metrics import (
    SortedTrials,
    bayes_threshold,
    compute_actual_dcf,
    compute_cllr,
    compute_eer,
    compute_min_cllr,
    compute_min_dcf,
)

# --------------------------------------------------------------------------
# Independent references
# --------------------------------------------------------------------------


def kaldi_compute_eer(scores, labels):
    """Transcription of Kaldi's ComputeEer (C++), sizes as in the original."""
    target_scores = sorted(float(s) for s, y in zip(scores, labels) if y == 1)
    nontarget_scores = sorted(float(s) for s, y in zip(scores, labels) if y == 0)
    target_position = 0
    target_size = len(target_scores)
    while target_position + 1 < target_size:
        nontarget_size = len(nontarget_scores)
        # (ssize_t)(nontarget_size * target_position * 1.0 / target_size)
        nontarget_n = int(nontarget_size * target_position * 1.0 / target_size)
        nontarget_position = nontarget_size - 1 - nontarget_n
        nontarget_position = max(nontarget_position, 0)
        if nontarget_scores[nontarget_position] < target_scores[target_position]:
            break
        target_position += 1
    threshold = target_scores[target_position]
    eer = target_position * 1.0 / target_size
    return eer, threshold


def kaldi_min_dcf(scores, labels, p_target, c_miss, c_fa):
    """Transcription of Kaldi's compute_min_dcf.py (plain Python loops)."""
    scores = [float(s) for s in scores]
    labels = [int(y) for y in labels]
    sorted_indexes, thresholds = zip(
        *sorted(
            [(index, threshold) for index, threshold in enumerate(scores)],
            key=itemgetter(1),
        )
    )
    labels = [labels[i] for i in sorted_indexes]
    fnrs = []
    fprs = []
    for i in range(len(labels)):
        if i == 0:
            fnrs.append(labels[i])
            fprs.append(1 - labels[i])
        else:
            fnrs.append(fnrs[i - 1] + labels[i])
            fprs.append(fprs[i - 1] + 1 - labels[i])
    fnrs_norm = sum(labels)
    fprs_norm = len(labels) - fnrs_norm
    fnrs = [x / float(fnrs_norm) for x in fnrs]
    fprs = [1 - x / float(fprs_norm) for x in fprs]

    min_c_det = float("inf")
    min_c_det_threshold = thresholds[0]
    for i in range(len(fnrs)):
        c_det = c_miss * fnrs[i] * p_target + c_fa * fprs[i] * (1 - p_target)
        if c_det < min_c_det:
            min_c_det = c_det
            min_c_det_threshold = thresholds[i]
    c_def = min(c_miss * p_target, c_fa * (1 - p_target))
    return min_c_det / c_def, min_c_det_threshold


def _rates(scores, labels, t):
    """Miss and false-alarm rates of the decision 'target iff score >= t'."""
    scores = np.asarray(scores, dtype=float)
    labels = np.asarray(labels).astype(bool)
    miss = np.mean(scores[labels] < t)
    fa = np.mean(scores[~labels] >= t)
    return miss, fa


def brute_force_min_dcf(scores, labels, p_target, c_miss, c_fa, include_accept_all=True):
    """Min normalised DCF over every threshold a real system could use.

    Returns (min_dcf, list of all thresholds attaining it). With
    include_accept_all=False, thresholds <= min(score) (which accept every
    trial) are skipped, matching the operating points Kaldi evaluates when
    there are no tied scores.
    """
    scores = np.asarray(scores, dtype=float)
    c_def = min(c_miss * p_target, c_fa * (1 - p_target))
    candidates = [-math.inf, *np.unique(scores).tolist(), math.inf]
    if not include_accept_all:
        candidates = [t for t in candidates if t > scores.min()]
    costs = []
    for t in candidates:
        miss, fa = _rates(scores, labels, t)
        costs.append((c_miss * miss * p_target + c_fa * fa * (1 - p_target)) / c_def)
    best = min(costs)
    return best, [t for t, c in zip(candidates, costs) if c == best]


def brute_force_eer(scores, labels):
    """min over thresholds of max(miss, fa): the best 'equal' error rate."""
    candidates = [
        -math.inf,
        *np.unique(np.asarray(scores, dtype=float)).tolist(),
        math.inf,
    ]
    return min(max(_rates(scores, labels, t)) for t in candidates)


def direct_actual_dcf(scores, labels, threshold, p_target, c_miss, c_fa):
    """Plain-loop actual DCF of 'target iff score >= threshold'."""
    n_tar = n_non = misses = fas = 0
    for s, y in zip(scores, labels):
        if y:
            n_tar += 1
            misses += s < threshold
        else:
            n_non += 1
            fas += s >= threshold
    c_det = c_miss * p_target * misses / n_tar + c_fa * (1 - p_target) * fas / n_non
    return c_det / min(c_miss * p_target, c_fa * (1 - p_target))


def previous_metrics(scores, labels, p_targets):
    """EER and Kaldi minDCFs as stklia computed them before the single sort: one sort per metric."""
    s = np.asarray(scores, dtype=np.float64)
    is_target = np.asarray(labels) == 1
    tar, non = np.sort(s[is_target]), np.sort(s[~is_target])
    nt, nn = tar.shape[0], non.shape[0]
    pos = np.arange(nt - 1, dtype=np.int64)
    nontarget_pos = np.maximum(nn - 1 - ((nn * pos).astype(np.float64) / nt).astype(np.int64), 0)
    stop = non[nontarget_pos] < tar[:-1]
    p = int(np.argmax(stop)) if stop.any() else nt - 1
    results = [(p / nt, float(tar[p]))]
    for p_target in p_targets:
        order = np.argsort(s, kind="stable")
        cum_tar = np.cumsum(is_target[order], dtype=np.int64)
        cum_non = np.arange(1, s.shape[0] + 1, dtype=np.int64) - cum_tar
        c_det = 1.0 * (cum_tar / float(nt)) * p_target + 1.0 * (1 - cum_non / float(nn)) * (1 - p_target)
        i = int(np.argmin(c_det))
        results.append((float(c_det[i] / min(p_target, 1 - p_target)), float(s[order][i])))
    return results


def direct_cllr(llrs, labels):
    """Cllr one trial at a time: mean bits of targets and of non-targets, averaged."""
    tar = [math.log2(1 + math.exp(-x)) for x, y in zip(llrs, labels) if y]
    non = [math.log2(1 + math.exp(x)) for x, y in zip(llrs, labels) if not y]
    return (sum(tar) / len(tar) + sum(non) / len(non)) / 2


def pav_min_cllr(scores, labels):
    """Isotonic fit of the target indicator (scikit-learn; tied scores share one value), its posteriors
    turned into LLRs by removing the prior log odds, then Cllr trial by trial (infinite LLRs cost 0)."""
    posterior = IsotonicRegression().fit_transform(np.asarray(scores, dtype=float), np.asarray(labels, dtype=float))
    n_tar = int(np.sum(labels))
    prior_log_odds = math.log(n_tar / (len(labels) - n_tar))
    bits = {0: [], 1: []}
    for p, y in zip(posterior.tolist(), labels):
        # log2(1 + exp(-llr)) for a target, log2(1 + exp(llr)) for a non-target, llr = logit(p) - prior_log_odds
        right, wrong = (p, 1 - p) if y else (1 - p, p)
        odds = math.exp(prior_log_odds if y else -prior_log_odds)
        bits[int(y)].append(0.0 if wrong == 0 else math.log2(1 + wrong / right * odds))
    return (sum(bits[1]) / len(bits[1]) + sum(bits[0]) / len(bits[0])) / 2


# --------------------------------------------------------------------------
# Random trial lists
# --------------------------------------------------------------------------

COSTS = [
    (0.01, 1.0, 1.0),
    (0.001, 1.0, 1.0),
    (0.05, 1.0, 1.0),
    (0.5, 1.0, 1.0),
    (0.9, 1.0, 1.0),
    (0.01, 10.0, 1.0),
    (0.05, 1.0, 10.0),
    (0.3, 3.0, 0.5),
]


def random_trials(rng, n, ties):
    """Scores with a target/non-target shift; `ties` rounds to create many ties."""
    labels = rng.random(n) < rng.uniform(0.05, 0.6)
    labels[rng.integers(n)] = True
    labels[rng.integers(n)] = False
    while labels.all() or not labels.any():  # both drawn to the same index
        labels[rng.integers(n)] = not labels[0]
    scores = rng.normal(size=n) + rng.uniform(0.0, 3.0) * labels
    if ties == "round1":
        scores = np.round(scores, 1)
    elif ties == "int":
        scores = np.round(scores).astype(np.int64)  # a handful of distinct values
    return scores, labels.astype(np.int64)


def trial_sets(seed, count, ties):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        n = int(rng.integers(2, 150))
        yield random_trials(rng, n, ties)


TIE_MODES = ["none", "round1", "int"]


# --------------------------------------------------------------------------
# EER
# --------------------------------------------------------------------------


def test_eer_perfect_separation_is_zero():
    # T = [0.8, 0.9], N = [0.1, 0.2, 0.3]; p=0 looks at N[3-1-0] = 0.3 < T[0] = 0.8
    # -> stop at once: EER 0/2 = 0, threshold = lowest target score.
    eer, thr = compute_eer([0.1, 0.9, 0.2, 0.8, 0.3], [0, 1, 0, 1, 0])
    assert eer == 0.0
    assert thr == 0.8


def test_eer_hand_worked_overlap():
    # T = [1, 2, 3, 4], N = [0, 1.5, 2.5, 5], nt = nn = 4.
    # p=0: N[3 - 0] = 5   < T[0] = 1 ? no
    # p=1: N[3 - 1] = 2.5 < T[1] = 2 ? no
    # p=2: N[3 - 2] = 1.5 < T[2] = 3 ? yes -> EER 2/4, threshold 3.
    eer, thr = compute_eer([1, 2, 3, 4, 0, 1.5, 2.5, 5], [1, 1, 1, 1, 0, 0, 0, 0])
    assert eer == 0.5
    assert thr == 3.0


def test_eer_tie_does_not_stop_the_walk():
    # T = [0.2, 0.7, 0.7, 0.9], N = [0.1, 0.3, 0.7, 0.8].
    # p=0: N[3] = 0.8 < 0.2 ? no
    # p=1: N[2] = 0.7 < 0.7 ? no  (strict <, the tie keeps walking)
    # p=2: N[1] = 0.3 < 0.7 ? yes -> EER 2/4 = 0.5 at threshold 0.7, although only
    # 1/4 of targets lie strictly below 0.7 (duplicated targets count one by one).
    scores = [0.2, 0.7, 0.7, 0.9, 0.1, 0.3, 0.7, 0.8]
    labels = [1, 1, 1, 1, 0, 0, 0, 0]
    assert compute_eer(scores, labels) == (0.5, 0.7)


def test_eer_all_scores_equal():
    # T = [.5, .5], N = [.5, .5]: p=0 checks N[1] = .5 < .5 -> no; loop ends at
    # p = nt - 1 = 1 -> EER 1/2.
    assert compute_eer([0.5] * 4, [1, 0, 1, 0]) == (0.5, 0.5)


def test_eer_reversed_scores_never_stop():
    # T = [1, 2] all below N = [3, 4]: never stops -> p = nt - 1 = 1, EER 0.5
    # (Kaldi's cap; the true crossing is 1.0).
    assert compute_eer([1, 2, 3, 4], [1, 1, 0, 0]) == (0.5, 2.0)


def test_eer_single_target_is_zero():
    # nt = 1: the loop body never runs -> EER 0 at the only target score.
    assert compute_eer([0.0, 1.0, 2.0, 3.0], [1, 0, 0, 0]) == (0.0, 0.0)


@pytest.mark.parametrize("ties", TIE_MODES)
def test_eer_matches_kaldi_transcription(ties):
    for scores, labels in trial_sets(1, 300, ties):
        assert compute_eer(scores, labels) == kaldi_compute_eer(scores, labels)


@pytest.mark.parametrize("ties", TIE_MODES)
def test_eer_is_within_one_target_of_brute_force_crossing(ties):
    # Derived from Kaldi's loop (holds with ties): if it stopped at p, the
    # threshold T[p] has miss <= p/nt and fa <= p/nt, so brute <= eer; since it
    # did not stop at p-1, every threshold has max(miss, fa) > (p-1)/nt.
    for scores, labels in trial_sets(2, 200, ties):
        eer, _ = compute_eer(scores, labels)
        nt = int(np.sum(labels))
        brute = brute_force_eer(scores, labels)
        assert brute > eer - 1.0 / nt - 1e-12
        if eer < (nt - 1) / nt:  # the walk stopped
            assert brute <= eer + 1e-12


def test_eer_large_with_ties_matches_kaldi():
    rng = np.random.default_rng(3)
    scores, labels = random_trials(rng, 20000, "round1")
    assert compute_eer(scores, labels) == kaldi_compute_eer(scores, labels)


# --------------------------------------------------------------------------
# minDCF
# --------------------------------------------------------------------------


def test_min_dcf_hand_worked_separable():
    # p_target 0.5, unit costs -> normaliser min(0.5, 0.5) = 0.5.
    # stable-sorted: 0.1 n, 0.35 n, 0.4 t, 0.8 t  (n_tar = n_non = 2)
    # i=0: fnr 0, fpr 1 - 1/2 = .5 -> c = .25
    # i=1: fnr 0, fpr 0           -> c = 0   <- min, Kaldi threshold 0.35 (">")
    scores, labels = [0.1, 0.4, 0.35, 0.8], [0, 1, 0, 1]
    assert compute_min_dcf(scores, labels, p_target=0.5) == (0.0, 0.35)
    # Reachable-threshold mode reports the ">=" threshold: the next score, 0.4.
    assert compute_min_dcf(scores, labels, p_target=0.5, kaldi=False) == (0.0, 0.4)


def test_min_dcf_default_p_target_hand_worked():
    # p = 0.01 -> normaliser 0.01; scores: n 0.1, t 0.2, n 0.3, t 0.4 (2 + 2).
    # i=0 (reject 0.1):       fnr 0,   fpr .5 -> .99 * .5 = .495
    # i=1 (reject <= 0.2):    fnr .5,  fpr .5 -> .005 + .495 = .5
    # i=2 (reject <= 0.3):    fnr .5,  fpr 0  -> .005            <- min
    # i=3 (reject all):       fnr 1,   fpr 0  -> .01
    # normalised: .005 / .01 = .5 at threshold 0.3.
    dcf, thr = compute_min_dcf([0.1, 0.2, 0.3, 0.4], [0, 1, 0, 1])
    assert dcf == pytest.approx(0.5, abs=1e-12)
    assert thr == 0.3


def test_min_dcf_kaldi_tie_quirk_depends_on_order():
    # p = 0.5, normaliser 0.5. Scores 0.5 (t) and 0.5 (n) tie.
    # Order A: stable sort -> 0.1 n, 0.5 t, 0.5 n, 0.9 t
    #   i=0: fnr 0,  fpr .5 -> .25 <- first min;  i=1: .5;  i=2: .25;  i=3: .5
    #   -> minDCF .25/.5 = .5 at 0.1
    # Order B: 0.5 n before 0.5 t -> 0.1 n, 0.5 n, 0.5 t, 0.9 t
    #   i=1: fnr 0, fpr 0 -> 0: a split *inside* the tie that no threshold can
    #   realise, but Kaldi evaluates it -> minDCF 0 at 0.5.
    order_a = ([0.5, 0.5, 0.9, 0.1], [1, 0, 1, 0])
    order_b = ([0.5, 0.5, 0.9, 0.1], [0, 1, 1, 0])
    assert compute_min_dcf(*order_a, p_target=0.5) == (0.5, 0.1)
    assert compute_min_dcf(*order_b, p_target=0.5) == (0.0, 0.5)
    # Reachable thresholds only: accept-all .5, ">0.1" .25, ">0.5" .25,
    # reject-all .5 -> .5 at the lowest optimal ">=" threshold, 0.5; same for both.
    assert compute_min_dcf(*order_a, p_target=0.5, kaldi=False) == (0.5, 0.5)
    assert compute_min_dcf(*order_b, p_target=0.5, kaldi=False) == (0.5, 0.5)


def test_min_dcf_kaldi_skips_accept_all():
    # p = 0.9 -> normaliser min(.9, .1) = .1. Sorted: 0.1 t, 0.2 n, 0.3 t.
    # Kaldi: i=0: fnr .5, fpr 1 -> .45 + .1 = .55;  i=1: fnr .5, fpr 0 -> .45
    #        i=2: fnr 1 -> .9.   -> .45/.1 = 4.5 (> 1!) at 0.2
    # Accept-all (never evaluated by Kaldi) costs .1 -> 1.0.
    scores, labels = [0.1, 0.2, 0.3], [1, 0, 1]
    dcf, thr = compute_min_dcf(scores, labels, p_target=0.9)
    assert dcf == pytest.approx(4.5) and thr == 0.2
    dcf, thr = compute_min_dcf(scores, labels, p_target=0.9, kaldi=False)
    assert dcf == pytest.approx(1.0) and thr == 0.1


@pytest.mark.parametrize("ties", TIE_MODES)
@pytest.mark.parametrize(("p_target", "c_miss", "c_fa"), COSTS)
def test_min_dcf_bit_identical_to_kaldi_script(ties, p_target, c_miss, c_fa):
    for scores, labels in trial_sets(4, 60, ties):
        got = compute_min_dcf(scores, labels, p_target, c_miss, c_fa)
        assert got == kaldi_min_dcf(scores, labels, p_target, c_miss, c_fa)


@pytest.mark.parametrize("ties", TIE_MODES)
@pytest.mark.parametrize(("p_target", "c_miss", "c_fa"), COSTS)
def test_min_dcf_reachable_mode_matches_brute_force(ties, p_target, c_miss, c_fa):
    for scores, labels in trial_sets(5, 60, ties):
        dcf, thr = compute_min_dcf(scores, labels, p_target, c_miss, c_fa, kaldi=False)
        best, best_thresholds = brute_force_min_dcf(scores, labels, p_target, c_miss, c_fa)
        assert dcf == pytest.approx(best, rel=1e-12, abs=1e-12)
        # The reported threshold realises the minimum under ">=" ...
        assert compute_actual_dcf(scores, labels, thr, p_target, c_miss, c_fa) == pytest.approx(
            best, rel=1e-12, abs=1e-12
        )
        # ... and is the lowest such threshold (ignoring -inf, same as min score).
        finite = [t for t in best_thresholds if t != -math.inf]
        assert thr == (finite[0] if finite else min(scores))


@pytest.mark.parametrize("ties", TIE_MODES)
@pytest.mark.parametrize(("p_target", "c_miss", "c_fa"), COSTS)
def test_min_dcf_kaldi_mode_vs_brute_force(ties, p_target, c_miss, c_fa):
    # Without ties Kaldi's points are exactly the thresholds minus accept-all.
    # With ties Kaldi also evaluates unreachable mid-tie splits, so it can only
    # be lower (optimistic), never higher.
    for scores, labels in trial_sets(6, 60, ties):
        dcf, thr = compute_min_dcf(scores, labels, p_target, c_miss, c_fa)
        best, _ = brute_force_min_dcf(scores, labels, p_target, c_miss, c_fa, include_accept_all=False)
        if ties == "none" and len(np.unique(scores)) == len(scores):
            assert dcf == pytest.approx(best, rel=1e-12, abs=1e-12)
            # Kaldi's threshold is ">": the same cost as ">= next score".
            nxt = np.append(np.sort(scores), math.inf)
            nxt = nxt[np.searchsorted(nxt, thr, side="right")]
            assert compute_actual_dcf(scores, labels, nxt, p_target, c_miss, c_fa) == pytest.approx(
                best, rel=1e-12, abs=1e-12
            )
        else:
            assert dcf <= best + 1e-12


def test_min_dcf_large_with_ties_matches_kaldi_script():
    rng = np.random.default_rng(7)
    scores, labels = random_trials(rng, 20000, "round1")
    for p in (0.01, 0.001):
        assert compute_min_dcf(scores, labels, p) == kaldi_min_dcf(scores, labels, p, 1.0, 1.0)


def test_min_dcf_perfect_separation_is_zero():
    scores = [-2.0, -1.0, 0.5, 1.0, 3.0]
    labels = [0, 0, 1, 1, 1]
    assert compute_min_dcf(scores, labels, 0.01) == (0.0, -1.0)
    assert compute_min_dcf(scores, labels, 0.01, kaldi=False) == (0.0, 0.5)


# --------------------------------------------------------------------------
# Actual DCF
# --------------------------------------------------------------------------


def test_actual_dcf_hand_worked():
    # p = 0.01, threshold 0.3 (">="): targets 0.2 (miss), 0.4 (hit) -> fnr .5;
    # non-targets 0.1 (ok), 0.3 (false alarm) -> fpr .5.
    # c = .01 * .5 + .99 * .5 = .5 -> / .01 = 50.
    got = compute_actual_dcf([0.1, 0.2, 0.3, 0.4], [0, 1, 0, 1], threshold=0.3)
    assert got == pytest.approx(50.0)
    # +inf rejects everything: fnr 1, fpr 0 -> .01 / .01 = 1.
    assert compute_actual_dcf([0.1, 0.2, 0.3, 0.4], [0, 1, 0, 1], math.inf) == pytest.approx(1.0)


@pytest.mark.parametrize("ties", TIE_MODES)
@pytest.mark.parametrize(("p_target", "c_miss", "c_fa"), COSTS)
def test_actual_dcf_matches_direct_loop(ties, p_target, c_miss, c_fa):
    rng = np.random.default_rng(8)
    for scores, labels in trial_sets(9, 30, ties):
        for threshold in [*rng.choice(scores, 3), -math.inf, math.inf, rng.normal()]:
            got = compute_actual_dcf(scores, labels, threshold, p_target, c_miss, c_fa)
            want = direct_actual_dcf(scores, labels, threshold, p_target, c_miss, c_fa)
            assert got == pytest.approx(want, rel=1e-12, abs=1e-12)
        # No threshold beats the reachable minimum.
        floor, _ = compute_min_dcf(scores, labels, p_target, c_miss, c_fa, kaldi=False)
        for threshold in np.unique(scores):
            got = compute_actual_dcf(scores, labels, threshold, p_target, c_miss, c_fa)
            assert got >= floor - 1e-12


# --------------------------------------------------------------------------
# One sort for every metric
# --------------------------------------------------------------------------


def float32_trials(seed, n, ties):
    """Model-like float32 scores (duplicates appear by themselves at this size), or rounded ones."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.05).astype(np.int8)
    labels[:2] = (1, 0)
    scores = (rng.normal(size=n) + 2.0 * labels).astype(np.float32)
    if ties == "round2":
        scores = np.round(scores, 2)
    return scores, labels


@pytest.mark.parametrize("ties", ["float32", "round2"])
def test_sorted_trials_bit_identical_to_previous_code(ties):
    scores, labels = float32_trials(11, 300_000, ties)
    assert np.unique(scores).size < scores.size  # ties, in tie groups of every kind (pure and mixed)
    trials = SortedTrials(scores, labels)
    got = [trials.eer(), *(trials.min_dcf(p) for p in (0.01, 0.001, 0.05))]
    assert got == previous_metrics(scores, labels, (0.01, 0.001, 0.05))
    assert trials.eer() == compute_eer(scores, labels)


@pytest.mark.parametrize("ties", TIE_MODES)
@pytest.mark.parametrize(("p_target", "c_miss", "c_fa"), COSTS)
def test_sorted_trials_bit_identical_to_kaldi(ties, p_target, c_miss, c_fa):
    for scores, labels in trial_sets(12, 40, ties):
        trials = SortedTrials(scores, labels)
        assert trials.eer() == kaldi_compute_eer(scores, labels)
        assert trials.min_dcf(p_target, c_miss, c_fa) == kaldi_min_dcf(scores, labels, p_target, c_miss, c_fa)
        assert trials.min_dcf(p_target, c_miss, c_fa, kaldi=False) == compute_min_dcf(
            scores, labels, p_target, c_miss, c_fa, kaldi=False)


def test_sorted_trials_stable_order_of_every_tie_group():
    # Tie groups of sizes 2..5 with labels in a known input order: sorting keeps that order.
    rng = np.random.default_rng(13)
    scores = rng.permutation(np.repeat(np.arange(10.0), rng.integers(1, 6, 10)))
    labels = rng.integers(0, 2, scores.size)
    labels[:2] = (0, 1)
    trials = SortedTrials(scores, labels)
    order = sorted(range(scores.size), key=lambda i: scores[i])  # Python's sort is stable
    assert trials.scores.tolist() == scores[order].tolist()
    assert trials.is_target.tolist() == (labels[order] == 1).tolist()


# --------------------------------------------------------------------------
# Cllr, minCllr and actual DCF
# --------------------------------------------------------------------------


def test_cllr_hand_worked():
    # llr 0 carries no information: 1 bit per trial. A target at +ln 3 costs log2(1 + 1/3) = log2(4/3),
    # a non-target at -ln 3 the same: Cllr = log2(4/3).
    assert compute_cllr([0.0, 0.0], [1, 0]) == pytest.approx(1.0, abs=1e-15)
    assert compute_cllr([math.log(3), -math.log(3)], [1, 0]) == pytest.approx(math.log2(4 / 3), rel=1e-14)
    # Confidently wrong: 1000 nats on the wrong side cost ~1000 / ln 2 bits, without overflow.
    assert compute_cllr([-1000.0, 1000.0], [1, 0]) == pytest.approx(1000 / math.log(2), rel=1e-12)


@pytest.mark.parametrize("ties", TIE_MODES)
def test_cllr_matches_direct_loop(ties):
    for scores, labels in trial_sets(14, 50, ties):
        assert compute_cllr(scores, labels) == pytest.approx(direct_cllr(scores, labels), rel=1e-12, abs=1e-15)
        assert SortedTrials(scores, labels).cllr() == pytest.approx(direct_cllr(scores, labels), rel=1e-12, abs=1e-15)


def test_min_cllr_hand_worked():
    # Sorted: n 0.1, t 0.2, n 0.3, t 0.4. PAV pools the violating pair (t 0.2, n 0.3) to 1/2:
    # posteriors 0, 1/2, 1/2, 1. Prior n_tar / n = 1/2, so llr = logit(posterior): -inf, 0, 0, +inf.
    # Targets: 0 bits (llr +inf) and 1 bit (llr 0); non-targets: 0 and 1 -> (1/2 + 1/2) / 2 = 1/2.
    assert compute_min_cllr([0.1, 0.2, 0.3, 0.4], [0, 1, 0, 1]) == pytest.approx(0.5, rel=1e-14)
    # Perfect separation: every llr infinite on the right side, minCllr 0; all scores tied: 1 bit.
    assert compute_min_cllr([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 0.0
    assert compute_min_cllr([0.5] * 5, [1, 0, 0, 1, 0]) == pytest.approx(1.0, rel=1e-14)


@pytest.mark.parametrize("ties", TIE_MODES)
def test_min_cllr_matches_isotonic_regression(ties):
    for scores, labels in trial_sets(15, 60, ties):
        assert compute_min_cllr(scores, labels) == pytest.approx(pav_min_cllr(scores, labels), rel=1e-9, abs=1e-12)
        # Any monotonic calibration, the identity included, does no better than PAV's.
        assert compute_min_cllr(scores, labels) <= compute_cllr(scores, labels) + 1e-12


def test_min_cllr_large_with_ties_matches_isotonic_regression():
    scores, labels = float32_trials(16, 50_000, "round2")
    assert compute_min_cllr(scores, labels) == pytest.approx(pav_min_cllr(scores, labels), rel=1e-9)


@pytest.mark.parametrize(("p_target", "c_miss", "c_fa"), COSTS)
def test_act_dcf_decides_at_the_bayes_threshold(p_target, c_miss, c_fa):
    # Decisions "target iff llr >= ln(c_fa (1 - p) / (c_miss p))", checked trial by trial.
    threshold = math.log(c_fa * (1 - p_target) / (c_miss * p_target))
    assert bayes_threshold(p_target, c_miss, c_fa) == pytest.approx(threshold, rel=1e-15)
    for scores, labels in trial_sets(17, 30, "round1"):
        llrs = 3 * np.asarray(scores)
        for t in (threshold, *llrs[:3]):  # also exactly at a score: ">=" accepts it
            want = direct_actual_dcf(llrs, labels, t, p_target, c_miss, c_fa)
            assert SortedTrials(llrs, labels).actual_dcf(t, p_target, c_miss, c_fa) == pytest.approx(want, rel=1e-12)
        want = direct_actual_dcf(llrs, labels, threshold, p_target, c_miss, c_fa)
        assert SortedTrials(llrs, labels).act_dcf(p_target, c_miss, c_fa) == pytest.approx(want, rel=1e-12)


def test_actual_dcf_of_sorted_trials_equals_compute_actual_dcf():
    rng = np.random.default_rng(18)
    for scores, labels in trial_sets(19, 30, "int"):
        trials = SortedTrials(scores, labels)
        for t in [*np.unique(scores), -math.inf, math.inf, rng.normal()]:
            assert trials.actual_dcf(t, 0.05) == compute_actual_dcf(scores, labels, t, 0.05)


# --------------------------------------------------------------------------
# Input handling and errors
# --------------------------------------------------------------------------


def test_accepts_bool_labels_lists_and_float32():
    scores = np.array([0.1, 0.9, 0.2, 0.8, 0.3], dtype=np.float32)
    bool_labels = np.array([False, True, False, True, False])
    int_labels = [0, 1, 0, 1, 0]
    assert compute_eer(scores, bool_labels) == compute_eer(scores.tolist(), int_labels)
    assert compute_min_dcf(scores, bool_labels) == compute_min_dcf(scores.tolist(), int_labels)
    eer, thr = compute_eer(scores, bool_labels)
    assert isinstance(eer, float) and isinstance(thr, float)


def test_accepts_torch_tensors():
    torch = pytest.importorskip("torch")
    scores = torch.tensor([0.1, 0.9, 0.2, 0.8, 0.3])
    labels = torch.tensor([0, 1, 0, 1, 0])
    assert compute_eer(scores, labels) == compute_eer(scores.numpy(), labels.numpy())


ALL_METRICS = [
    lambda s, y: compute_eer(s, y),
    lambda s, y: compute_min_dcf(s, y),
    lambda s, y: compute_min_dcf(s, y, kaldi=False),
    lambda s, y: compute_actual_dcf(s, y, 0.0),
    lambda s, y: compute_cllr(s, y),
    lambda s, y: compute_min_cllr(s, y),
    lambda s, y: SortedTrials(s, y),
]


@pytest.mark.parametrize("metric", ALL_METRICS)
@pytest.mark.parametrize(
    ("scores", "labels", "message"),
    [
        ([0.1, 0.2], [0, 0], "no target"),
        ([0.1, 0.2], [1, 1], "no non-target"),
        ([], [], "no target"),
        ([0.1, 0.2, 0.3], [0, 1], "length"),
        ([0.1, 0.2, 0.3], [0, 1, 2], "0 or 1"),
        ([0.1, 0.2, 0.3], [0, 1, -1], "0 or 1"),
        ([0.1, 0.2, 0.3], [0, 1, 0.5], "0 or 1"),
        ([0.1, 0.2], ["target", "nontarget"], "labels"),
        ([0.1, float("nan")], [0, 1], "NaN"),
        ([[0.1, 0.2]], [[0, 1]], "1-D"),
        (["a", "b"], [0, 1], "real"),
    ],
)
def test_errors(metric, scores, labels, message):
    with pytest.raises(ValueError, match=message):
        metric(scores, labels)


@pytest.mark.parametrize(
    "kwargs",
    [{"p_target": 0.0}, {"p_target": 1.0}, {"c_miss": 0.0}, {"c_fa": -1.0}],
)
def test_cost_parameter_errors(kwargs):
    with pytest.raises(ValueError):
        compute_min_dcf([0.1, 0.2], [0, 1], **kwargs)
    with pytest.raises(ValueError):
        compute_actual_dcf([0.1, 0.2], [0, 1], 0.15, **kwargs)


def test_nan_threshold_rejected():
    with pytest.raises(ValueError, match="NaN"):
        compute_actual_dcf([0.1, 0.2], [0, 1], float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        SortedTrials([0.1, 0.2], [0, 1]).actual_dcf(float("nan"))
