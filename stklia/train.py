"""`python -m stklia.train [overrides]`: train a generator as composed from stklia/conf/train.yaml.

Also `torchrun --nproc_per_node=N -m stklia.train [overrides]` for DistributedDataParallel.
"""

import os
import sys
from functools import partial
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.plugins import Plugins
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from hydra_plugins.stklia_optuna_sweeper.optuna_sweeper import OptunaSweeper
from stklia.config import CONF_DIR, check_complete, check_launcher, register_resolvers, run_command
from stklia.distributed import launch
from stklia.errors import exit_on_input_error
from stklia.rundir import RunRecord
from stklia.trainer import train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    register_resolvers()
    hydra_cfg = HydraConfig.get()
    record = RunRecord.of_current_run(cfg)
    sweep = hydra_cfg.mode == RunMode.MULTIRUN
    # in a sweep, each job's own directory (which Hydra has made)
    model_dir = Path(os.path.abspath(hydra_cfg.runtime.output_dir if sweep else cfg.model_dir))
    with open_dict(cfg):
        cfg.model_dir = str(model_dir)
    try:
        with exit_on_input_error():
            check_complete(cfg)
            logging_config = (OmegaConf.to_container(hydra_cfg.job_logging, resolve=True) if hydra_cfg.job_logging
                              else None)
            return launch(cfg, partial(train, cfg, model_dir, record=record), logging_config)
    finally:
        if sweep and model_dir.is_dir() and not any(model_dir.iterdir()):
            model_dir.rmdir()  # the job failed before it started: no empty dir left behind


if __name__ == "__main__":
    with exit_on_input_error():
        check_launcher(sys.argv[1:])  # before Hydra's plugin scan, which warns about a launcher it cannot import
    # registered by hand: Hydra's plugin scan does not see the plugin of an editable (PEP 660) install
    Plugins.instance().register(OptunaSweeper)
    run_command(main, CONF_DIR, "train")
