"""The leaderboard of training runs (`python -m stklia.report DIR [DIR ...] [key=value ...]`).

A DIR is a sweep dir (`multirun/<date>/<time>`), an `exp/` dir or a model dir; every model dir under it
(one with a status.json, a config.yaml or Hydra's .hydra/) is one row, whatever its state: finished,
running, failed, pre-empted, pruned (by an Optuna study's pruner), or not started (no status.json yet: still
preparing its data, or failed before training; see its train.log). Other dirs are skipped with a note on
stderr. Columns: the command-line overrides that differ between the runs (only those), steps done, the best
validation EER, the test metrics of the latest step tested for each trial list (raw and AS-norm), the training
samples/s, the wall time and the status (stklia.training.records). Rows are sorted by `sort`, best first.
Each file is read by the module that owns it (status and overrides: stklia.training.records; best.json:
stklia.modeldir.checkpoints; results and score files: stklia.evaluation.results and .scores).

The DET curves of the best `top` runs are drawn on one plot (stklia.evaluation.det, NIST probit axes), with the
scores the table is sorted by: the sort column's trial list and its raw or AS-norm scores, or the
first test list's raw scores when the sort column is not a test metric.

`SweepReport` is the Hydra callback (train.yaml) that prints where a sweep writes and how to follow it
when it starts, and the table when it ends, also when a failed job ends it with an error.
"""

from __future__ import annotations

import atexit
import csv
import io
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from stklia.core.atomic import atomic_output
from stklia.core.config import CONF_DIR
from stklia.core.errors import InputError
from stklia.data.trials import Trials, read_trials, trials_name
from stklia.evaluation.results import latest_test, metrics_of
from stklia.evaluation.scores import read_scores
from stklia.modeldir.checkpoints import read_best
from stklia.modeldir.config import has_config
from stklia.training.records import has_record, has_status, read_overrides, read_status

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FORMATS = ("markdown", "csv", "json")
DESCENDING = ("samples/s", "steps")  # sorted highest first; every other column lowest first


def default_settings(dirs: Sequence[Path]) -> DictConfig:
    """The report command's default settings (stklia/conf/commands/report.yaml) for `dirs`: the table a sweep
    prints when it ends."""
    cfg = OmegaConf.load(CONF_DIR / "commands" / "report.yaml")
    cfg.pop("defaults")
    cfg.dirs = [str(d) for d in dirs]
    return cfg


def is_model_dir(path: Path) -> bool:
    return has_status(path) or has_config(path) or has_record(path)


