"""`python -m stklia.extract model_dir=DIR data=test|eval|train|/kaldi/dir format=ark|txt|pt`."""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from stklia.api import load_trained
from stklia.config import CONF_DIR, check_complete, register_resolvers, run_command
from stklia.data.splits import load_named
from stklia.distributed import resolve_device
from stklia.embeddings import FORMATS, embed_utterances, write_embeddings
from stklia.errors import InputError, exit_on_input_error


@hydra.main(version_base="1.3", config_path="conf/trained", config_name="extract")
def main(cfg: DictConfig) -> None:
    register_resolvers()
    with exit_on_input_error():
        check_complete(cfg)
        if cfg.format not in FORMATS:
            raise InputError("format", f"'{cfg.format}' is not one of {', '.join(FORMATS)}")
        experiment, generator, _ = load_trained(cfg.model_dir, cfg.checkpoint)
        data, name = load_named(experiment.data, cfg.data)
        device = resolve_device(cfg.device)
        emb = embed_utterances(generator.to(device), data, data.utts, experiment.data.cmn, device, cfg.num_workers,
                               cfg.progress, **cfg.extraction)
        out_dir = Path(cfg.out_dir) if cfg.out_dir else Path(cfg.model_dir) / "embeddings" / name
        for path in write_embeddings(out_dir, data.utts, emb, cfg.format):
            print(f"wrote {path}")


if __name__ == "__main__":
    run_command(main, CONF_DIR / "trained", "extract")
