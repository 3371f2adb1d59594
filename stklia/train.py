"""`python -m stklia.train [overrides]`: train a generator as composed from conf/train.yaml."""

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from stklia.errors import exit_on_input_error
from stklia.trainer import train


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    model_dir = Path(HydraConfig.get().runtime.output_dir)  # in a sweep, each job's own directory
    with open_dict(cfg):
        cfg.model_dir = str(model_dir)
    with exit_on_input_error():
        return train(cfg, model_dir)


if __name__ == "__main__":
    main()
