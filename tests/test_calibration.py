"""Linear calibration against scikit-learn's logistic regression and a known Gaussian score model."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from stklia.evaluation.calibration import LinearCalibration
from stklia.evaluation.metrics import SortedTrials, compute_cllr


def gaussian_scores(rng: np.random.Generator, n: int, target_fraction: float, shift: float = 2.0, scale: float = 1.5,
                    offset: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Scores offset + scale * N(+-shift/2, 1): their true LLR is linear, llr = shift (score - offset) / scale."""
    labels = (rng.random(n) < target_fraction).astype(int)
    labels[:2] = (1, 0)
    scores = offset + scale * (rng.normal(size=n) + shift * (labels - 0.5))
    return scores, labels


def weighted_cross_entropy(scale: float, offset: float, scores, labels, prior: float) -> float:
    """Brümmer's objective as a plain loop over trials."""
    n_tar, n_non = sum(labels), len(labels) - sum(labels)
    logit = math.log(prior / (1 - prior))
    total = 0.0
    for s, y in zip(scores, labels):
        x = scale * s + offset + logit
        total += prior / n_tar * math.log1p(math.exp(-x)) if y else (1 - prior) / n_non * math.log1p(math.exp(x))
    return total


@pytest.mark.parametrize("prior", [0.5, 0.1, 0.01])
def test_fit_matches_weighted_logistic_regression(prior: float) -> None:
    rng = np.random.default_rng(0)
    scores, labels = gaussian_scores(rng, 3000, 0.2)
    scores = 40 * scores - 7  # any range: PLDA-like LLRs or cosines
    cal = LinearCalibration.fit(scores, labels, prior)
    # scikit-learn, unpenalised, with the prior-weighted sample weights; its intercept includes logit(prior).
    weights = np.where(labels == 1, prior / labels.sum(), (1 - prior) / (labels == 0).sum())
    reference = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(
        scores[:, None] / 40, labels, sample_weight=weights * len(labels))
    assert cal.weights[0] == pytest.approx(reference.coef_[0, 0] / 40, rel=1e-5)
    assert cal.offset == pytest.approx(reference.intercept_[0] - math.log(prior / (1 - prior)), rel=1e-5, abs=1e-6)
    # and it is the minimum of the objective written out trial by trial
    best = weighted_cross_entropy(cal.weights[0], cal.offset, scores, labels, prior)
    for da, db in ((1e-4, 0), (-1e-4, 0), (0, 1e-3), (0, -1e-3)):
        assert best < weighted_cross_entropy(cal.weights[0] * (1 + da), cal.offset + db, scores, labels, prior)


def test_fit_recovers_the_true_llr_of_gaussian_scores() -> None:
    rng = np.random.default_rng(1)
    scores, labels = gaussian_scores(rng, 400_000, 0.05)
    cal = LinearCalibration.fit(scores, labels, prior=0.5)
    # true llr = 2 (s - 0.3) / 1.5, whatever the proportion of targets
    assert cal.weights[0] == pytest.approx(2 / 1.5, rel=0.02)
    assert cal.offset == pytest.approx(-2 * 0.3 / 1.5, abs=0.03)


def test_calibration_transfers_to_another_list_and_approaches_min_cllr() -> None:
    rng = np.random.default_rng(2)
    train, held_out = gaussian_scores(rng, 20_000, 0.3), gaussian_scores(rng, 20_000, 0.02)
    raw = 5 * held_out[0] + 4  # badly calibrated scores of the same system
    cal = LinearCalibration.fit(5 * train[0] + 4, train[1])
    before, after = compute_cllr(raw, held_out[1]), compute_cllr(cal(raw), held_out[1])
    trials = SortedTrials(cal(raw), held_out[1])
    assert after < 0.5 * before
    assert trials.min_cllr() <= after < trials.min_cllr() + 0.03
    # actual DCF at 0.01 moves to near its minimum too (the raw scores accept far too much: cost > 10)
    assert SortedTrials(raw, held_out[1]).act_dcf(0.01) > 10
    assert trials.act_dcf(0.01) < trials.min_dcf(0.01)[0] + 0.1


def test_round_trip_and_errors() -> None:
    cal = LinearCalibration(("score",), (2.5,), -1.0, 0.01)
    assert LinearCalibration.from_dict(cal.to_dict()) == cal
    np.testing.assert_array_equal(cal([0.0, 2.0]), [-1.0, 4.0])
    with pytest.raises(ValueError, match="separate targets from non-targets perfectly"):
        LinearCalibration.fit([0.1, 0.2, 0.2, 0.9], [0, 0, 1, 1])
    with pytest.raises(ValueError, match="prior"):
        LinearCalibration.fit([0.1, 0.5, 0.2, 0.9], [0, 0, 1, 1], prior=1.0)
    with pytest.raises(ValueError, match="no target"):
        LinearCalibration.fit([0.1, 0.2], [0, 0])
