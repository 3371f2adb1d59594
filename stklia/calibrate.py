"""`python -m stklia.calibrate fit.scores=FILE fit.trials=FILE [apply=[FILE,...] apply_trials=[FILE,...]]`:
scores to calibrated log-likelihood ratios, fitted on one scored trial list, applied to others."""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from stklia.config import CONF_DIR, check_complete, register_resolvers, run_command
from stklia.errors import exit_on_input_error
from stklia.evaluation import calibrate_score_files


@hydra.main(version_base="1.3", config_path="conf", config_name="calibrate")
def main(cfg: DictConfig) -> float:
    register_resolvers()
    with exit_on_input_error():
        check_complete(cfg)
        record = calibrate_score_files(Path(cfg.fit.scores), Path(cfg.fit.trials), [Path(p) for p in cfg.apply],
                                       [Path(p) for p in cfg.apply_trials], cfg.prior, list(cfg.p_targets), cfg.name)
        return record["results"][0]["calibrated_cllr"]


if __name__ == "__main__":
    run_command(main, CONF_DIR, "calibrate")
