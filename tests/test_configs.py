"""Every shipped config composes and instantiates (as lightning-hydra-template's tests/test_configs.py does):
each option of each config group, each experiment preset and stage, the launcher presets and the configs
of the commands on a trained model. A config that cannot build its objects, or whose parts contradict
each other (a data config whose features_per_frame is not that of its features), fails here, not on a
user's cluster."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.plugins import Plugins
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from stklia.core.config import build, check_complete, register_resolvers
from stklia.core.errors import InputError
from stklia.training.distributed import World
from stklia.training.loop import build_parts, check_config, load_run_data, make_loader, training_step

from conftest import REPO

CONF = REPO / "stklia" / "conf"
# groups of train.yaml with options of their own (experiment and stage: whole presets, tested below)
GROUPS = ("data", "features", "model", "head", "optim", "scheduler", "augment")
HEADS = sorted(p.stem for p in (CONF / "head").glob("*.yaml"))


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_every_group_is_tested() -> None:
    groups = {p.name for p in CONF.iterdir() if p.is_dir()} - {"experiment", "stage", "hydra", "commands"}
    assert groups == {*GROUPS, "hparams_search", "recipe"}  # tested by their own tests below


@pytest.fixture(scope="module")
def audio_test(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's test dir as audio only (wav.scp, no feats.scp), as VoxCeleb's are."""
    out = tmp_path_factory.mktemp("audio") / "test"
    out.mkdir()
    for name in ("wav.scp", "utt2spk", "spk2utt", "trials"):
        shutil.copy(demo_root / "test" / name, out / name)
    return out


def mandatory_values(demo_root: Path, audio_test: Path) -> dict[str, object]:
    """What a user gives on the command line for the `???` values of the configs."""
    augment = demo_root / "augment"
    return {
        "data.train": [str(demo_root / "train_wav")], "data.test": str(audio_test),
        "data.test_trials": [str(audio_test / "trials")], "init_from": "exp/first",
        "augment.reverb.rirs": str(augment / "rirs"),
        **{f"augment.noise.sources.{kind}.list": str(augment / kind) for kind in ("noise", "music", "babble")},
    }


