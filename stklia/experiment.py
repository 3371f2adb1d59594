"""What train, test and extract share: devices, data splits of an experiment config, saved models."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from stklia.checkpoint import load_checkpoint, resolve_checkpoint
from stklia.data.demo import default_demo_root
from stklia.data.kaldi import DataSet, check_feature_dim, load_data, read_trials
from stklia.errors import InputError
from stklia.atomic import atomic_output, write_json
from stklia.scoring import EvalData, evaluate, format_results, write_results

log = logging.getLogger(__name__)

OmegaConf.register_new_resolver("stklia.demo_root", lambda: str(default_demo_root()), replace=True)

CONFIG_NAME = "config.yaml"
SPLITS = ("train", "eval", "test")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def check_complete(cfg: DictConfig) -> None:
    """Fail at once, in one line, when a mandatory (`???`) value was not given."""
    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as err:
        raise InputError("config", f"missing mandatory value '{err.full_key}': set it on the command line") from None


def prepare_data(data_cfg: DictConfig) -> None:
    """Run the data config's `prepare` step (e.g. generate the demo corpus on first use)."""
    if data_cfg.get("prepare") is not None:
        instantiate(data_cfg.prepare)


def load_split(data_cfg: DictConfig, split: str) -> DataSet:
    """The (merged) Kaldi data of data entry `split` (train, eval, test, test_enroll, cohort, ...), checked
    against features_per_frame.

    Directories without feats.scp are read as audio, with features computed as `data.features` says.
    """
    dirs = data_cfg.get(split)
    if dirs is None:
        raise InputError("data", f"the experiment's data config has no '{split}' data")
    features = instantiate(data_cfg.features) if data_cfg.get("features") else None
    data = load_data(list(dirs) if OmegaConf.is_list(dirs) else dirs, features)
    check_feature_dim(data, data_cfg.features_per_frame)
    return data


def load_trial_split(data_cfg: DictConfig, split: str) -> EvalData | None:
    """The data, trial lists and enrollment speakers of `eval` or `test`, or None when the config has none.

    The test split also gets the AS-norm cohort when one is configured; validation scores stay
    raw, since AS-norm would re-embed the whole cohort at every checkpoint.
    """
    if data_cfg.get(split) is None or not data_cfg.get(f"{split}_trials"):
        return None
    data = load_split(data_cfg, split)
    enroll = load_split(data_cfg, f"{split}_enroll") if data_cfg.get(f"{split}_enroll") is not None else None
    speakers = set(enroll.utt2spk.values()) if enroll is not None else None
    trial_lists = [read_trials(path, data.feats, speakers) for path in data_cfg[f"{split}_trials"]]
    return EvalData(data, trial_lists, enroll, load_cohort(data_cfg) if split == "test" else None)


def load_cohort(data_cfg: DictConfig) -> DataSet | None:
    """The AS-norm cohort data, or None when AS-norm is off (no `cohort` or `asnorm_top_n` 0)."""
    if data_cfg.get("cohort") is None or not data_cfg.get("asnorm_top_n"):
        return None
    if data_cfg.asnorm_top_n < 2:
        raise InputError("data.asnorm_top_n", f"must be 0 (off) or at least 2, not {data_cfg.asnorm_top_n}")
    cohort = load_split(data_cfg, "cohort")
    if len(cohort.speakers) < 2:
        raise InputError("data.cohort", "an AS-norm cohort needs at least 2 speakers")
    return cohort


def save_config(cfg: DictConfig, model_dir: Path) -> None:
    """The resolved config, from which test and extract rebuild the generator and data."""
    with atomic_output(model_dir / CONFIG_NAME) as tmp:
        OmegaConf.save(cfg, tmp, resolve=True)


def load_experiment(model_dir: str | os.PathLike, checkpoint: str | int) -> tuple[DictConfig, nn.Module, int | str]:
    """The saved config, the generator of a checkpoint of a trained model directory, and its step
    (or its name, for an averaged checkpoint)."""
    model_dir = Path(model_dir)
    config_path = model_dir / CONFIG_NAME
    if not config_path.is_file():
        raise InputError(config_path, "not found: is this a model directory written by stklia.train?")
    cfg = OmegaConf.load(config_path)
    path = resolve_checkpoint(model_dir, checkpoint)
    state = load_checkpoint(path)
    generator = instantiate(cfg.model)
    generator.load_state_dict(state["generator"])
    log.info("loaded %s (step %d)", path, state["step"])
    return cfg, generator, state.get("name", state["step"])


def load_test_set(data_cfg: DictConfig) -> EvalData:
    """The experiment's test data and trial lists, which test_model requires."""
    test = load_trial_split(data_cfg, "test")
    if test is None:
        raise InputError("data", "the experiment has no test data / test_trials")
    return test


def test_model(generator: nn.Module, test_set: EvalData, cfg: DictConfig, model_dir: Path, step: int | str,
               device: torch.device, p_targets: list[float], progress: bool = True,
               writer: SummaryWriter | None = None) -> list[dict]:
    """Score every test trial list: print a table; write scores, DET plots and results JSON under
    <model_dir>/results/<name>/ and a summary in <model_dir>/results/<name>.json, where name is step_<N>
    (or the name of an averaged checkpoint); DET plots to TensorBoard when a writer is given."""
    results = evaluate(generator, test_set, cfg.data.cmn, device, p_targets, cfg.num_workers, progress,
                       extraction=cfg.extraction, asnorm_top_n=cfg.data.get("asnorm_top_n") or 0)
    name = f"step_{step:08d}" if isinstance(step, int) else step
    summaries = write_results(model_dir / "results" / name, results)
    print(f"Test results of {model_dir} at {name}:\n{format_results(summaries)}", flush=True)
    write_json(model_dir / "results" / f"{name}.json", {"step": step, "results": summaries})
    if writer is not None:
        for result in results:
            writer.add_figure(f"test/det/{result.trials.path.name}", result.figure(), step)
    return summaries
