"""A training run's record in its model dir (`train.log`, `.hydra/`), written only once the run has started.

Hydra creates its run dir, writes `.hydra/` and opens its job log before the task function runs, so a run
refused at start-up (a model dir that holds checkpoints, bad data, a bad setting) would overwrite an existing
model dir's record of the run that made it, or leave a new dir behind. stklia's train config therefore runs
Hydra in the current directory (`hydra.run.dir: .`) without an output subdir, with a log handler that holds
the records in memory (`DeferredFileHandler`, `stklia/conf/hydra/job_logging/deferred.yaml`); once the start-up
checks have passed, `RunRecord.commit` writes `.hydra/` as Hydra would and the log into the model dir.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from stklia.atomic import atomic_output

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
                with atomic_output(model_dir / ".hydra" / f"{name}.yaml") as tmp:
                    tmp.write_text(text, encoding="utf-8")
        for handler in logging.getLogger().handlers:
            if isinstance(handler, DeferredFileHandler) and handler.file is None:
                handler.open(model_dir / LOG_NAME)
