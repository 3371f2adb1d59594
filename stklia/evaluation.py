"""Testing a trained generator on trial lists: score them, print the table, write the results.

Used at the end of training and by `python -m stklia.test`; scoring itself is stklia.scoring.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from stklia.atomic import write_json
from stklia.data.kaldi import EvalData
from stklia.scoring import evaluate, format_results, write_results


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
               writer: SummaryWriter | None = None, replaced: Mapping[str, Any] | None = None) -> list[dict]:
    """Score every test trial list: print a table; write scores, DET plots and results JSON under
    <model_dir>/results/<name>/ and a summary in <model_dir>/results/<name>.json (name: `results_name`, the
    `replaced` data entries recorded in it); DET plots to TensorBoard when a writer is given."""
    results = evaluate(generator, test_set, cmn, device, p_targets, num_workers, progress,
                       extraction=extraction, asnorm_top_n=asnorm_top_n)
    name = results_name(step, replaced)
    summaries = write_results(model_dir / "results" / name, results)
    print(f"Test results of {model_dir} at {name}:\n{format_results(summaries)}", flush=True)
    summary = model_dir / "results" / f"{name}.json"
    write_json(summary, {"step": step, **({"replaced": dict(replaced)} if replaced else {}), "results": summaries})
    print(f"wrote {summary} and {model_dir / 'results' / name}/", flush=True)
    if writer is not None:
        for result in results:
            writer.add_figure(f"test/det/{result.trials.path.name}", result.figure(), step)
    return summaries
