"""Testing a generator on trial lists: fit or reuse the back-ends, score, calibrate, print one table that compares
the systems, write the results.

`test_model` runs at the end of training and in `python -m stklia.test` (`evaluate_checkpoint`); scoring itself
is stklia.evaluation.scoring, calibration stklia.evaluation.calibration, the files stklia.evaluation.results.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter

from stklia.core.devices import resolve_device
from stklia.core.errors import InputError
from stklia.data.kaldi import DataSet
from stklia.data.splits import load_named, load_test_set, prepare_data
from stklia.data.trials import EvalData, Trials
from stklia.evaluation.backends.fitting import ScoringOptions, prepare_cohort, prepare_scoring
from stklia.evaluation.calibration import calibrate_results
from stklia.evaluation.embeddings import Embedder, Extraction
from stklia.evaluation.quality import check_functions
from stklia.evaluation.results import (
    format_results,
    list_names,
    results_dir,
    results_name,
    write_results,
    write_test_summary,
)
from stklia.evaluation.scoring import TrialResult, evaluate
from stklia.modeldir.trained import load_trained

REPLACEABLE = ("test", "test_trials", "test_enroll", "cohort", "asnorm_top_n")  # data entries a test may replace


@dataclass(frozen=True)
class ScoringSystem:
    """A back-end a test scores with: its options, the data its statistics are fitted on and the unlabelled data
    they are adapted to (each a data set and its name)."""

    options: ScoringOptions = ScoringOptions()
    data: tuple[DataSet, str] | None = None
    adapt: tuple[DataSet, str] | None = None


@dataclass(frozen=True)
class CalibrationRequest:
    """Calibration (and QMF, and the fusion of the systems) fitted on one of the test lists, applied to all."""

    trials: int  # the index of the development list among the test lists
    qmf: Sequence[str] = ()  # quality measure functions of the QMF rows (stklia.evaluation.quality)
    prior: float = 0.5


@dataclass(frozen=True)
class EvaluationRequest:
    """What a test scores and how."""

    test_set: EvalData  # trial lists, their data, enrollment speakers, AS-norm cohort
    p_targets: Sequence[float] = (0.01, 0.001)
    systems: Sequence[ScoringSystem] = (ScoringSystem(),)  # the back-ends (default: plain cosine)
    calibration: CalibrationRequest | None = None
    replaced: Mapping[str, Any] = field(default_factory=dict)  # data entries replacing the experiment's (they
    # name the results)


def test_model(embed: Embedder, request: EvaluationRequest, model_dir: Path, step: int | str,
               writer: SummaryWriter | None = None) -> list[dict]:
    """Score every test trial list with each system: print one table of them all; write scores, DET plots and
    results JSON under <model_dir>/results/<name>/ and a summary in <model_dir>/results/<name>.json per system,
    where name is `results_name` (the replaced data entries recorded in it), followed by `-<back-end>` for other
    scoring than plain cosine (e.g. step_<N>-plda-lda200+mean), and `-fused-<back-ends>` for their fusion; the
    first system's metrics and DET plots to TensorBoard when a writer is given. Returns the first system's list
    summaries.

    The back-ends' statistics and the AS-norm cohort's speaker means are computed once from the embeddings of
    their data, and kept in <model_dir>/backends/<step name>/.
    """
    store = model_dir / "backends" / results_name(step)
    test_set = request.test_set
    cohort = None
    if test_set.cohort is not None and test_set.asnorm_top_n > 0:
        cohort = prepare_cohort(test_set.cohort, embed, store)
    base = results_name(step, request.replaced)
    names, scorings, systems = [], [], []
    for system in request.systems:
        data, data_name = system.data or (None, "")
        prepared = prepare_scoring(system.options, data, data_name, embed, store, system.adapt)
        names.append(f"{base}-{prepared.tag}" if prepared.tag else base)
        scorings.append(prepared.summary)
        systems.append(evaluate(embed, test_set, request.p_targets, prepared.scorer, cohort))
    labels = [name.removeprefix(base).removeprefix("-") or "cosine" for name in names]
    calibration = request.calibration
    if calibration is not None:
        records, fused = calibrate_results(systems, calibration.trials, calibration.qmf, calibration.prior,
                                           request.p_targets, "calibration.trials")
        scorings = [{**scoring, "calibration": record} for scoring, record in zip(scorings, records)]
        if fused:
            names.append(f"{base}-fused-{'_'.join(labels)}")
            scorings.append({"fused": names[:-1], "calibration": records[-1]})
            systems.append(fused)
            labels.append("fused")
    summaries, shown, written = [], [], []
    for name, scoring, results, label in zip(names, scorings, systems, labels):
        summaries.append(write_results(results_dir(model_dir, name), results))
        shown += [label] * len(results)
        written.append(f"wrote {write_test_summary(model_dir, name, step, scoring, summaries[-1], request.replaced)}"
                       f" and {results_dir(model_dir, name)}/")
    table = format_results([s for group in summaries for s in group], shown if len(systems) > 1 else None)
    print(f"Test results of {model_dir} at {names[0]}:\n{table}", flush=True)
    print("\n".join(written), flush=True)
    if writer is not None:
        log_results(writer, "test", systems[0], step)
    return summaries[0]


def list_index(lists: Sequence[Trials], which: str) -> int:
    """The index of the test list `which` names: its results name (eval_trials), its short name (eval/trials) or
    its path."""
    names = list_names(lists)
    for i, (trials, name) in enumerate(zip(lists, names)):
        if which in (name, trials.name) or Path(which).resolve() == trials.path.resolve():
            return i
    raise InputError("calibration.trials", f"'{which}' is none of the test trial lists ({', '.join(names)}): give "
                                           "one's name or path")


def scoring_systems(cfg: DictConfig, data_cfg: DictConfig) -> list[ScoringSystem]:
    """The back-ends of `scoring` and of each entry of `compare` (the scoring keys it changes), with their data."""
    base = OmegaConf.to_container(cfg.scoring)
    keys = [f.name for f in fields(ScoringOptions)]
    options = [ScoringOptions(**base)]
    for i, entry in enumerate(cfg.compare, 1):
        if not OmegaConf.is_dict(entry):
            raise InputError("compare", f"entry {i} ({entry}) is not a mapping of scoring keys, e.g. "
                                        "{backend: plda, lda_dim: 32}")
        unknown = sorted(set(entry) - set(keys))
        if unknown:
            raise InputError("compare", f"entry {i}: '{unknown[0]}' is not a scoring key (one of {', '.join(keys)})")
        options.append(ScoringOptions(**{**base, **OmegaConf.to_container(entry)}))
        if options[-1] in options[:-1]:
            raise InputError("compare", f"entry {i} is a back-end already scored: {options[-1]}")
    loaded: dict[str, tuple[DataSet, str]] = {}

    def data(name: str | None) -> tuple[DataSet, str] | None:
        if name is not None and name not in loaded:
            loaded[name] = load_named(data_cfg, name)
        return None if name is None else loaded[name]

    return [ScoringSystem(o, None if o.plain else data(o.data), data(o.adapt)) for o in options]


def evaluate_checkpoint(cfg: DictConfig) -> float:
    """The command (stklia/conf/commands/test.yaml): a checkpoint of a model dir on the experiment's test lists or
    on the ones the command names, with each configured back-end; returns the first list's EER."""
    qmf = check_functions(list(cfg.calibration.qmf), "calibration.qmf")
    trained = load_trained(cfg.model_dir, cfg.checkpoint)
    replaced = {key: OmegaConf.to_object(cfg[key]) if OmegaConf.is_config(cfg[key]) else cfg[key]
                for key in REPLACEABLE if cfg[key] is not None}
    data_cfg = OmegaConf.merge(trained.config.data, replaced)
    prepare_data(data_cfg, cfg.progress)
    test_set = load_test_set(data_cfg)
    calibration = None
    if cfg.calibration.trials is not None:
        if "cohort_mean" in qmf and test_set.cohort is None:
            raise InputError("calibration.qmf", "cohort_mean needs AS-norm (a cohort and asnorm_top_n > 0)")
        if not 0.0 < cfg.calibration.prior < 1.0:
            raise InputError("calibration.prior", f"must be in (0, 1), not {cfg.calibration.prior}")
        calibration = CalibrationRequest(list_index(test_set.trial_lists, str(cfg.calibration.trials)), qmf,
                                         cfg.calibration.prior)
    request = EvaluationRequest(test_set, list(cfg.p_targets), scoring_systems(cfg, data_cfg), calibration, replaced)
    device = resolve_device(cfg.device)
    embed = Embedder(trained.generator.to(device), Extraction.of(cfg, device, data_cfg.cmn))
    return test_model(embed, request, Path(cfg.model_dir), trained.step)[0]["eer"]


def log_results(writer: SummaryWriter, split: str, results: Sequence[TrialResult], step: int) -> None:
    """TensorBoard: each trial list's metrics as scalars `<split>/<metric>/<list>` (eer, min_dcf@0.01, asnorm_eer,
    ...) and its DET plot `<split>/det/<list>`, a list being named as its result files are (e.g. test_trials)."""
    for result, name in zip(results, list_names([r.trials for r in results])):
        for metric, value in result.metrics.items():
            writer.add_scalar(f"{split}/{metric}/{name}", value, step)
        writer.add_figure(f"{split}/det/{name}", result.figure(), step)
