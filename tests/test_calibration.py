"""Calibration, fusion and QMF (one prior-weighted logistic regression) against scikit-learn's logistic
regression, scipy's optimiser on the objective written out here, and known Gaussian score models."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import minimize
from sklearn.linear_model import LogisticRegression

from stklia.core.errors import InputError
from stklia.data.trials import Trials
from stklia.evaluation.calibration import LinearCalibration
from stklia.evaluation.metrics import SortedTrials, compute_cllr
from stklia.evaluation.quality import Quality


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


# --------------------------------------------------------------------------
# Fusion and QMF: several feature columns
# --------------------------------------------------------------------------


def objective(params: np.ndarray, features: np.ndarray, labels: np.ndarray, prior: float) -> float:
    """Brümmer's prior-weighted cross-entropy of llr = features @ params[:-1] + params[-1], in plain numpy."""
    llr = features @ params[:-1] + params[-1] + math.log(prior / (1 - prior))
    tar, non = labels == 1, labels == 0
    return prior * np.mean(np.logaddexp(0, -llr[tar])) + (1 - prior) * np.mean(np.logaddexp(0, llr[non]))


def scipy_fit(features: np.ndarray, labels: np.ndarray, prior: float) -> np.ndarray:
    """scipy's BFGS (numerical gradients) on that objective, from zero, on the raw features."""
    start = np.zeros(features.shape[1] + 1)
    return minimize(objective, start, args=(features, labels, prior), method="BFGS", options={"gtol": 1e-10}).x


