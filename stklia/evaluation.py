"""Testing a trained generator on trial lists: score them, print the table, write the results; and
calibrating the scores written.

test_model is used at the end of training and by `python -m stklia.test`, calibrate_score_files by
`python -m stklia.calibrate`; scoring itself is stklia.scoring.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from stklia.atomic import write_json
from stklia.backends.calibration import LinearCalibration
from stklia.backends.fitting import ScoringOptions, prepare_scoring
from stklia.data.kaldi import DataSet, EvalData, read_trials
from stklia.embeddings import Embedder
from stklia.errors import InputError
from stklia.scoring import (
    TrialResult,
    evaluate,
    format_results,
    read_scores,
    result_names,
    trial_metrics,
    write_results,
    write_scores,
)


def results_name(step: int | str, replaced: Mapping[str, Any] | None = None) -> str:
    """`step_<N>` (or an averaged checkpoint's name) for the experiment's own test data; with data entries
    `replaced` (other trials, enrollment, cohort...), that name and a digest of them: the results of other
    lists never overwrite those of the experiment's own, nor each other's."""
    name = f"step_{step:08d}" if isinstance(step, int) else step
    if replaced:
        name += "-" + hashlib.sha1(json.dumps(replaced, sort_keys=True).encode()).hexdigest()[:8]
    return name


def test_model(generator: nn.Module, test_set: EvalData, model_dir: Path, step: int | str, device: torch.device, *,
               cmn: bool, p_targets: Sequence[float], num_workers: int = 0, progress: bool = True,
               extraction: Mapping[str, Any] | None = None, asnorm_top_n: int = 0,
               writer: SummaryWriter | None = None, scoring: ScoringOptions | None = None,
               scoring_data: tuple[DataSet, str] | None = None,
               replaced: Mapping[str, Any] | None = None) -> list[dict]:
    """Score every test trial list: print a table; write scores, DET plots and results JSON under
    <model_dir>/results/<name>/ and a summary in <model_dir>/results/<name>.json, where name is `results_name`
    (the `replaced` data entries recorded in it), followed by `-<back-end>` for other scoring than plain cosine
    (e.g. step_<N>-plda-lda200+mean); metrics and DET plots to TensorBoard when a writer is given.

    `scoring`: normalisation and back-end (default: plain cosine); their statistics are fitted on the embeddings of
    `scoring_data` (a data set and its name) once, and kept in <model_dir>/backends/<step name>/.
    """
    embed = Embedder(generator, cmn, device, num_workers, progress, extraction)
    data, data_name = scoring_data or (None, "")
    prepared = prepare_scoring(scoring or ScoringOptions(), data, data_name, embed,
                               model_dir / "backends" / results_name(step))
    results = evaluate(generator, test_set, cmn, device, p_targets, num_workers, progress,
                       extraction=extraction, asnorm_top_n=asnorm_top_n, scorer=prepared.scorer, embed=embed)
    name = results_name(step, replaced)
    if prepared.tag:
        name = f"{name}-{prepared.tag}"
    summaries = write_results(model_dir / "results" / name, results)
    print(f"Test results of {model_dir} at {name}:\n{format_results(summaries)}", flush=True)
    summary = model_dir / "results" / f"{name}.json"
    write_json(summary, {"step": step, **({"replaced": dict(replaced)} if replaced else {}),
                         "scoring": prepared.summary, "results": summaries})
    print(f"wrote {summary} and {model_dir / 'results' / name}/", flush=True)
    if writer is not None:
        log_results(writer, "test", results, step)
    return summaries


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
        out = scores_path.with_name(f"{scores_path.name.removesuffix('.scores')}.{name}.scores")
        calibrated = calibration(scores)
        write_scores(out, trials, calibrated)
        summaries.append({"trials": str(trials.path), "num_trials": len(trials.labels),
                          **trial_metrics(scores, trials.labels, p_targets),
                          **trial_metrics(calibrated, trials.labels, p_targets, "calibrated_"),
                          "files": {"raw_scores": str(scores_path), "calibrated_scores": str(out)}})
    print(f"Calibration llr = {calibration.scale:.6g} * score + {calibration.offset:.6g} (prior {prior:g}), "
          f"fitted on {fit_scores}:\n{format_results(summaries)}", flush=True)
    record = {**calibration.to_dict(), "fit": {"scores": str(fit_scores), "trials": str(fit_trials)},
              "results": summaries}
    write_json(Path(fit_scores).with_name(f"{Path(fit_scores).name.removesuffix('.scores')}.{name}.json"), record)
    return record


def log_results(writer: SummaryWriter, split: str, results: Sequence[TrialResult], step: int) -> None:
    """TensorBoard: each trial list's metrics as scalars `<split>/<metric>/<list>` (eer, min_dcf@0.01, asnorm_eer,
    ...) and its DET plot `<split>/det/<list>`, a list being named as its result files are (e.g. test_trials)."""
    for result, name in zip(results, result_names(results)):
        for metric, value in result.metrics.items():
            writer.add_scalar(f"{split}/{metric}/{name}", value, step)
        writer.add_figure(f"{split}/det/{name}", result.figure(), step)
