"""What a training run records about itself so that runs can be compared: `status.json` and TensorBoard HParams.

`<model_dir>/status.json` is written atomically by rank 0 when training starts or resumes, at every
checkpoint, at the end, on a pre-emption signal and on a failure. It says how far the run got
(`step` of `num_iterations`), in which `state` (running, finished, failed, pre-empted), how fast it
trained (`samples` over `train_seconds`: the logged training intervals, validation excluded), its
`wall_seconds` and its `preemptions` and `resumes`, all summed over the segments of a resumed run,
and for a failed run the `error`. A run killed without notice (SIGKILL, a lost node) stays
`running` at its last checkpoint until it is resumed. `stklia.report` reads it back.

At the end of a run its hyperparameters (its command-line overrides and the main keys) and final
metrics go to TensorBoard's HParams plugin, so that `tensorboard --logdir <sweep dir>` compares a sweep.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from omegaconf import DictConfig

from stklia.atomic import write_json

if TYPE_CHECKING:  # stklia.report reads status files without importing torch
    from torch.utils.tensorboard import SummaryWriter

STATUS_FILE = "status.json"
STATES = ("running", "finished", "failed", "pre-empted")
# overrides that say where a run is or how it was started, not what it is
NOT_HYPERPARAMETERS = ("model_dir", "checkpoint", "progress", "num_workers")


def read_status(model_dir: Path) -> dict[str, Any] | None:
    """The run's status.json, or None when it has none (training has not started, or is older than it)."""
    path = model_dir / STATUS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def read_overrides(model_dir: Path) -> dict[str, str]:
    """The command-line overrides of the run (Hydra's .hydra/overrides.yaml), key -> value as typed, without
    the keys of NOT_HYPERPARAMETERS and hydra.*; empty when Hydra wrote none."""
    path = model_dir / ".hydra" / "overrides.yaml"
    overrides = {}
    for override in (yaml.safe_load(path.read_text()) or []) if path.is_file() else []:
        key, _, value = override.partition("=")
        key = key.lstrip("+~")
        if key not in NOT_HYPERPARAMETERS and not key.startswith("hydra."):
            overrides[key] = value
    return overrides


class RunStatus:
    """The status.json of a run in progress, written at each change. A resumed run (start step > 0) carries
    the totals of its earlier segments over and counts one more resume."""

    def __init__(self, model_dir: Path, step: int, num_iterations: int, started: float):
        self.path = model_dir / STATUS_FILE
        earlier = (read_status(model_dir) or {}) if step > 0 else {}
        self.started = started  # time.perf_counter() when this segment's process started training
        self.earlier = {key: earlier.get(key, 0) for key in ("samples", "train_seconds", "wall_seconds")}
        self.status = {"state": "running", "step": step, "num_iterations": num_iterations,
                       **self.earlier, "preemptions": earlier.get("preemptions", 0),
                       "resumes": earlier.get("resumes", 0) + (step > 0), "error": None}
        self.write()

    def write(self) -> None:
        self.status["wall_seconds"] = self.earlier["wall_seconds"] + time.perf_counter() - self.started
        self.status["updated"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        write_json(self.path, self.status)

    def checkpoint(self, step: int, samples: int, train_seconds: float) -> None:
        """At a checkpoint: the step reached and this segment's logged training samples and time."""
        self.status.update(step=step, samples=self.earlier["samples"] + samples,
                           train_seconds=self.earlier["train_seconds"] + train_seconds)
        self.write()

    def end(self, state: str, error: str | None = None) -> None:
        """finished, pre-empted (stopped by a signal, with a checkpoint) or failed (with the error)."""
        self.status.update(state=state, error=error)
        self.status["preemptions"] += state == "pre-empted"
        self.write()


def hyperparameters(cfg: DictConfig, model_dir: Path) -> dict[str, Any]:
    """The run's main keys (model and head as chosen on the command line, lr, batch size, crop, steps, embedding
    size) and its overrides, as values TensorBoard's HParams plugin takes (bool, int, float, str)."""
    hydra_file = model_dir / ".hydra" / "hydra.yaml"
    choices = yaml.safe_load(hydra_file.read_text())["hydra"]["runtime"]["choices"] if hydra_file.is_file() else {}
    values = {key: yaml.safe_load(value) for key, value in read_overrides(model_dir).items()}
    values.update({"model": choices.get("model", cfg.model._target_), "head": choices.get("head", cfg.head._target_),
                   "optim.lr": cfg.optim.get("lr"), "batch_size": cfg.batch_size, "max_seq_len": cfg.max_seq_len,
                   "num_iterations": cfg.num_iterations, "model.emb_size": cfg.model.get("emb_size")})
    return {key: value if isinstance(value, bool | int | float | str) else json.dumps(value)
            for key, value in values.items()}


def log_hparams(writer: SummaryWriter, cfg: DictConfig, model_dir: Path, step: int, best_eer: float | None,
                tested: Sequence[dict] | None) -> dict[str, float]:
    """Log the hyperparameters with the final metrics (`hparams/eval_eer`: best validation EER;
    `hparams/<trial list>/<metric>`: the test's) into the run's TensorBoard dir; returns the metrics."""
    metrics = {"hparams/eval_eer": best_eer} if best_eer is not None else {}
    for result in tested or []:
        trials = Path(result["trials"])
        metrics.update({f"hparams/{trials.parent.name}/{trials.name}/{key}": value for key, value in result.items()
                        if key not in ("trials", "num_trials", "files")})
    writer.add_hparams(hyperparameters(cfg, model_dir), metrics, run_name=".", global_step=step)
    return metrics
