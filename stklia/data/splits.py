"""The data of an experiment: the Kaldi dirs its data config names for each split, read and checked.

A data config (stklia/conf/data/) names `train`, `eval`, `test` (one dir or a list, merged), their
trial lists (`eval_trials`, `test_trials`), enrollment speakers (`eval_enroll`, `test_enroll`), an
AS-norm `cohort`, the `features` of audio dirs, `features_per_frame` and `cmn`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from stklia.core.config import build
from stklia.core.errors import InputError
from stklia.data.kaldi import DataSet, check_feature_dim, load_data
from stklia.data.trials import EvalData, read_trials

SPLITS = ("train", "eval", "test")


def prepare_data(data_cfg: DictConfig, progress: bool = True) -> None:
    """Run the data config's `prepare` step (e.g. generate the demo corpus on first use); a step that shows its
    progress has a `progress` key, which the command's own `progress` setting overrides."""
    prepare = data_cfg.get("prepare")
    if prepare is not None:
        build(prepare, **({"progress": progress} if "progress" in prepare else {}))


def load_dirs(dirs: str | os.PathLike | Sequence[str | os.PathLike], data_cfg: DictConfig) -> DataSet:
    """Kaldi data dirs read as `data_cfg` says (features of audio dirs), merged, and checked against its
    features_per_frame."""
    features = build(data_cfg.features) if data_cfg.get("features") else None
    data = load_data(list(dirs) if OmegaConf.is_list(dirs) else dirs, features)
    check_feature_dim(data, data_cfg.features_per_frame)
    return data


def load_split(data_cfg: DictConfig, split: str) -> DataSet:
    """The (merged) data of entry `split` (train, eval, test, test_enroll, cohort, ...)."""
    if data_cfg.get(split) is None:
        raise InputError("data", f"the experiment's data config has no '{split}' data")
    return load_dirs(data_cfg[split], data_cfg)


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
    cohort = load_cohort(data_cfg) if split == "test" else None
    return EvalData(data, trial_lists, enroll, cohort, data_cfg.asnorm_top_n if cohort is not None else 0)


def load_test_set(data_cfg: DictConfig) -> EvalData:
    """The test data and trial lists, which a test requires."""
    test = load_trial_split(data_cfg, "test")
    if test is None:
        raise InputError("data", "the experiment has no test data / test_trials")
    return test


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


def load_named(data_cfg: DictConfig, name: str) -> tuple[DataSet, str]:
    """One of the experiment's splits (train, eval, test) or any Kaldi data directory, and a short name for it."""
    if name in SPLITS:
        prepare_data(data_cfg)
        return load_split(data_cfg, name), name
    return load_dirs(name, data_cfg), Path(name).name