def natural_key(path: Path) -> list:
    """Job dirs 0, 1, ..., 10 in numeric order."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def search(root: Path) -> tuple[list[Path], list[Path]]:
    """The model dirs under root, and the top dirs of its subtrees that hold none (hidden dirs are not searched)."""
    if is_model_dir(root):
        return [root], []
    found, skipped = [], []
    for child in sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=natural_key):
        below, skipped_below = search(child)
        found += below
        skipped += skipped_below if below else [child]
    return found, skipped


@dataclass
class Run:
    """What a model dir says about its run."""

    name: str
    path: Path
    overrides: dict[str, str]
    status: dict[str, Any] | None
    eval_eer: float | None
    tested_step: int | None
    results: list[dict[str, Any]]

    @classmethod
    def read(cls, name: str, path: Path) -> Run:
        best = read_best(path)
        step, results = latest_test(path)
        return cls(name, path, read_overrides(path), read_status(path), best.eer if best is not None else None,
                   step, results)

    def state(self) -> str:
        """The status in words: the state, then pre-emptions and resumes, e.g. `finished (1 pre-emption, resumed)`."""
        if self.status is None:
            return "not started"
        state, preemptions, resumes = self.status["state"], self.status["preemptions"], self.status["resumes"]
        extras = [f"{preemptions} pre-emption{'s' * (preemptions > 1)}"] if preemptions else []
        if state == "pre-empted" and preemptions == 1:
            extras = []
        if resumes:
            extras.append("resumed" if resumes == 1 else f"resumed {resumes}x")
        return f"{state} ({', '.join(extras)})" if extras else state

    def metrics(self) -> dict[str, float]:
        """Test metrics by column name `<trial list>:<key>`."""
        return {f"{trials_name(r['trials'])}:{key}": value
                for r in self.results for key, value in metrics_of(r).items()}

    def label(self, differing: Sequence[str]) -> str:
        shown = " ".join(f"{key}={override_text(self.overrides[key])}" for key in differing if key in self.overrides)
        return f"{self.name}: {shown}" if shown else self.name


def find_runs(dirs: Sequence[Path]) -> tuple[list[Run], list[str]]:
    """Every model dir under the dirs, and notes on the dirs skipped."""
    runs, notes = [], []
    for root in dirs:
        if not root.is_dir():
            raise InputError(root, "no such directory")
        found, skipped = search(root)
        notes += [f"skipped {path}: not a model dir (no status.json, config.yaml or .hydra/)" for path in skipped]
        one_tree = len(dirs) == 1 and found != [root]  # runs are named by their path under it
        runs += [Run.read(str(path.relative_to(root) if one_tree else path), path) for path in found]
    if not runs:
        raise InputError(", ".join(map(str, dirs)), "no model directory (a sweep's jobs write theirs when they start)")
    return runs, notes


def differing_overrides(runs: Sequence[Run]) -> list[str]:
    """The override keys whose value is not the same in every run (absent counts as a value), in first-seen order."""
    keys = list(dict.fromkeys(key for run in runs for key in run.overrides))
    return [key for key in keys if len({run.overrides.get(key) for run in runs}) > 1]


def metric_columns(runs: Sequence[Run], metrics: Sequence[str]) -> list[str]:
    """`<trial list>:<metric>` and `<trial list>:asnorm_<metric>` of the shown metrics, for lists any run has."""
    present = dict.fromkeys(column for run in runs for column in run.metrics())
    lists = dict.fromkeys(column.split(":", 1)[0] for column in present)
    return [column for name in lists for metric in metrics for kind in ("", "asnorm_")
            if (column := f"{name}:{kind}{metric}") in present]


def rows(runs: Sequence[Run], differing: Sequence[str], columns: Sequence[str]) -> list[dict[str, Any]]:
    """One dict per run: its name, differing overrides, then the columns, as numbers (None: not available)."""
    table = []
    for run in runs:
        status = run.status or {}
        speed = status["samples"] / status["train_seconds"] if status.get("train_seconds") else None
        metrics = run.metrics()
        table.append({"run": run.name, **{key: run.overrides.get(key) for key in differing},
                      "steps": status.get("step"), "num_iterations": status.get("num_iterations"),
                      "eval_eer": run.eval_eer, **{column: metrics.get(column) for column in columns},
                      "samples/s": speed, "wall": status.get("wall_seconds"), "status": run.state(),
                      "error": status.get("error")})
    return table


def sort_column(sort: str | None, columns: Sequence[str]) -> str:
    if sort is None:
        return next((column for column in columns if column.endswith(":eer")), "eval_eer")
    sortable = ["eval_eer", *columns, *DESCENDING, "wall"]
    if sort not in sortable:
        raise InputError("report", f"sort={sort} is not a column of this table: one of {', '.join(sortable)}")
    return sort


def ranked(table: list[dict[str, Any]], column: str) -> list[dict[str, Any]]:
    """Best first; rows without a value last, in their order."""
    sign = -1 if column in DESCENDING else 1
    return sorted(table, key=lambda row: (row[column] is None, sign * row[column] if row[column] is not None else 0))


def cell(column: str, value: Any) -> str:
    """A value as the markdown table shows it."""
    if value is None:
        return "-"
    if column == "wall":
        minutes, seconds = divmod(round(value), 60)
        return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}"
    if column == "samples/s":
        return f"{value:.0f}"
    if isinstance(value, float):
        return f"{value:.2f}" if column.endswith("eer") else f"{value:.3f}"
    return override_text(str(value))


def override_text(value: str) -> str:
    """An override's value as tables and legends show it: a float Optuna chose (0.22898514604770379) to 4 digits."""
    return f"{float(value):.4g}" if re.fullmatch(r"-?\d*\.\d{5,}(e-?\d+)?", value) else value


