"""`python -m stklia.evaluate model_dir=DIR [checkpoint=last|best|N] [scoring.backend=plda ...]` (also
`python -m stklia.test`): EER, minDCF, actual DCF, Cllr and minCllr of every test trial list of a trained model."""

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from stklia.api import load_trained
from stklia.backends.fitting import ScoringOptions
from stklia.config import CONF_DIR, check_complete, register_resolvers, run_command
from stklia.data.splits import load_named, load_test_set, prepare_data
from stklia.distributed import resolve_device
from stklia.errors import exit_on_input_error
from stklia.evaluation import test_model

REPLACEABLE = ("test", "test_trials", "test_enroll", "cohort", "asnorm_top_n")  # data entries the command may replace


@hydra.main(version_base="1.3", config_path="conf/trained", config_name="test")
def main(cfg: DictConfig) -> float:
    register_resolvers()
    with exit_on_input_error():
        check_complete(cfg)
        scoring = ScoringOptions(**OmegaConf.to_container(cfg.scoring))
        experiment, generator, step = load_trained(cfg.model_dir, cfg.checkpoint)
        replaced = {key: OmegaConf.to_object(cfg[key]) if OmegaConf.is_config(cfg[key]) else cfg[key]
                    for key in REPLACEABLE if cfg[key] is not None}
        data_cfg = OmegaConf.merge(experiment.data, replaced)
        prepare_data(data_cfg, cfg.progress)
        test_set = load_test_set(data_cfg)
        scoring_data = None if scoring.plain else load_named(data_cfg, scoring.data)
        device = resolve_device(cfg.device)
        results = test_model(generator.to(device), test_set, Path(cfg.model_dir), step, device, cmn=data_cfg.cmn,
                             p_targets=list(cfg.p_targets), num_workers=cfg.num_workers, progress=cfg.progress,
                             extraction=cfg.extraction, asnorm_top_n=data_cfg.get("asnorm_top_n") or 0,
                             scoring=scoring, scoring_data=scoring_data, replaced=replaced)
        return results[0]["eer"]


if __name__ == "__main__":
    run_command(main, CONF_DIR / "trained", "test")
