"""The results of a test, written and read in one place: `<model_dir>/results/<name>.json` (a checkpoint's
test: its step, scoring, replaced data and each trial list's summary) and, per trial list, `<name>/<list>.json`
(its summary: trial list, number of trials, metrics, files), its score files and its DET plot, with the quality
measures of the trials' sides (stklia.evaluation.quality).

`stklia.test` and the end of training write them; `stklia.calibrate` writes its summaries in the same form;
the leaderboard, TensorBoard's HParams and the sweeper read them here.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stklia.core.atomic import atomic_output, file_stem, write_json
from stklia.data.trials import Trials, trials_name
from stklia.evaluation.metrics import METRIC_DECIMALS
from stklia.evaluation.quality import QUALITY_FILE
from stklia.evaluation.scores import write_scores

if TYPE_CHECKING:
    from stklia.evaluation.scoring import TrialResult

RESULTS_DIR = "results"
NOT_METRICS = ("trials", "num_trials", "files")  # the keys of a trial list's summary that are not metrics
_STEP_SUMMARY = re.compile(r"step_(\d+)\.json")


def results_name(step: int | str, replaced: Mapping[str, Any] | None = None) -> str:
    """`step_<N>` (or an averaged checkpoint's name) for the experiment's own test data; with data entries
    `replaced` (other trials, enrollment, cohort...), that name and a digest of them: the results of other
    lists never overwrite those of the experiment's own, nor each other's."""
    name = f"step_{step:08d}" if isinstance(step, int) else step
    if replaced:
        name += "-" + hashlib.sha1(json.dumps(replaced, sort_keys=True).encode()).hexdigest()[:8]
    return name


def list_summary(trials: Trials, metrics: Mapping[str, float], files: Mapping[str, str]) -> dict[str, Any]:
    """A trial list's summary: metrics rounded to METRIC_DECIMALS (no 0.5770000000000001)."""
    return {"trials": str(trials.path), "num_trials": len(trials.labels),
            **{key: round(value, METRIC_DECIMALS) for key, value in metrics.items()}, "files": dict(files)}


def metrics_of(summary: Mapping[str, Any]) -> dict[str, float]:
    """The metrics of a trial list's summary (eer, min_dcf@0.01, ..., asnorm_eer, ...)."""
    return {key: value for key, value in summary.items() if key not in NOT_METRICS}


def list_names(trial_lists: Sequence[Trials]) -> list[str]:
    """A name per trial list for files and TensorBoard tags, from its directory and file (test/trials ->
    test_trials), numbered when two lists would share one."""
    names: list[str] = []
    for trials in trial_lists:
        name = base = file_stem(trials.name)
        copy = 1
        while name in names:
            copy += 1
            name = f"{base}_{copy}"
        names.append(name)
    return names


def scores_file_name(stem: str, kind: str) -> str:
    """The score file of a trial list's scores of one kind (raw, asnorm, calibrated...)."""
    return f"{stem}.scores" if kind == "raw" else f"{stem}.{kind}.scores"


def write_results(out_dir: Path, results: Sequence[TrialResult]) -> list[dict[str, Any]]:
    """Per trial list in out_dir: score files, DET plot, results JSON; and the quality measures of the trials'
    sides (`quality`). Returns the summaries (with file names)."""
    quality = results[0].quality if results else None
    if quality is not None:
        quality.write(out_dir / QUALITY_FILE)
    summaries = []
    for result, stem in zip(results, list_names([r.trials for r in results])):
        files = {} if quality is None else {"quality": out_dir / QUALITY_FILE}
        for kind, scores in result.scores.items():
            files[f"{kind}_scores"] = out_dir / scores_file_name(stem, kind)
            write_scores(files[f"{kind}_scores"], result.trials, scores)
        files["det"] = out_dir / f"{stem}.det.png"
        with atomic_output(files["det"]) as tmp:
            result.figure().savefig(tmp, format="png", dpi=100)
        summary = list_summary(result.trials, result.metrics, {k: str(v) for k, v in files.items()})
        write_json(out_dir / f"{stem}.json", summary)
        summaries.append(summary)
    return summaries


def write_test_summary(model_dir: Path, name: str, step: int | str, scoring: Mapping[str, Any],
                       summaries: Sequence[Mapping[str, Any]], replaced: Mapping[str, Any] | None = None) -> Path:
    """`<model_dir>/results/<name>.json`: what a test of a checkpoint found."""
    path = model_dir / RESULTS_DIR / f"{name}.json"
    write_json(path, {"step": step, **({"replaced": dict(replaced)} if replaced else {}), "scoring": dict(scoring),
                      "results": list(summaries)})
    return path


def results_dir(model_dir: Path, name: str) -> Path:
    return model_dir / RESULTS_DIR / name


def latest_test(model_dir: Path) -> tuple[int | None, list[dict[str, Any]]]:
    """The step of the latest test of the experiment's own test data with plain cosine scoring (the end of
    training, `stklia.test` without replaced data) and its trial lists' summaries; (None, []) when none."""
    tested = {int(m.group(1)): path for path in (model_dir / RESULTS_DIR).glob("step_*.json")
              if (m := _STEP_SUMMARY.fullmatch(path.name))}
    if not tested:
        return None, []
    step = max(tested)
    return step, json.loads(tested[step].read_text())["results"]


def kind_metrics(summary: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """A trial list's metrics by kind of scores (raw, asnorm, calibrated, ...: the kinds of its score files), each
    metric key going to the kind of its longest prefix (`asnorm_eer` to asnorm, `eer` to raw)."""
    kinds = [key.removesuffix("_scores") for key in summary["files"] if key.endswith("_scores")]
    prefixes = sorted(((kind, "" if kind == "raw" else f"{kind}_") for kind in kinds), key=lambda kp: -len(kp[1]))
    by_kind: dict[str, dict[str, float]] = {kind: {} for kind in kinds}
    for key, value in metrics_of(summary).items():
        kind, prefix = next(((k, p) for k, p in prefixes if key.startswith(p)), (None, ""))
        if kind is not None:
            by_kind[kind][key.removeprefix(prefix)] = value
    return by_kind


def format_results(summaries: Sequence[Mapping[str, Any]], systems: Sequence[str] | None = None) -> str:
    """A markdown table that compares systems, as the leaderboard compares runs: a row per trial list, system (the
    name of each summary's back-end, when given) and kind of scores (raw, asnorm, calibrated, qmf, fused, ...), grouped
    by trial list; a column per metric."""
    lists: dict[str, list[list[str]]] = {}
    columns: list[str] = []
    for i, summary in enumerate(summaries):
        for kind, metrics in kind_metrics(summary).items():
            columns = columns or list(metrics)
            system = [systems[i]] if systems is not None else []
            lists.setdefault(summary["trials"], []).append(
                [trials_name(summary["trials"]), *system, kind, str(summary["num_trials"]),
                 *(f"{metrics[c]:.2f}" if c.endswith("eer") else f"{metrics[c]:.4f}" for c in columns)])
    header = ["trials", *(["system"] if systems is not None else []), "scores", "n", *columns]
    rows = [row for group in lists.values() for row in group]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    lines = ["| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |" for row in [header, *rows]]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
