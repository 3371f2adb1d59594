"""Training learns: a small model trained on 100 steps of 16 crops of a demo corpus scores its test trials
clearly better than the feature-statistics baseline (stklia.demo.corpus.baseline_eer), in one process and in a
DDP run pre-empted then resumed. The other CLI tests accept any EER; a label-shuffling bug, a loss that does
not reach the weights or a resume that loses them would pass those, not these."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stklia.demo.corpus import SMALL_DEMO, baseline_eer, make_demo
from stklia.modeldir.checkpoints import list_checkpoints

from conftest import ONE_THREAD, hooked, run_stklia, torchrun

# Enough training speakers for what is learnt to carry over to unseen ones (SMALL_DEMO's 6 are too few), and
# short recordings, on which the baseline's per-utterance statistics are noisy.
LEARNING_DEMO = {**SMALL_DEMO, "num_train_speakers": 24, "utts_per_speaker": 8, "num_eval_speakers": 2,
                 "num_test_speakers": 12, "test_utts_per_speaker": 6, "num_trials": 600, "num_eval_trials": 10,
                 "duration_range": (1.0, 2.0)}
STEPS, PREEMPTED_AT = 100, 40
MARGIN = 10  # EER points below the baseline's (32.2%); measured: 11.7-16.1% in one process, 13.3-13.9% in two


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo(tmp_path_factory.mktemp("learning") / "corpus", **LEARNING_DEMO, progress=False)


def training(corpus: Path, model_dir: Path, processes: int = 1) -> list[str]:
    """A small model, 100 steps of 16 crops per process (BatchNorm's statistics are each process's), one thread
    per process; tested on the clean test trials, raw. The pre-search defaults (~recipe: a recipe found for 250
    steps of 64 crops, conf/recipe/, is no fixed yardstick for this one)."""
    return [f"data.root={corpus}", "data.prepare=null", "~recipe", f"data.test=[{corpus / 'test'}]",
            f"data.test_trials=[{corpus / 'test' / 'trials'}]", "data.cohort=null",
            "model.layers=[1,1,1,1]", "model.num_filters=[16,32,64,64]", "model.emb_size=64",
            f"batch_size={16 * processes}", "max_seq_len=80", f"num_iterations={STEPS}", "checkpoint_interval=50",
            "log_interval=20",
            "scheduler.warmup_steps=5", "num_workers=0", "progress=false", f"model_dir={model_dir}"]


def assert_learnt(corpus: Path, model_dir: Path) -> None:
    eer = json.loads((model_dir / "results" / f"step_{STEPS:08d}.json").read_text())["results"][0]["eer"]
    baseline = baseline_eer(corpus / "test")
    print(f"\ntest EER {eer:.2f}% after {STEPS} steps; feature mean+std baseline {baseline:.2f}%")
    assert eer < baseline - MARGIN


def test_training_beats_the_feature_statistics_baseline(corpus: Path, tmp_path: Path) -> None:
    run_stklia("train", *training(corpus, tmp_path / "model"), cwd=tmp_path, env=ONE_THREAD)
    assert_learnt(corpus, tmp_path / "model")


def test_preempted_ddp_run_resumed_beats_it_too(corpus: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    stopped = torchrun(*training(corpus, model_dir, processes=2), *hooked("SIGTERM", PREEMPTED_AT, rank=1),
                       cwd=tmp_path)
    assert stopped.returncode != 0 and list(list_checkpoints(model_dir)) == [PREEMPTED_AT]
    run_stklia("train", *training(corpus, model_dir, processes=2), "checkpoint=last", "multi_gpu=2", cwd=tmp_path,
               env=ONE_THREAD)
    assert f"at step {PREEMPTED_AT}" in (model_dir / "train.log").read_text()  # resumed where it stopped
    assert_learnt(corpus, model_dir)