def two_systems(rng: np.random.Generator, n: int, target_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Scores of two systems with errors of their own (partly shared), in different ranges."""
    labels = (rng.random(n) < target_fraction).astype(int)
    labels[:2] = (1, 0)
    shared = rng.normal(size=n)
    a = 1.5 * (labels - 0.5) + 0.6 * shared + 0.8 * rng.normal(size=n)
    b = 30 * (1.2 * (labels - 0.5) + 0.5 * shared + rng.normal(size=n)) - 12
    return np.column_stack([a, b]), labels


@pytest.mark.parametrize("prior", [0.5, 0.05])
def test_fusion_matches_scipy_on_the_same_objective(prior: float) -> None:
    features, labels = two_systems(np.random.default_rng(3), 4000)
    fused = LinearCalibration.fit(features, labels, prior)
    assert fused.columns == ("score1", "score2")
    reference = scipy_fit(features, labels, prior)
    np.testing.assert_allclose(fused.weights, reference[:2], rtol=1e-4)
    assert fused.offset == pytest.approx(reference[2], rel=1e-4, abs=1e-5)
    ours = objective(np.array([*fused.weights, fused.offset]), features, labels, prior)
    assert ours <= objective(reference, features, labels, prior) + 1e-12
    # both systems help: the fusion beats each calibrated system alone, in Cllr on this list
    if prior == 0.5:
        alone = [compute_cllr(LinearCalibration.fit(f, labels)(f), labels) for f in features.T]
        assert compute_cllr(fused(features), labels) < min(alone) - 0.01


def test_a_system_that_adds_nothing_gets_a_weight_near_zero() -> None:
    """A second system that is the first one plus noise (so, given the first, independent of the labels), and a
    third of pure noise: their optimal weights tend to 0 (here within 2% of the first's weight per unit of
    standard deviation), and the fusion scores the first system's calibration."""
    rng = np.random.default_rng(4)
    features, labels = two_systems(rng, 200_000)
    good = features[:, 0]
    echo, noise = good + rng.normal(size=len(good)), rng.normal(size=len(good))
    fused = LinearCalibration.fit(np.column_stack([good, echo, noise]), labels)
    scale = np.array([np.std(good), np.std(echo), np.std(noise)]) * np.abs(fused.weights)
    assert scale[1] < 0.02 * scale[0] and scale[2] < 0.02 * scale[0]
    alone = LinearCalibration.fit(good, labels)
    assert fused.weights[0] == pytest.approx(alone.weights[0], rel=0.02)
    assert fused.offset == pytest.approx(alone.offset, abs=0.02)


def duration_scores(rng: np.random.Generator, n: int, short_fraction: float
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores, labels and frames of the two sides of trials; a fraction of the trials is short (20 to 100 frames a
    side), the others long (100 to 1000). Every score rises as the shorter side shortens, so the LLR of a score
    depends on that duration: llr = 3 (score - 0.8 (6 - log frames of the shorter side))."""
    labels = (rng.random(n) < 0.2).astype(int)
    labels[:2] = (1, 0)
    short = rng.random(n) < short_fraction
    frames = np.where(short[:, None], rng.integers(20, 100, (n, 2)), rng.integers(100, 1000, (n, 2)))
    scores = 1.5 * (2 * labels - 1) + 0.8 * (6 - np.log(frames.min(axis=1))) + rng.normal(size=n)
    return scores, labels, frames


def trials_of(labels: np.ndarray, frames: np.ndarray, name: str) -> tuple[Trials, Quality]:
    """A trial list of two utterances a trial, and their quality table."""
    ids = [f"{name}{i}-{side}" for i in range(len(frames)) for side in "ab"]
    quality = Quality(ids, {"frames": frames.ravel(), "norm": np.ones(len(ids))})
    return Trials(Path(f"{name}/trials"), labels, ids[0::2], ids[1::2]), quality


def test_qmf_matches_scipy_and_stays_calibrated_when_durations_shift() -> None:
    """Fitted on a list of mostly long recordings, applied to one of short recordings: the linear calibration
    is overconfident there (short recordings score high); the duration QMF knows the shorter side's duration and
    stays calibrated, in Cllr and actual DCF."""
    fit_scores, fit_labels, fit_frames = duration_scores(np.random.default_rng(5), 20_000, short_fraction=0.1)
    trials, quality = trials_of(fit_labels, fit_frames, "fit")
    measures, names = quality.features(trials, ["duration"])
    assert names == ["duration_min", "duration_max"]
    np.testing.assert_allclose(measures, np.log(np.sort(fit_frames, axis=1)))
    features = np.column_stack([fit_scores, measures])
    qmf = LinearCalibration.fit(features, fit_labels, columns=["score", *names])
    reference = scipy_fit(features, fit_labels, 0.5)
    np.testing.assert_allclose([*qmf.weights, qmf.offset], reference, rtol=1e-4, atol=1e-6)
    # close to the true map: 3 score + 2.4 log(shorter side's frames) - 14.4
    np.testing.assert_allclose([*qmf.weights, qmf.offset], [3, 2.4, 0, -14.4], rtol=0.1, atol=0.15)

    linear = LinearCalibration.fit(fit_scores, fit_labels)
    scores, labels, frames = duration_scores(np.random.default_rng(7), 20_000, short_fraction=1.0)
    shifted, shifted_quality = trials_of(labels, frames, "short")
    llrs = {"linear": linear(scores), "qmf": qmf(np.column_stack([scores, shifted_quality.features(
        shifted, ["duration"])[0]]))}
    cllr = {name: compute_cllr(llr, labels) for name, llr in llrs.items()}
    act_dcf = {name: SortedTrials(llr, labels).act_dcf(0.01) for name, llr in llrs.items()}
    assert cllr["qmf"] < 0.5 * cllr["linear"] and act_dcf["qmf"] < 0.5 * act_dcf["linear"]
    assert cllr["qmf"] < SortedTrials(llrs["qmf"], labels).min_cllr() + 0.02  # calibrated on the short list


def test_fit_refuses_what_has_no_unique_optimum() -> None:
    features, labels = two_systems(np.random.default_rng(8), 1000)
    with pytest.raises(ValueError, match="linearly dependent"):
        LinearCalibration.fit(np.column_stack([features, 2 * features[:, 0] - 3]), labels)
    with pytest.raises(ValueError, match="'duration_min' has the same value in every trial"):
        LinearCalibration.fit(np.column_stack([features[:, 0], np.full(1000, 4.0)]), labels,
                              columns=["score", "duration_min"])
    separable = np.column_stack([labels + 0.1 * features[:, 0] * 0, features[:, 1]])
    separable[:, 0] += np.random.default_rng(9).normal(size=1000) * 0.01
    with pytest.raises(ValueError, match="separate targets from non-targets perfectly"):
        LinearCalibration.fit(separable, labels)


def test_quality_file_round_trip_and_errors(tmp_path: Path) -> None:
    quality = Quality(["a", "b", "spk"], {"frames": np.array([120, 3000, 9000]), "norm": np.array([1.5, 22.25, 3.0])})
    quality.write(tmp_path / "quality")
    assert (tmp_path / "quality").read_text().splitlines()[:2] == ["id frames norm", "a 120 1.5"]
    read = Quality.read(tmp_path / "quality")
    assert read.ids == quality.ids and set(read.measures) == {"frames", "norm"}
    np.testing.assert_array_equal(read.measures["norm"], quality.measures["norm"])
    trials = Trials(tmp_path / "trials", np.array([1, 0]), ["spk", "a"], ["b", "c"])
    with pytest.raises(InputError, match=r"quality: no line for 'c', a side of trial 2 of .*trials$"):
        read.features(trials, ["norm"])
    trials.test[1] = "spk"
    logs = np.log([120, 3000, 9000])
    np.testing.assert_allclose(read.features(trials, ["norm", "duration"])[0],
                               [[3.0, 22.25, logs[1], logs[2]], [1.5, 3.0, logs[0], logs[2]]])
    with pytest.raises(InputError, match=r"quality: no 'cohort_mean' column, which the quality measure function "
                                         r"'cohort_mean' reads \(stklia.test writes it when AS-norm is on\)"):
        read.features(trials, ["cohort_mean"])
    with pytest.raises(InputError, match="'snr' is not a quality measure function"):
        read.features(trials, ["snr"])
    for text, message in [("id frames snr\n", "quality:1: 'id frames snr' is not a quality header"),
                          ("id frames\na 10\na 12\n", "quality:3: duplicate id 'a' \\(first on line 2\\)"),
                          ("id frames norm\na 0 1.0\n", "quality:2: '0 1.0' are not finite numbers"),
                          ("id norm\na nan\n", "quality:2: 'nan' are not finite numbers"),
                          ("id frames norm\na 10\n", "quality:2: 1 values for the 2 measures")]:
        (tmp_path / "quality").write_text(text)
        with pytest.raises(InputError, match=message):
            Quality.read(tmp_path / "quality")
