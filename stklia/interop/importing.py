"""`python -m stklia.import_model source=wespeaker|speechbrain|3dspeaker path=<published files> model_dir=DIR`.

Reads a published model (WeSpeaker's, SpeechBrain's, 3D-Speaker's: docs/pretrained.md), converts it, and writes a
model directory that every command and `stklia.load` accept as a trained one: `config.yaml` (the stklia model
preset with the published values, the front end, `imported`: the source and the sha256 of every file read) and
`checkpoints/step_00000000.pt` (the converted generator; no classifier head: fine-tuning with `init_from=` starts
one afresh). Everything is read and checked before anything is written, and the directory appears whole (written
beside it, then renamed): a bad file leaves nothing behind.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from stklia.core.errors import InputError
from stklia.interop.files import sha256
from stklia.interop.presets import Imported
from stklia.interop.speechbrain import read_speechbrain
from stklia.interop.threedspeaker import read_3dspeaker
from stklia.interop.wespeaker import read_wespeaker
from stklia.modeldir.checkpoints import save_checkpoint
from stklia.modeldir.config import save_config

log = logging.getLogger(__name__)

READERS: dict[str, Callable[..., Imported]] = {"wespeaker": read_wespeaker, "speechbrain": read_speechbrain,
                                               "3dspeaker": read_3dspeaker}


def read_published(source: str, path: str | os.PathLike, embedding_mean: bool = False) -> Imported:
    """A published model read and converted (nothing written)."""
    if source not in READERS:
        raise InputError("source", f"'{source}' is not one of {', '.join(READERS)}")
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file or directory")
    if source == "speechbrain":
        return read_speechbrain(path, embedding_mean)
    if embedding_mean:
        raise InputError("embedding_mean", f"is SpeechBrain's embedding normaliser; {source} models have none")
    return READERS[source](path)


def imported_config(imported: Imported) -> DictConfig:
    """The model directory's config.yaml: the model, a data section with the front end (and no data of its own:
    test, extract and train name theirs), and the record of the import."""
    data = {"train": None, "eval": None, "eval_trials": [], "test": None, "test_trials": [], "eval_enroll": None,
            "test_enroll": None, "cohort": None, "asnorm_top_n": 0, "features": imported.features,
            "features_per_frame": int(imported.features.num_mel_bins), "cmn": imported.cmn}
    record = {"source": imported.source, "architecture": imported.architecture,
              "model_preset": imported.model_preset, "features_preset": imported.features_preset,
              "files": [{"path": str(path.resolve()), "sha256": sha256(path)} for path in imported.files]}
    return OmegaConf.create({"model": imported.model, "data": data, "imported": record})


def write_model_dir(imported: Imported, model_dir: str | os.PathLike) -> Path:
    """Write the model directory: into a folder beside it, renamed into place once complete."""
    model_dir = Path(model_dir)
    if model_dir.exists() and (not model_dir.is_dir() or any(model_dir.iterdir())):
        raise InputError(model_dir, "already exists and is not empty: choose another model_dir")
    config = imported_config(imported)
    staging = model_dir.with_name(f".{model_dir.name}.importing-{os.getpid()}")
    try:
        staging.mkdir(parents=True)
        save_config(config, staging)
        save_checkpoint(staging, 0, {"step": 0, "name": "imported", "generator": imported.generator})
        if model_dir.exists():
            model_dir.rmdir()
        staging.rename(model_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return model_dir


def import_model(cfg: DictConfig) -> None:
    """The command (stklia/conf/commands/import_model.yaml)."""
    imported = read_published(cfg.source, cfg.path, cfg.embedding_mean)
    model_dir = write_model_dir(imported, cfg.model_dir)
    print(f"imported {imported.architecture} ({imported.model_preset}, features={imported.features_preset}) "
          f"into {model_dir}")
