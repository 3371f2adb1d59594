"""What a training run records about itself in its model dir, written only once the run has started:
`.hydra/` and `train.log`, `status.json`, and TensorBoard HParams. Every reader of these files reads them here.

Hydra creates its run dir, writes `.hydra/` and opens its job log before the task function runs, so a run
refused at start-up (a model dir that holds checkpoints, bad data, a bad setting) would overwrite an existing
model dir's record of the run that made it, or leave a new dir behind. stklia's train config therefore runs
Hydra in the current directory (`hydra.run.dir: .`) without an output subdir, with a log handler that holds
the records in memory (`DeferredFileHandler`, `stklia/conf/hydra/job_logging/deferred.yaml`); once the start-up
checks have passed, `RunRecord.commit` writes `.hydra/` as Hydra would and the log into the model dir.

`<model_dir>/status.json` is written atomically by rank 0 when training starts or resumes, at every
checkpoint, at the end, on a pre-emption signal and on a failure. It says how far the run got
(`step` of `num_iterations`), in which `state` (running, finished, failed, pre-empted, or pruned: stopped by
the pruner of an Optuna study), how fast it
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
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from stklia.core.atomic import atomic_output, write_json
from stklia.data.trials import trials_name
from stklia.evaluation.results import metrics_of

if TYPE_CHECKING:  # stklia.report reads status files without importing torch
    from torch.utils.tensorboard import SummaryWriter

STATUS_FILE = "status.json"
HYDRA_DIR = ".hydra"
STATES = ("running", "finished", "failed", "pre-empted", "pruned")
# overrides that say where a run is or how it was started, not what it is
NOT_HYPERPARAMETERS = ("model_dir", "checkpoint", "progress", "num_workers")


def has_status(model_dir: Path) -> bool:
    return (model_dir / STATUS_FILE).is_file()


def has_record(model_dir: Path) -> bool:
    """Whether Hydra's record of the run (.hydra/) is there: the run has started."""
    return (model_dir / HYDRA_DIR).is_dir()


def read_status(model_dir: Path) -> dict[str, Any] | None:
    """The run's status.json, or None when it has none (training has not started, or is older than it)."""
    path = model_dir / STATUS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def read_overrides(model_dir: Path) -> dict[str, str]:
    """The command-line overrides of the run (Hydra's .hydra/overrides.yaml), key -> value as typed, without
    the keys of NOT_HYPERPARAMETERS and hydra.*; empty when Hydra wrote none."""
    path = model_dir / HYDRA_DIR / "overrides.yaml"
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
        """finished, pre-empted (stopped by a signal, with a checkpoint), pruned (stopped by a study's pruner, with
        a checkpoint) or failed (with the error)."""
        self.status.update(state=state, error=error)
        self.status["preemptions"] += state == "pre-empted"
        self.write()


def hyperparameters(cfg: DictConfig, model_dir: Path) -> dict[str, Any]:
    """The run's main keys (model and head as chosen on the command line, lr, batch size, crop, steps, embedding
    size) and its overrides, as values TensorBoard's HParams plugin takes (bool, int, float, str)."""
    hydra_file = model_dir / HYDRA_DIR / "hydra.yaml"
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
        metrics.update({f"hparams/{trials_name(result['trials'])}/{key}": value
                        for key, value in metrics_of(result).items()})
    writer.add_hparams(hyperparameters(cfg, model_dir), metrics, run_name=".", global_step=step)
    return metrics


LOG_NAME = "train.log"


class DeferredFileHandler(logging.Handler):
    """A log file whose records are held in memory until `open(path)`, then appended to it with every later one."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[logging.LogRecord] = []
        self.file: logging.FileHandler | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.file is None:
            self.pending.append(record)
        else:
            self.file.emit(record)

    def open(self, path: Path) -> None:
        self.file = logging.FileHandler(path, encoding="utf-8")
        self.file.setFormatter(self.formatter)
        for record in self.pending:
            self.file.emit(record)
        self.pending = []

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        super().close()


@dataclass(frozen=True)
class RunRecord:
    """What Hydra would have written into `.hydra/` (plain text, so that spawned processes can carry it)."""

    config: str
    hydra: str
    overrides: str

    @classmethod
    def of_current_run(cls, cfg: DictConfig) -> RunRecord:
        """The record of the running Hydra job, whose task config is `cfg` (as Hydra passed it)."""
        hydra_cfg = HydraConfig.instance().cfg
        overrides = hydra_cfg.hydra.overrides.task
        return cls(OmegaConf.to_yaml(cfg), OmegaConf.to_yaml(hydra_cfg), OmegaConf.to_yaml(overrides))

    def commit(self, model_dir: Path, write_hydra: bool) -> None:
        """The run has started: create model_dir, write `.hydra/` (when `write_hydra`: rank 0) and send this
        process's log, the records so far included, to `<model_dir>/train.log`."""
        model_dir.mkdir(parents=True, exist_ok=True)
        if write_hydra:
            for name, text in (("config", self.config), ("hydra", self.hydra), ("overrides", self.overrides)):
                with atomic_output(model_dir / HYDRA_DIR / f"{name}.yaml") as tmp:
                    tmp.write_text(text, encoding="utf-8")
        for handler in logging.getLogger().handlers:
            if isinstance(handler, DeferredFileHandler) and handler.file is None:
                handler.open(model_dir / LOG_NAME)
