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
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import expit

from stklia.metrics import _check_inputs


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
        from scipy.optimize import minimize  # here: scipy.optimize takes 0.5 s to import, which every command paid

        s, is_target = _check_inputs(scores, labels)
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
