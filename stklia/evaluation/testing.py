"""Testing a generator on trial lists: fit or reuse the back-end, score, print the table, write the results.

`test_model` runs at the end of training and in `python -m stklia.test` (`evaluate_checkpoint`); scoring itself
is stklia.evaluation.scoring, the files stklia.evaluation.results.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter

from stklia.core.devices import resolve_device
from stklia.data.kaldi import DataSet
from stklia.data.splits import load_named, load_test_set, prepare_data
from stklia.data.trials import EvalData
from stklia.evaluation.backends.fitting import ScoringOptions, prepare_scoring
from stklia.evaluation.embeddings import Embedder, Extraction
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
class EvaluationRequest:
    """What a test scores and how."""

    test_set: EvalData  # trial lists, their data, enrollment speakers, AS-norm cohort
    p_targets: Sequence[float] = (0.01, 0.001)
    scoring: ScoringOptions = ScoringOptions()  # normalisation and back-end (default: plain cosine)
    scoring_data: tuple[DataSet, str] | None = None  # what the back-end's statistics are fitted on, and its name
    replaced: Mapping[str, Any] = field(default_factory=dict)  # data entries replacing the experiment's (they
    # name the results)


def test_model(embed: Embedder, request: EvaluationRequest, model_dir: Path, step: int | str,
               writer: SummaryWriter | None = None) -> list[dict]:
    """Score every test trial list: print a table; write scores, DET plots and results JSON under
    <model_dir>/results/<name>/ and a summary in <model_dir>/results/<name>.json, where name is `results_name`
    (the replaced data entries recorded in it), followed by `-<back-end>` for other scoring than plain cosine
    (e.g. step_<N>-plda-lda200+mean); metrics and DET plots to TensorBoard when a writer is given.

    The back-end's statistics are fitted on the embeddings of the request's scoring data once, and kept in
    <model_dir>/backends/<step name>/.
    """
    data, data_name = request.scoring_data or (None, "")
    prepared = prepare_scoring(request.scoring, data, data_name, embed, model_dir / "backends" / results_name(step))
    results = evaluate(embed, request.test_set, request.p_targets, prepared.scorer)
    name = results_name(step, request.replaced)
    if prepared.tag:
        name = f"{name}-{prepared.tag}"
    summaries = write_results(results_dir(model_dir, name), results)
    print(f"Test results of {model_dir} at {name}:\n{format_results(summaries)}", flush=True)
    summary = write_test_summary(model_dir, name, step, prepared.summary, summaries, request.replaced)
    print(f"wrote {summary} and {results_dir(model_dir, name)}/", flush=True)
    if writer is not None:
        log_results(writer, "test", results, step)
    return summaries


def evaluate_checkpoint(cfg: DictConfig) -> float:
    """The command (stklia/conf/commands/test.yaml): a checkpoint of a model dir on the experiment's test lists or
    on the ones the command names; returns the first list's EER."""
    scoring = ScoringOptions(**OmegaConf.to_container(cfg.scoring))
    trained = load_trained(cfg.model_dir, cfg.checkpoint)
    replaced = {key: OmegaConf.to_object(cfg[key]) if OmegaConf.is_config(cfg[key]) else cfg[key]
                for key in REPLACEABLE if cfg[key] is not None}
    data_cfg = OmegaConf.merge(trained.config.data, replaced)
    prepare_data(data_cfg, cfg.progress)
    request = EvaluationRequest(load_test_set(data_cfg), list(cfg.p_targets), scoring,
                          None if scoring.plain else load_named(data_cfg, scoring.data), replaced)
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
