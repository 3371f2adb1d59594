"""`python -m stklia.train [overrides]`: train a generator as composed from stklia/conf/train.yaml.

Also `torchrun --nproc_per_node=N -m stklia.train [overrides]` for DistributedDataParallel.
"""

import sys
from functools import partial
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.plugins import Plugins
from omegaconf import DictConfig, OmegaConf, open_dict

from hydra_plugins.stklia_optuna_sweeper.optuna_sweeper import OptunaSweeper
from stklia.config import check_complete, check_launcher, register_resolvers
from stklia.distributed import launch
from stklia.errors import exit_on_input_error
from stklia.trainer import train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    register_resolvers()
    hydra_cfg = HydraConfig.get()
    model_dir = Path(hydra_cfg.runtime.output_dir)  # in a sweep, each job's own directory
    with open_dict(cfg):
        cfg.model_dir = str(model_dir)
    with exit_on_input_error():
        check_complete(cfg)
        logging_config = OmegaConf.to_container(hydra_cfg.job_logging, resolve=True) if hydra_cfg.job_logging else None
        return launch(cfg, partial(train, cfg, model_dir), logging_config)


if __name__ == "__main__":
    # registered by hand: Hydra's plugin scan does not see the plugin of an editable (PEP 660) install
    Plugins.instance().register(OptunaSweeper)
    with exit_on_input_error():
        check_launcher(sys.argv[1:])
    main()
