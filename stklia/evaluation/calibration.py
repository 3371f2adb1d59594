"""Calibration, quality measure functions (QMF) and fusion: one prior-weighted logistic regression of the trial
labels on a feature matrix, which gives log-likelihood ratios.

Brümmer's formulation (FoCal / BOSARIS ``train_linear_calibration``, ``train_linear_fusion``, ``train_qmf``):
llr = w . x + offset, the features x of a trial being

* its score (linear calibration),
* the scores of several systems for the same trial (fusion; a system that adds nothing gets a weight near 0),
* and/or quality measures of its two sides (QMF, stklia.evaluation.quality: durations, embedding norms, mean top
  cohort scores), so that a duration or condition unlike the fitting list's moves the LLR as it should,

with (w, offset) minimising the prior-weighted cross-entropy

    prior / N_tar * sum_tar log(1 + exp(-(llr + logit prior)))
    + (1 - prior) / N_non * sum_non log(1 + exp(llr + logit prior)),

which at prior 0.5 is Cllr (up to a factor ln 2). Targets and non-targets weigh by the prior,
whatever their counts, so the fit on one trial list transfers to lists of other proportions;
``prior`` chooses the operating point that matters most (0.5: all of them, as Cllr; 0.01: the
region of minDCF@0.01). A monotonic map (one score) cannot change EER or minDCF: calibration makes the
scores usable as LLRs, so that Bayes decisions (actual DCF) and Cllr approach their minima; fusion and QMF
also change the order of the trials.

`calibrate` is `python -m stklia.calibrate`: a map fitted on one trial list's score files, applied to others;
`calibrate_results` does the same for `stklia.test`'s systems in memory.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from omegaconf import DictConfig, OmegaConf
from scipy.special import expit

from stklia.core.atomic import write_json
from stklia.core.errors import InputError
from stklia.data.trials import read_trials
from stklia.evaluation.metrics import check_trials
from stklia.evaluation.quality import QUALITY_FILE, Quality, check_functions
from stklia.evaluation.results import format_results, list_summary, scores_file_name
from stklia.evaluation.scores import read_scores, write_scores
from stklia.evaluation.scoring import TrialResult, trial_metrics

# Smallest eigenvalue of the standardised features' correlation matrix below which a column is taken for a
# combination of the others (then no unique fit exists).
COLLINEAR = 1e-10


@dataclass(frozen=True)
class LinearCalibration:
    """llr = weights . features + offset, a weight per named feature column."""

    columns: tuple[str, ...]
    weights: tuple[float, ...]
    offset: float
    prior: float = 0.5  # the prior it was trained for (informative)

    def __call__(self, features: ArrayLike) -> np.ndarray:
        """The LLRs of (trials, columns) features, or of one column's values."""
        x = np.asarray(features, dtype=np.float64)
        x = x[:, None] if x.ndim == 1 else x
        if x.shape[1] != len(self.weights):
            raise ValueError(f"{x.shape[1]} feature columns for a map of {len(self.weights)} ({self.columns})")
        return x @ np.asarray(self.weights) + self.offset

    @classmethod
    def fit(cls, features: ArrayLike, labels: ArrayLike, prior: float = 0.5,
            columns: Sequence[str] | None = None) -> LinearCalibration:
        """The prior-weighted logistic regression of labels on features (trials, columns), or on one score."""
        from scipy.optimize import minimize  # imported here: it is slow to import, and only fitting needs it

        x = np.asarray(features, dtype=np.float64)
        x = x[:, None] if x.ndim == 1 else x
        _, is_target = check_trials(x[:, 0], labels)
        columns = tuple(columns) if columns is not None else ("score",) if x.shape[1] == 1 else tuple(
            f"score{j + 1}" for j in range(x.shape[1]))
        if len(columns) != x.shape[1]:
            raise ValueError(f"{len(columns)} column names for {x.shape[1]} feature columns")
        if not 0.0 < prior < 1.0:
            raise ValueError(f"prior must be in (0, 1), got {prior}")
        if not np.isfinite(x).all():
            raise ValueError("features contain NaN or infinite values")
        # Features are standardised so the problem is well conditioned whatever their ranges.
        centre, spread = x.mean(axis=0), x.std(axis=0)
        for name, value in zip(columns, spread):
            if value == 0:
                raise ValueError(f"'{name}' has the same value in every trial: it cannot be weighed")
        z = (x - centre) / spread
        if x.shape[1] > 1 and np.linalg.eigvalsh(z.T @ z / len(z))[0] < COLLINEAR:
            raise ValueError(f"the features {', '.join(columns)} are linearly dependent (one is a combination of the "
                             "others): no unique fit")
        if x.shape[1] == 1 and x[is_target, 0].min() >= x[~is_target, 0].max():
            raise ValueError("the scores separate targets from non-targets perfectly: a linear calibration "
                             "has no finite optimum (more trials are needed)")
        design = np.hstack([z, np.ones((len(z), 1))])
        # weights and sign per trial: x = llr + logit(prior); a target costs log(1 + e^-x), a non-target log(1 + e^x)
        weight = np.where(is_target, prior / np.count_nonzero(is_target), (1 - prior) / np.count_nonzero(~is_target))
        sign = np.where(is_target, -1.0, 1.0)
        logit_prior = math.log(prior / (1 - prior))

        def objective(params: np.ndarray) -> tuple[float, np.ndarray]:
            margin = sign * (design @ params + logit_prior)
            return float(weight @ np.logaddexp(0.0, margin)), design.T @ (weight * sign * expit(margin))

        def hessian(params: np.ndarray) -> np.ndarray:
            p = expit(design @ params + logit_prior)
            return (design * (weight * p * (1 - p))[:, None]).T @ design

        params = minimize(objective, np.zeros(design.shape[1]), jac=True, hess=hessian, method="trust-exact",
                          options={"gtol": 1e-12}).x
        llr = design @ params
        if llr[is_target].min() > llr[~is_target].max():  # several features: separable ones have no optimum
            raise ValueError(f"the features {', '.join(columns)} separate targets from non-targets perfectly: "
                             "the fit has no finite optimum (more trials are needed)")
        weights = params[:-1] / spread
        return cls(columns, tuple(weights.tolist()), float(params[-1] - weights @ centre), prior)

    def formula(self) -> str:
        return " + ".join([*(f"{w:.6g} * {c}" for c, w in zip(self.columns, self.weights)), f"{self.offset:.6g}"])

    def to_dict(self) -> dict[str, Any]:
        return {"columns": list(self.columns), "weights": list(self.weights), "offset": self.offset,
                "prior": self.prior}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LinearCalibration:
        return cls(tuple(values["columns"]), tuple(float(w) for w in values["weights"]), float(values["offset"]),
                   float(values.get("prior", 0.5)))


