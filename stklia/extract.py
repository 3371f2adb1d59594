"""`python -m stklia.extract model_dir=DIR data=test|eval|train|/kaldi/dir format=ark|txt|pt`."""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from stklia.embeddings import FORMATS, embed_utterances, write_embeddings
from stklia.errors import InputError, exit_on_input_error
from stklia.experiment import SPLITS, load_experiment, load_split, prepare_data, resolve_device


@hydra.main(version_base="1.3", config_path="conf/trained", config_name="extract")
def main(cfg: DictConfig) -> None:
    with exit_on_input_error():
        if cfg.format not in FORMATS:
            raise InputError("format", f"'{cfg.format}' is not one of {', '.join(FORMATS)}")
        experiment, generator, _ = load_experiment(cfg.model_dir, cfg.checkpoint)
        if cfg.data in SPLITS:  # one of the experiment's own data sets
            split, name = cfg.data, cfg.data
            prepare_data(experiment.data)
        else:  # any Kaldi data directory
            split, name = "extract", Path(cfg.data).name
            experiment.data.extract = cfg.data
        data = load_split(experiment.data, split)
        device = resolve_device(cfg.device)
        emb = embed_utterances(generator.to(device), data, data.utts, experiment.data.cmn, device, cfg.num_workers,
                               cfg.progress, **cfg.extraction)
        out_dir = Path(cfg.out_dir) if cfg.out_dir else Path(cfg.model_dir) / "embeddings" / name
        for path in write_embeddings(out_dir, data.utts, emb, cfg.format):
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
