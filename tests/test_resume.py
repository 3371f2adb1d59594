"""Exact resume, crash-safe checkpoints, pruning, pre-emption and mixed precision, on the real command line.

The interrupted runs use tests/optim_hooks.py: the process SIGKILLs (or signals) itself right after
a given optimizer step, which is a real kill at an exact point instead of a race with a timer.
"""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path

import pytest
import torch

from stklia.checkpoint import list_checkpoints, load_checkpoint

from conftest import TINY_TRAINING, assert_same_run, demo_data_overrides, run_stklia

N = 4  # checkpoint interval; full runs are 2N steps
CKPT = "step_{:08d}.pt"


def common(demo_root: Path) -> list[str]:
    # one data loader worker: the workers' path (and their signal shelter) is exercised too
    return [*demo_data_overrides(demo_root), *TINY_TRAINING, f"num_iterations={2 * N}", f"checkpoint_interval={N}",
            "num_workers=1"]


def interrupted_at(step: int, action: str) -> list[str]:
    return ["optim._target_=optim_hooks.sgd_then", f"+optim.at_step={step}", f"+optim.action={action}"]


@pytest.fixture(scope="module")
def straight(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The final checkpoint of an uninterrupted run of 2N steps."""
    model_dir = tmp_path_factory.mktemp("straight") / "model"
    run_stklia("train", *common(demo_root), f"model_dir={model_dir}", cwd=model_dir.parent)
    return load_checkpoint(model_dir / "checkpoints" / CKPT.format(2 * N))


def test_sigkill_then_resume_is_bitwise_identical(demo_root: Path, tmp_path: Path, straight: dict) -> None:
    model_dir = tmp_path / "model"
    killed = run_stklia("train", *common(demo_root), *interrupted_at(N + 1, "SIGKILL"), f"model_dir={model_dir}",
                        cwd=tmp_path, check=False)
    assert killed.returncode == -signal.SIGKILL
    assert list(list_checkpoints(model_dir)) == [N]

    # what a kill during a save leaves: a partial temporary file beside the complete checkpoints
    folder = model_dir / "checkpoints"
    partial = folder / f".{CKPT.format(2 * N)}.tmp-4242"
    partial.write_bytes((folder / CKPT.format(N)).read_bytes()[:1000])

    again = run_stklia("train", *common(demo_root), f"model_dir={model_dir}", cwd=tmp_path, check=False)
    assert again.returncode == 1 and "checkpoint=last" in again.stderr  # never overwritten silently

    run_stklia("train", *common(demo_root), f"model_dir={model_dir}", "checkpoint=last", cwd=tmp_path)
    assert f"resumed from {folder / CKPT.format(N)} at step {N}" in (model_dir / "train.log").read_text()
    assert not partial.exists()  # cleaned up by the resumed run
    assert list(list_checkpoints(model_dir)) == [N, 2 * N]
    assert_same_run(load_checkpoint(folder / CKPT.format(2 * N)), straight)


def test_preemption_signal_checkpoints_stops_and_a_requeue_resumes(demo_root: Path, tmp_path: Path,
                                                                    straight: dict) -> None:
    model_dir = tmp_path / "model"
    stopped = run_stklia("train", *common(demo_root), *interrupted_at(N + 1, "SIGTERM"), f"model_dir={model_dir}",
                         cwd=tmp_path, check=False)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr
    assert "stopped by SIGTERM" in (model_dir / "train.log").read_text()
    assert list(list_checkpoints(model_dir)) == [N, N + 1]  # the step that was running, finished
    assert load_checkpoint(model_dir / "checkpoints" / CKPT.format(N + 1))["step"] == N + 1

    # a requeued Slurm job runs the same command again: it resumes by itself
    run_stklia("train", *common(demo_root), f"model_dir={model_dir}", cwd=tmp_path, env={"SLURM_RESTART_COUNT": "1"})
    assert f"at step {N + 1}" in (model_dir / "train.log").read_text()
    assert_same_run(load_checkpoint(model_dir / "checkpoints" / CKPT.format(2 * N)), straight)


def test_unreadable_checkpoint_is_a_one_line_error(demo_root: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / CKPT.format(3)).write_bytes(b"PK\x03\x04 not a whole checkpoint")
    proc = run_stklia("train", *common(demo_root), f"model_dir={folder.parent}", "checkpoint=last", cwd=tmp_path,
                      check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"stklia: error: {folder / CKPT.format(3)}: not a readable checkpoint")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_keep_last_prunes_old_checkpoints_but_keeps_the_best(demo_root: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    run_stklia("train", *common(demo_root), "checkpoint_interval=1", "keep_last=2", f"model_dir={model_dir}",
               cwd=tmp_path)
    best = json.loads((model_dir / "checkpoints" / "best.json").read_text())["step"]
    assert set(list_checkpoints(model_dir)) == {2 * N - 1, 2 * N, best}


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_and_channels_last_train(demo_root: Path, tmp_path: Path, amp: str, straight: dict) -> None:
    model_dir = tmp_path / "model"
    run_stklia("train", *common(demo_root), f"amp={amp}", "channels_last=true", f"model_dir={model_dir}", cwd=tmp_path)
    log = (model_dir / "train.log").read_text()
    losses = [float(line.split(" loss ")[1].split()[0]) for line in log.splitlines() if " loss " in line]
    assert len(losses) == N and all(math.isfinite(loss) for loss in losses)
    state = load_checkpoint(model_dir / "checkpoints" / CKPT.format(2 * N))
    weights = state["generator"]["conv1.weight"]
    assert weights.dtype == torch.float32  # the master weights stay float32
    assert not torch.equal(weights, straight["generator"]["conv1.weight"])  # half precision did compute
    assert ("scale" in state["scaler"]) == (amp == "fp16")  # the grad scaler's state is checkpointed


def test_partial_files_are_not_checkpoints(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for name in (CKPT.format(1), CKPT.format(2), f".{CKPT.format(3)}.tmp-99", "step_4.pt.bak"):
        (folder / name).write_bytes(b"")
    assert list(list_checkpoints(tmp_path)) == [1, 2]