def fitted_map(features: Sequence[np.ndarray], labels: Sequence[np.ndarray], fit: int, columns: Sequence[str],
               prior: float, where: str) -> tuple[LinearCalibration, list[np.ndarray]]:
    """The map fitted on list `fit`'s features and every list's LLRs; a fit that cannot be made is an InputError
    of `where`."""
    try:
        calibration = LinearCalibration.fit(features[fit], labels[fit], prior, columns)
    except ValueError as err:  # perfectly separated, constant or dependent features
        raise InputError(where, str(err)) from None
    return calibration, [calibration(f) for f in features]


def default_name(systems: int, qmf: Sequence[str]) -> str:
    """What a map is called in file names and tables: calibrated, qmf, fused or fused_qmf."""
    if systems > 1:
        return "fused_qmf" if qmf else "fused"
    return "qmf" if qmf else "calibrated"


@dataclass(frozen=True)
class ScoredList:
    """A trial list, its score files (one per system, same trials, same order) and, for QMF, its sides' quality
    file (None: the `quality` file beside the first score file, where stklia.test writes it)."""

    scores: tuple[Path, ...]
    trials: Path
    quality: Path | None = None

    @property
    def quality_file(self) -> Path:
        return self.quality or self.scores[0].with_name(QUALITY_FILE)


