"""Testing a trained generator on trial lists: score them, print the table, write the results.

Used at the end of training and by `python -m stklia.test`; scoring itself is stklia.scoring.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from stklia.atomic import write_json
from stklia.data.kaldi import EvalData
from stklia.scoring import TrialResult, evaluate, format_results, result_names, write_results


def test_model(generator: nn.Module, test_set: EvalData, model_dir: Path, step: int | str, device: torch.device, *,
               cmn: bool, p_targets: Sequence[float], num_workers: int = 0, progress: bool = True,
               extraction: Mapping[str, Any] | None = None, asnorm_top_n: int = 0,
               writer: SummaryWriter | None = None) -> list[dict]:
    """Score every test trial list: print a table; write scores, DET plots and results JSON under
    <model_dir>/results/<name>/ and a summary in <model_dir>/results/<name>.json, where name is step_<N>
    (or the name of an averaged checkpoint); metrics and DET plots to TensorBoard when a writer is given."""
    results = evaluate(generator, test_set, cmn, device, p_targets, num_workers, progress,
                       extraction=extraction, asnorm_top_n=asnorm_top_n)
    name = f"step_{step:08d}" if isinstance(step, int) else step
    summaries = write_results(model_dir / "results" / name, results)
    print(f"Test results of {model_dir} at {name}:\n{format_results(summaries)}", flush=True)
    write_json(model_dir / "results" / f"{name}.json", {"step": step, "results": summaries})
    if writer is not None:
        log_results(writer, "test", results, step)
    return summaries


def log_results(writer: SummaryWriter, split: str, results: Sequence[TrialResult], step: int) -> None:
    """TensorBoard: each trial list's metrics as scalars `<split>/<metric>/<list>` (eer, min_dcf@0.01, asnorm_eer,
    ...) and its DET plot `<split>/det/<list>`, a list being named as its result files are (e.g. test_trials)."""
    for result, name in zip(results, result_names(results)):
        for metric, value in result.metrics.items():
            writer.add_scalar(f"{split}/{metric}/{name}", value, step)
        writer.add_figure(f"{split}/det/{name}", result.figure(), step)
