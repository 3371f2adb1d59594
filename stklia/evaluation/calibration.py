"""Linear calibration: scores to log-likelihood ratios, by prior-weighted logistic regression.

Brümmer's formulation (FoCal / BOSARIS ``train_linear_calibration``): llr = scale * score + offset,
with (scale, offset) minimising the prior-weighted cross-entropy

    prior / N_tar * sum_tar log(1 + exp(-(llr + logit prior)))
    + (1 - prior) / N_non * sum_non log(1 + exp(llr + logit prior)),

which at prior 0.5 is Cllr (up to a factor ln 2). Targets and non-targets weigh by the prior,
whatever their counts, so the fit on one trial list transfers to lists of other proportions;
``prior`` chooses the operating point that matters most (0.5: all of them, as Cllr; 0.01: the
region of minDCF@0.01). A monotonic map cannot change EER or minDCF: calibration makes the
scores usable as LLRs, so that Bayes decisions (actual DCF) and Cllr approach their minima.

`calibrate` is `python -m stklia.calibrate`: a map fitted on one scored trial list, applied to score files.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from omegaconf import DictConfig
from scipy.special import expit

from stklia.core.atomic import write_json
from stklia.core.errors import InputError
from stklia.data.trials import read_trials
from stklia.evaluation.metrics import check_trials
from stklia.evaluation.results import format_results, list_summary, scores_file_name
from stklia.evaluation.scores import read_scores, write_scores
from stklia.evaluation.scoring import trial_metrics


@dataclass(frozen=True)
class LinearCalibration:
    """llr = scale * score + offset."""

    scale: float
    offset: float
    prior: float = 0.5  # the prior it was trained for (informative)

    def __call__(self, scores: ArrayLike) -> np.ndarray:
        return self.scale * np.asarray(scores, dtype=np.float64) + self.offset

    @classmethod
    def fit(cls, scores: ArrayLike, labels: ArrayLike, prior: float = 0.5) -> LinearCalibration:
        """The prior-weighted logistic regression of labels on scores (one trial list)."""
        from scipy.optimize import minimize  # imported here: it is slow to import, and only fitting needs it

        s, is_target = check_trials(scores, labels)
        if not 0.0 < prior < 1.0:
            raise ValueError(f"prior must be in (0, 1), got {prior}")
        if s[is_target].min() >= s[~is_target].max():
            raise ValueError("the scores separate targets from non-targets perfectly: a linear calibration "
                             "has no finite optimum (more trials are needed)")
        # weights and sign per trial: x = llr + logit(prior); a target costs log(1 + e^-x), a non-target log(1 + e^x)
        weight = np.where(is_target, prior / np.count_nonzero(is_target), (1 - prior) / np.count_nonzero(~is_target))
        sign = np.where(is_target, -1.0, 1.0)
        logit_prior = math.log(prior / (1 - prior))
        # Scores are standardised so the problem is well conditioned whatever their range.
        centre, spread = float(s.mean()), float(s.std()) or 1.0
        z = (s - centre) / spread

        def objective(params: np.ndarray) -> tuple[float, np.ndarray]:
            margin = sign * (params[0] * z + params[1] + logit_prior)
            cost = float(weight @ np.logaddexp(0.0, margin))
            slope = weight * sign * expit(margin)
            return cost, np.array([slope @ z, slope.sum()])

        def hessian(params: np.ndarray) -> np.ndarray:
            p = expit(params[0] * z + params[1] + logit_prior)
            curvature = weight * p * (1 - p)
            return np.array([[curvature @ z**2, curvature @ z], [curvature @ z, curvature.sum()]])

        result = minimize(objective, np.array([1.0, 0.0]), jac=True, hess=hessian, method="trust-exact",
                          options={"gtol": 1e-12})
        a, b = result.x
        return cls(float(a / spread), float(b - a * centre / spread), prior)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LinearCalibration:
        return cls(float(values["scale"]), float(values["offset"]), float(values.get("prior", 0.5)))


def calibrate_score_files(fit_scores: Path, fit_trials: Path, apply: Sequence[Path], apply_trials: Sequence[Path],
                          prior: float, p_targets: Sequence[float], name: str = "calibrated") -> dict[str, Any]:
    """Fit a linear calibration on one scored trial list and apply it to it and to other lists.

    Writes `<list>.<name>.scores` beside each score file `<list>.scores` and `<fit list>.<name>.json`
    (the map, and each list's metrics before and after) beside the fit scores; prints the metrics.
    Every input is read and checked before anything is written.
    """
    if len(apply) != len(apply_trials):
        raise InputError("apply_trials", f"{len(apply_trials)} trial lists for the {len(apply)} score files of apply")
    if not 0.0 < prior < 1.0:
        raise InputError("prior", f"must be in (0, 1), not {prior}")
    if not re.fullmatch(r"[\w-]+", name):
        raise InputError("name", f"'{name}' is not a file name part (letters, digits, _ and -)")
    lists = []
    for scores_path, trials_path in [(fit_scores, fit_trials), *zip(apply, apply_trials)]:
        trials = read_trials(trials_path, None)
        lists.append((Path(scores_path), trials, read_scores(scores_path, trials)))
    _, trials, scores = lists[0]
    try:
        calibration = LinearCalibration.fit(scores, trials.labels, prior)
    except ValueError as err:  # perfectly separated scores
        raise InputError(fit_scores, str(err)) from None
    summaries = []
    for scores_path, trials, scores in lists:
        out = scores_path.with_name(scores_file_name(scores_path.name.removesuffix(".scores"), name))
        calibrated = calibration(scores)
        write_scores(out, trials, calibrated)
        metrics = {**trial_metrics(scores, trials.labels, p_targets),
                   **trial_metrics(calibrated, trials.labels, p_targets, "calibrated_")}
        summaries.append(list_summary(trials, metrics, {"raw_scores": str(scores_path), "calibrated_scores": str(out)}))
    print(f"Calibration llr = {calibration.scale:.6g} * score + {calibration.offset:.6g} (prior {prior:g}), "
          f"fitted on {fit_scores}:\n{format_results(summaries)}", flush=True)
    record = {**calibration.to_dict(), "fit": {"scores": str(fit_scores), "trials": str(fit_trials)},
              "results": summaries}
    write_json(Path(fit_scores).with_name(f"{Path(fit_scores).name.removesuffix('.scores')}.{name}.json"), record)
    return record


def calibrate(cfg: DictConfig) -> float:
    """The command (stklia/conf/commands/calibrate.yaml); returns the fit list's calibrated Cllr."""
    record = calibrate_score_files(Path(cfg.fit.scores), Path(cfg.fit.trials), [Path(p) for p in cfg.apply],
                                   [Path(p) for p in cfg.apply_trials], cfg.prior, list(cfg.p_targets), cfg.name)
    return record["results"][0]["calibrated_cllr"]