def calibrate_score_files(fit: ScoredList, apply: Sequence[ScoredList], qmf: Sequence[str], prior: float,
                          p_targets: Sequence[float], name: str | None = None) -> dict[str, Any]:
    """Fit a map (calibration, fusion of the systems, QMF) on one scored trial list and apply it to it and others.

    Writes `<list>.<name>.scores` beside each list's (first) score file `<list>.scores` and `<fit list>.<name>.json`
    (the map, and each list's metrics before and after) beside the fit's; prints the metrics as a table.
    Every input is read and checked before anything is written.
    """
    systems = len(fit.scores)
    for i, scored in enumerate(apply):
        if len(scored.scores) != systems:
            raise InputError("apply", f"entry {i + 1} has {len(scored.scores)} score file(s) for the {systems} "
                                      "system(s) of fit.scores")
    if not 0.0 < prior < 1.0:
        raise InputError("prior", f"must be in (0, 1), not {prior}")
    name = name or default_name(systems, qmf)
    if not re.fullmatch(r"[\w-]+", name):
        raise InputError("name", f"'{name}' is not a file name part (letters, digits, _ and -)")
    kinds = ["raw"] if systems == 1 else [f"score{i + 1}" for i in range(systems)]
    qualities: dict[Path, Quality] = {}
    lists, features = [], []
    for scored in [fit, *apply]:
        trials = read_trials(scored.trials, None)
        scores = [read_scores(path, trials) for path in scored.scores]
        columns, quality_names = [*scores], []
        if qmf:
            path = scored.quality_file
            if path not in qualities:
                qualities[path] = Quality.read(path)
            quality, quality_names = qualities[path].features(trials, qmf)
            columns += list(quality.T)
        lists.append((scored, trials, scores))
        features.append(np.stack(columns, axis=1))
    labels = [trials.labels for _, trials, _ in lists]
    score_columns = ["score"] if systems == 1 else kinds
    calibration, llrs = fitted_map(features, labels, 0, [*score_columns, *quality_names], prior, str(fit.scores[0]))
    summaries = []
    for (scored, trials, scores), llr in zip(lists, llrs):
        out = scored.scores[0].with_name(scores_file_name(scored.scores[0].name.removesuffix(".scores"), name))
        write_scores(out, trials, llr)
        metrics: dict[str, float] = {}
        for kind, system_scores in zip(kinds, scores):
            metrics.update(trial_metrics(system_scores, trials.labels, p_targets, "" if kind == "raw" else f"{kind}_"))
        metrics.update(trial_metrics(llr, trials.labels, p_targets, f"{name}_"))
        files = {f"{kind}_scores": str(path) for kind, path in zip(kinds, scored.scores)}
        files[f"{name}_scores"] = str(out)
        if qmf:
            files["quality"] = str(scored.quality_file)
        summaries.append(list_summary(trials, metrics, files))
    print(f"{name}: llr = {calibration.formula()} (prior {prior:g}), fitted on {fit.trials}:\n"
          f"{format_results(summaries)}", flush=True)
    record = {**calibration.to_dict(), "fit": {"scores": [str(p) for p in fit.scores], "trials": str(fit.trials),
                                               **({"quality": str(fit.quality_file)} if qmf else {})},
              "results": summaries}
    first = fit.scores[0]
    write_json(first.with_name(f"{first.name.removesuffix('.scores')}.{name}.json"), record)
    return record


def base_kind(result: TrialResult) -> str:
    """The scores a system's calibration starts from: the AS-normalised ones when there are, else the raw ones."""
    return "asnorm" if "asnorm" in result.scores else "raw"