def format_table(table: list[dict[str, Any]], fmt: str) -> str:
    """The ranked rows as a markdown table (failed runs' errors below it), CSV, or JSON."""
    if fmt == "json":
        return json.dumps(table, indent=2)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(table[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(table)
        return out.getvalue().rstrip("\n")
    header = [column for column in table[0] if column not in ("num_iterations", "error")]
    body = [[cell(c, row[c]) if c != "steps" or row[c] is None else f"{row[c]}/{row['num_iterations']}"
             for c in header] for row in table]
    widths = [max(len(h), *(len(line[i]) for line in body)) for i, h in enumerate(header)]
    lines = ["| " + " | ".join(v.ljust(w) for v, w in zip(line, widths)) + " |" for line in [header, *body]]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    errors = [f"{row['run']}: {row['error']}" for row in table if row["error"]]
    return "\n".join([*lines, *([""] if errors else []), *errors])


def run_scores(summary: dict[str, Any], kind: str) -> tuple[np.ndarray, Trials]:
    """A run's scores of one trial list (`raw` or `asnorm`) and its trial list, in trial order."""
    trials = read_trials(summary["trials"], None)
    return read_scores(summary["files"][f"{kind}_scores"], trials), trials


def det_overlay(runs: Sequence[Run], table: list[dict[str, Any]], column: str, top: int,
                differing: Sequence[str]) -> tuple[Figure | None, list[str]]:
    """The DET curves of the `top` best runs of `table` (ranked by `column`) on one plot: the scores of the
    column's trial list, raw or AS-norm (the first test list's raw scores when the column is not a test
    metric); the legend names each run by its differing overrides. Also returns notes on runs left out."""
    from stklia.evaluation.det import det_figure  # matplotlib's pyplot-free figure: only when a plot is drawn

    by_name = {run.name: run for run in runs}
    name, key = column.split(":", 1) if ":" in column else (None, "eer")
    kind = "asnorm" if key.startswith("asnorm_") else "raw"
    systems, labels, notes = {}, None, []
    for row in table:
        if len(systems) == top:
            break
        run = by_name[row["run"]]
        summary = next((r for r in run.results if name is None or trials_name(r["trials"]) == name), None)
        if summary is None or f"{kind}_scores" not in summary.get("files", {}):
            continue
        name = trials_name(summary["trials"])
        try:
            scores, trials = run_scores(summary, kind)
        except (OSError, InputError) as err:
            notes.append(f"DET plot: left out {run.name}: {err}")
            continue
        if labels is not None and not np.array_equal(trials.labels, labels):
            notes.append(f"DET plot: left out {run.name}: its {name} holds other trials")
            continue
        labels = trials.labels
        systems[run.label(differing)] = scores
    if not systems:
        return None, [*notes, f"DET plot: no run has {kind} scores{f' of {name}' if name else ''}"]
    return det_figure(systems, labels, f"{name} ({kind} scores): best {len(systems)} by {column}"), notes


def leaderboard(cfg: DictConfig) -> tuple[str, list[str]]:
    """The table of the runs under cfg.dirs as cfg says (stklia/conf/commands/report.yaml), and notes (dirs
    skipped, the DET plot); draws the DET plot."""
    if cfg.format not in FORMATS:
        raise InputError("format", f"must be one of {', '.join(FORMATS)}, not '{cfg.format}'")
    dirs = [Path(d) for d in cfg.dirs]
    runs, notes = find_runs(dirs)
    differing = differing_overrides(runs)
    columns = metric_columns(runs, cfg.metrics)
    column = sort_column(cfg.sort, columns)
    table = ranked(rows(runs, differing, columns), column)
    if cfg.top > 0:
        figure, det_notes = det_overlay(runs, table, column, cfg.top, differing)
        notes += det_notes
        if figure is not None:
            path = Path(cfg.det or dirs[0] / "report.det.png")
            with atomic_output(path) as tmp:
                figure.savefig(tmp, format="png", dpi=100)
            notes.append(f"DET plot ({figure.axes[0].get_title()}): {path}")
    return format_table(table, cfg.format), notes


def report(cfg: DictConfig) -> None:
    """The command: the table on stdout, the notes on stderr."""
    table, notes = leaderboard(cfg)
    print(table, flush=True)
    for note in notes:
        print(f"stklia.report: {note}", file=sys.stderr, flush=True)


class SweepReport(Callback):
    """Hydra callback: where a sweep writes and how to follow it when it starts (before the jobs are launched or
    submitted), its table when it ends, also when a failed job ends it with an error."""

    sweep_dir: Path | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.sweep_dir = Path(config.hydra.sweep.dir)
        print(f"Sweep dir: {self.sweep_dir}\nFollow it with: python -m stklia.report {self.sweep_dir}", flush=True)
        atexit.register(self.print_table)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        atexit.unregister(self.print_table)
        self.print_table()

    def print_table(self) -> None:
        print(f"\nRuns of the sweep {self.sweep_dir}:", flush=True)
        try:
            report(default_settings([self.sweep_dir]))
        except InputError as err:
            print(f"stklia.report: {err}", file=sys.stderr, flush=True)
