"""Learning-rate schedules, experiment presets, the large-margin fine-tuning stage, the demo recipe."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from stklia.modeldir.checkpoints import load_checkpoint
from stklia.training.schedulers import warmup_cosine, warmup_exponential

from conftest import REPO, TINY_TRAINING, demo_data_overrides, run_recipe, run_stklia


def _rates(make, steps: int) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    scheduler = make(optimizer)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


@pytest.mark.parametrize("kind", ["exponential", "cosine"])
def test_warmup_then_decay_follows_the_closed_form(kind: str) -> None:
    warmup, total, final = 10, 50, 0.01
    make = {"exponential": warmup_exponential, "cosine": warmup_cosine}[kind]
    rates = _rates(lambda opt: make(opt, warmup, total, final), 60)
    for step, lr in enumerate(rates):
        if step < warmup:
            expected = 0.5 * (step + 1) / warmup
        else:
            t = min(1.0, (step - warmup) / (total - warmup))
            decay = final**t if kind == "exponential" else final + (1 - final) * (1 + math.cos(math.pi * t)) / 2
            expected = 0.5 * decay
        assert lr == pytest.approx(expected, rel=1e-9)
    assert rates[-1] == pytest.approx(0.5 * final)


def test_experiment_preset_composes_a_whole_recipe() -> None:
    with initialize_config_dir(str(REPO / "stklia" / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=voxceleb_resnet34_aam"])
    assert cfg.model.layers == [3, 4, 6, 3] and cfg.head._target_ == "stklia.training.heads.ArcFace"
    assert cfg.data.features.num_mel_bins == cfg.data.features_per_frame == 80
    assert cfg.scheduler._target_ == "stklia.training.schedulers.warmup_exponential"
    assert cfg.scheduler.total_steps == cfg.num_iterations
    assert OmegaConf.is_missing(cfg.augment.reverb, "rirs")


def test_lmft_stage_starts_from_another_model_dir(demo_root: Path, tmp_path: Path) -> None:
    first = tmp_path / "first"
    margin_head = [*demo_data_overrides(demo_root), *TINY_TRAINING, "head=arcface"]  # lmft enlarges a margin
    run_stklia("train", *margin_head, f"model_dir={first}", cwd=tmp_path)
    run_stklia("train", *margin_head, "+stage=lmft", f"init_from={first}",
               "init_checkpoint=3", "optim.lr=0", "max_seq_len=60", cwd=tmp_path)
    second = Path(f"{first}-lmft")
    cfg = OmegaConf.load(second / "config.yaml")
    assert cfg.head.margin == 0.5 and cfg.max_seq_len == 60 and cfg.init_from == str(first)
    source = load_checkpoint(first / "checkpoints" / "step_00000003.pt")
    tuned = load_checkpoint(second / "checkpoints" / "step_00000006.pt")
    assert tuned["step"] == 6
    for key, value in source["generator"].items():  # lr=0: the parameters are those it started from
        if "running_" not in key and "num_batches" not in key:
            assert torch.equal(tuned["generator"][key], value), key
    assert torch.equal(tuned["head"]["weight"], source["head"]["weight"])


def test_demo_recipe_trains_averages_fine_tunes_and_tests(demo_root: Path, tmp_path: Path) -> None:
    exp = tmp_path / "exp"
    run_recipe(REPO / "recipes" / "demo" / "run.sh", *demo_data_overrides(demo_root), *TINY_TRAINING, EXP=str(exp))
    lm = Path(f"{exp}_lm")
    cfg = OmegaConf.load(lm / "config.yaml")
    assert (cfg.init_from, cfg.init_checkpoint, cfg.head.margin) == (str(exp), "avg_last2", 0.5)
    for model_dir in (exp, lm):
        assert load_checkpoint(model_dir / "checkpoints" / "avg_last2.pt")["step"] == 6
        rows = json.loads((model_dir / "results" / "avg_last2.json").read_text())["results"]
        assert [row["trials"] for row in rows] == [str(demo_root / name / "trials") for name in ("test", "test_noisy")]
        assert all(0 <= row["eer"] <= 100 and 0 <= row["asnorm_eer"] <= 100 for row in rows)