def calibrate_results(systems: Sequence[Sequence[TrialResult]], fit: int, qmf: Sequence[str], prior: float,
                      p_targets: Sequence[float], where: str) -> tuple[list[dict[str, Any]], list[TrialResult]]:
    """`stklia.test`'s calibration: for each system (its results on every trial list), the map of its scores
    (AS-normalised when it has them) fitted on list `fit` and, with `qmf`, the map of its scores and quality
    measures, added to its results as the kinds `<base>_calibrated` and `<base>_qmf` (base: asnorm or raw; the
    files `<list>.<base>_calibrated.scores` are not those stklia.calibrate writes, `<list>[.asnorm].calibrated.scores`);
    with several systems, their fusion, as results of their own (kind `fused`). Returns the maps (a record per
    system, then the fusion's) and the fused results ([] for one system)."""
    labels = [result.trials.labels for result in systems[0]]
    records, finals = [], []
    for results in systems:
        kind = base_kind(results[0])
        finals.append([result.scores[kind] for result in results])
        maps = {f"{kind}_calibrated": ([s[:, None] for s in finals[-1]], [kind])}
        if qmf:
            quality = [result.quality.features(result.trials, qmf) for result in results]
            maps[f"{kind}_qmf"] = ([np.column_stack([s, q]) for s, (q, _) in zip(finals[-1], quality)],
                                   [kind, *quality[0][1]])
        record = {"fit": str(results[fit].trials.path)}
        for name, (features, columns) in maps.items():
            calibration, llrs = fitted_map(features, labels, fit, columns, prior, where)
            for result, llr in zip(results, llrs):
                result.scores[name] = llr
                result.metrics.update(trial_metrics(llr, result.trials.labels, p_targets, f"{name}_"))
            record[name] = calibration.to_dict()
        records.append(record)
    if len(systems) == 1:
        return records, []
    features = [np.column_stack(scores) for scores in zip(*finals)]
    calibration, llrs = fitted_map(features, labels, fit, [f"score{i + 1}" for i in range(len(systems))], prior,
                                   where)
    records.append({"fit": str(systems[0][fit].trials.path), "fused": calibration.to_dict()})
    fused = [TrialResult(result.trials, {"fused": llr}, trial_metrics(llr, result.trials.labels, p_targets, "fused_"),
                         result.quality) for result, llr in zip(systems[0], llrs)]
    return records, fused


def _paths(value: Any) -> tuple[Path, ...]:
    """One score file or a list of them (one per system)."""
    return tuple(Path(p) for p in value) if OmegaConf.is_list(value) or isinstance(value, list) else (Path(value),)


def calibrate(cfg: DictConfig) -> float:
    """The command (stklia/conf/commands/calibrate.yaml); returns the fit list's Cllr after the map."""
    qmf = check_functions(list(cfg.qmf), "qmf")
    if len(cfg.apply) != len(cfg.apply_trials):
        raise InputError("apply_trials", f"{len(cfg.apply_trials)} trial lists for the {len(cfg.apply)} score "
                                         "files of apply")
    if cfg.apply_quality and len(cfg.apply_quality) != len(cfg.apply):
        raise InputError("apply_quality", f"{len(cfg.apply_quality)} quality files for the {len(cfg.apply)} lists "
                                          "of apply")
    qualities = list(cfg.apply_quality) or [None] * len(cfg.apply)
    fit = ScoredList(_paths(cfg.fit.scores), Path(cfg.fit.trials), cfg.fit.quality and Path(cfg.fit.quality))
    apply = [ScoredList(_paths(scores), Path(trials), quality and Path(quality))
             for scores, trials, quality in zip(cfg.apply, cfg.apply_trials, qualities)]
    name = cfg.name or default_name(len(fit.scores), qmf)
    record = calibrate_score_files(fit, apply, qmf, cfg.prior, list(cfg.p_targets), name)
    return record["results"][0][f"{name}_cllr"]
