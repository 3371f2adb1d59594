"""A training command as Hydra runs it: its model dir (a sweep job's own), its record, its processes.

`before_hydra` runs on the command line before Hydra composes it; `train_job` is the task function of each job
(one run, or one job of a sweep), which returns the run's `optimized_metric` to a sweeper.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.plugins import Plugins
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from hydra_plugins.stklia_optuna_sweeper.optuna_sweeper import OptunaSweeper
from stklia.core.errors import require_extra
from stklia.training.distributed import launch
from stklia.training.loop import train
from stklia.training.records import RunRecord

# Hydra launchers of hydra-submitit-launcher (the [slurm] extra), and stklia's presets that extend them
SUBMITIT_LAUNCHERS = ("submitit_slurm", "submitit_local", "slurm_gpu")


def before_hydra(overrides: Sequence[str]) -> None:
    """A submitit launcher without its plugin installed is one line naming the extra, not Hydra's
    "Could not load 'hydra/launcher/submitit_slurm'" (composition fails before any code of ours runs). The Optuna
    sweeper is registered by hand: Hydra's plugin scan does not see the plugin of an editable (PEP 660) install."""
    for override in overrides:
        group, _, option = override.partition("=")
        if group == "hydra/launcher" and option in SUBMITIT_LAUNCHERS:
            require_extra("slurm", override, "hydra_plugins.hydra_submitit_launcher")
    Plugins.instance().register(OptunaSweeper)


def train_job(cfg: DictConfig) -> float | None:
    """One training run of the composed config, in `model_dir`, or in a sweep in the job's own directory."""
    hydra_cfg = HydraConfig.get()
    record = RunRecord.of_current_run(cfg)
    sweep = hydra_cfg.mode == RunMode.MULTIRUN
    model_dir = Path(os.path.abspath(hydra_cfg.runtime.output_dir if sweep else cfg.model_dir))  # Hydra made a job's
    with open_dict(cfg):
        cfg.model_dir = str(model_dir)
    try:
        logging_config = OmegaConf.to_container(hydra_cfg.job_logging, resolve=True) if hydra_cfg.job_logging else None
        # (imported here: Hydra's plugin scan imports the module again, and a JobTrial goes to the processes of
        # a multi_gpu run by pickle, which wants the class of the module now in sys.modules)
        from hydra_plugins.stklia_optuna_sweeper.optuna_sweeper import JobTrial

        trial = JobTrial.of_current_job() if sweep else None
        return launch(cfg, partial(train, cfg, model_dir, record=record, trial=trial), logging_config)
    finally:
        if sweep and model_dir.is_dir() and not any(model_dir.iterdir()):
            model_dir.rmdir()  # the job failed before it started: no empty dir left behind