def missing_keys(node: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for key in node:
        full = f"{prefix}{key}"
        if OmegaConf.is_missing(node, key):
            keys.append(full)
        elif isinstance(node[key], DictConfig):
            keys += missing_keys(node[key], f"{full}.")
    return keys


def compose_train(overrides: list[str], demo_root: Path, audio_test: Path, tmp_path: Path) -> DictConfig:
    """train.yaml composed with the overrides, its `???` values given, on the small demo corpus."""
    register_resolvers()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", [*overrides, f"++data.root={demo_root}", f"model_dir={tmp_path / 'model'}"])
    given = mandatory_values(demo_root, audio_test)
    for key in missing_keys(cfg):
        OmegaConf.update(cfg, key, given[key])  # a KeyError here: a new `???` to add to mandatory_values
    return cfg


NO_MARGIN = ("adacos", "softmax", "sphereface")  # heads without an additive margin for lmft to enlarge


def case(*overrides: str) -> pytest.param:
    return pytest.param(list(overrides), id=" ".join(overrides))


def refused(overrides: list[str]) -> bool:
    """+stage=lmft with a head that has no margin to enlarge: the run is refused at its start-up checks."""
    return "+stage=lmft" in overrides and any(f"head={head}" in overrides for head in NO_MARGIN)


CASES = ([case(f"{group}={option}") for group in GROUPS for option in options(group)]
         + [case(f"experiment={name}") for name in options("experiment")]
         + [case(f"+stage={name}", f"head={head}") for name in options("stage") for head in HEADS])


@pytest.mark.parametrize("overrides", CASES)
def test_config_composes_builds_and_trains_a_step(overrides: list[str], demo_root: Path, audio_test: Path,
                                                  tmp_path: Path) -> None:
    """The objects a run builds (data, features, augmentation, model, head, optimizer, scheduler), then one
    training step on a real batch of the configured data."""
    cfg = compose_train(overrides, demo_root, audio_test, tmp_path)
    check_complete(cfg)
    if cfg.data.get("prepare") is not None:  # it would build the full demo corpus: only its target is checked
        assert callable(build(cfg.data.prepare, _partial_=True))
    if refused(overrides):
        with pytest.raises(InputError, match="has no margin to enlarge: large-margin fine-tuning"):
            check_config(cfg, World(torch.device("cpu")))
        return
    assert math.isfinite(train_a_step(cfg))  # a small step of the configured objects


def train_a_step(cfg: DictConfig) -> float:
    """One training step of the objects `cfg` builds, on a small real batch of its data; the loss."""
    with open_dict(cfg):
        cfg.data.prepare, cfg.batch_size, cfg.max_seq_len, cfg.num_workers = None, 4, 24, 0
    world = World(torch.device("cpu"))
    check_config(cfg, world)
    data = load_run_data(cfg, world)
    parts = build_parts(cfg, data.crops.num_classes, world)
    feats, labels = next(iter(make_loader(cfg, data.crops, 0, world)))
    assert feats.shape == (4, 24, cfg.data.features_per_frame)
    loss, _ = training_step(parts, parts.model, feats, labels, 0, torch.autocast("cpu", enabled=False),
                            label_smoothing=cfg.label_smoothing)
    return loss.item()


def leaves(node: DictConfig, prefix: str = "") -> dict[str, object]:
    """Every value of `node` by its dotted key."""
    found: dict[str, object] = {}
    for key, value in node.items():
        found.update(leaves(value, f"{prefix}{key}.") if isinstance(value, DictConfig) else {f"{prefix}{key}": value})
    return found


@pytest.mark.parametrize("recipe", options("recipe"))
def test_recipes_apply_to_their_combination_only_and_train_a_step(recipe: str, demo_root: Path, audio_test: Path,
                                                                  tmp_path: Path) -> None:
    """conf/recipe/<model>-<head>-<optim>-<augment>.yaml: train.yaml takes it for that combination (every value of
    the file in the composed config), not when one of the four is chosen otherwise nor with `~recipe`; it trains a
    step."""
    model, head, optim, augment = recipe.split("-")
    chosen = [f"model={model}", f"head={head}", f"optim={optim}"]
    chosen += [] if augment == "None" else [f"augment={augment}"]  # None: no augment group chosen (null)
    cfg = compose_train(chosen, demo_root, audio_test, tmp_path)
    values = {k: v for k, v in leaves(OmegaConf.load(CONF / "recipe" / f"{recipe}.yaml")).items()
              if not k.startswith("defaults")}
    assert values and all(OmegaConf.select(cfg, key) == value for key, value in values.items())
    assert math.isfinite(train_a_step(cfg))
    other_head = next(h for h in HEADS if h != head)
    for others in ([*chosen[:1], f"head={other_head}", *chosen[2:]], [*chosen, "~recipe"]):  # ~recipe: none
        other = compose_train(others, demo_root, audio_test, tmp_path)
        assert any(OmegaConf.select(other, key) != value for key, value in values.items()), others


@pytest.mark.parametrize("search", options("hparams_search"))
def test_hparams_search_presets_build_their_trials_down_to_a_training_step(search: str, demo_root: Path,
                                                                           audio_test: Path, tmp_path: Path) -> None:
    """A search preset gives the Optuna sweeper a search space it can sample (conditional parameters included), and
    the trials it samples build and train: 6 random trials each, down to a training step."""
    import optuna

    from hydra_plugins.stklia_optuna_sweeper.optuna_sweeper import OptunaSweeper, override_value, suggest

    Plugins.instance().register(OptunaSweeper)  # as stklia.train does
    with initialize_config_dir(str(CONF), version_base="1.3"):
        hydra_cfg = compose("train", [f"hparams_search={search}"], return_hydra_config=True).hydra
    sweeper = instantiate(hydra_cfg.sweeper)
    # (by name: where Hydra's plugin scan finds the plugin too, it loads its module a second time)
    assert type(sweeper).__module__ == OptunaSweeper.__module__ and type(sweeper).__name__ == "OptunaSweeper"
    parameters, fixed = sweeper.search_space([])
    assert {p.name for p in parameters} == set(hydra_cfg.sweeper.params) and not fixed
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(6):
        trial, chosen = study.ask(), {}
        for parameter in parameters:
            if parameter.applies(chosen):
                chosen[parameter.name] = suggest(trial, parameter.name, parameter.dist)
        by_name = {p.name: p for p in parameters}
        overrides = [f"{by_name[name].key}={override_value(value)}" for name, value in chosen.items()]
        cfg = compose_train([f"hparams_search={search}", *overrides], demo_root, audio_test, tmp_path)
        assert math.isfinite(train_a_step(cfg)), overrides


@pytest.mark.parametrize("launcher", options("hydra/launcher"))
def test_launcher_presets_instantiate(launcher: str) -> None:
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", [f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert instantiate(cfg.hydra.launcher) is not None


# what each command's config leaves to the command line (`???`)
MANDATORY = {"test": {"model_dir"}, "extract": {"model_dir"}, "average": {"model_dir"}, "export": {"model_dir"},
             "calibrate": {"fit.scores", "fit.trials"}, "report": {"dirs"}, "check_data": {"dirs"}, "demo": {"root"},
             "pack": {"src", "out"}, "import_model": {"source", "path", "model_dir"}}


def test_every_command_config_is_tested() -> None:
    assert set(options("commands")) - {"base", "trained", "embedding"} == set(MANDATORY)


@pytest.mark.parametrize("command", MANDATORY)
def test_command_configs_compose(command: str, tmp_path: Path) -> None:
    with initialize_config_dir(str(CONF / "commands"), version_base="1.3"):
        cfg = compose(command)
        assert OmegaConf.missing_keys(cfg) == MANDATORY[command]
        cfg = compose(command, [f"{key}={tmp_path}" for key in MANDATORY[command]])
    check_complete(cfg)


@pytest.mark.parametrize("pruner", options("hydra/sweeper/pruner"))
def test_pruner_presets_give_the_sweeper_and_its_jobs_a_pruner(pruner: str) -> None:
    """hydra/sweeper/pruner=<preset> on a search: the sweeper gets the Optuna pruner it names, and so does a job,
    which builds it from its own copy of the sweeper's config (JobTrial)."""
    import optuna

    from hydra_plugins.stklia_optuna_sweeper.optuna_sweeper import JobTrial, OptunaSweeper

    Plugins.instance().register(OptunaSweeper)  # as stklia.train does
    with initialize_config_dir(str(CONF), version_base="1.3"):
        hydra_cfg = compose("train", ["hparams_search=demo_budget", f"hydra/sweeper/pruner={pruner}"],
                            return_hydra_config=True).hydra
        plain = compose("train", ["hparams_search=demo_budget"], return_hydra_config=True).hydra
    assert plain.sweeper.pruner is None  # no pruner unless one is chosen
    sweeper = instantiate(hydra_cfg.sweeper)
    assert isinstance(sweeper.pruner, optuna.pruners.BasePruner)
    job = JobTrial("sqlite:///unused.db", "demo_budget", 0, OmegaConf.to_container(hydra_cfg.sweeper.pruner))
    assert type(instantiate(job.pruner)) is type(sweeper.pruner)
