"""`python -m stklia.test model_dir=DIR [checkpoint=last|best|N]`: EER and minDCF of every test trial list."""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from stklia.errors import exit_on_input_error
from stklia.experiment import load_experiment, load_test_set, prepare_data, resolve_device, test_model


@hydra.main(version_base="1.3", config_path="conf/trained", config_name="test")
def main(cfg: DictConfig) -> float:
    with exit_on_input_error():
        experiment, generator, step = load_experiment(cfg.model_dir, cfg.checkpoint)
        for key in ("test", "test_trials", "test_enroll", "cohort", "asnorm_top_n"):  # optional replacements
            if cfg[key] is not None:
                experiment.data[key] = cfg[key]
        experiment.extraction = cfg.extraction
        prepare_data(experiment.data)
        test_set = load_test_set(experiment.data)
        device = resolve_device(cfg.device)
        results = test_model(generator.to(device), test_set, experiment, Path(cfg.model_dir), step, device,
                             list(cfg.p_targets), cfg.progress)
        return results[0]["eer"]


if __name__ == "__main__":
    main()
