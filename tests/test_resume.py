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

from conftest import N, assert_same_run, checkpoint_path, run_stklia, short_run


def interrupted_at(step: int, action: str) -> list[str]:
    return ["optim._target_=optim_hooks.sgd_then", f"+optim.at_step={step}", f"+optim.action={action}"]


@pytest.fixture(scope="module")
def straight(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The final checkpoint of an uninterrupted run of 2N steps."""
    model_dir = tmp_path_factory.mktemp("straight") / "model"
    run_stklia("train", *short_run(demo_root), f"model_dir={model_dir}", cwd=model_dir.parent)
    return load_checkpoint(checkpoint_path(model_dir, 2 * N))


def test_sigkill_then_resume_is_bitwise_identical(demo_root: Path, tmp_path: Path, straight: dict) -> None:
    model_dir = tmp_path / "model"
    with_worker = [*short_run(demo_root), "num_workers=1"]  # the batches do not depend on the workers
    killed = run_stklia("train", *with_worker, *interrupted_at(N + 1, "SIGKILL"), f"model_dir={model_dir}",
                        cwd=tmp_path, check=False)
    assert killed.returncode == -signal.SIGKILL
    assert list(list_checkpoints(model_dir)) == [N]

    # what a kill during a save leaves: a partial temporary file beside the complete checkpoints
    partial = checkpoint_path(model_dir, 2 * N).with_name(f".{checkpoint_path(model_dir, 2 * N).name}.tmp-4242")
    partial.write_bytes(checkpoint_path(model_dir, N).read_bytes()[:1000])

    again = run_stklia("train", *short_run(demo_root), f"model_dir={model_dir}", cwd=tmp_path, check=False)
    assert again.returncode == 1 and "checkpoint=last" in again.stderr  # never overwritten silently

    run_stklia("train", *with_worker, f"model_dir={model_dir}", "checkpoint=last", cwd=tmp_path)
    assert f"resumed from {checkpoint_path(model_dir, N)} at step {N}" in (model_dir / "train.log").read_text()
    assert not partial.exists()  # cleaned up by the resumed run
    assert list(list_checkpoints(model_dir)) == [N, 2 * N]
    assert_same_run(load_checkpoint(checkpoint_path(model_dir, 2 * N)), straight)


def test_device_path_resumes_bitwise(demo_root: Path, tmp_path: Path) -> None:
    """Audio features and augmentation computed by the training device (the CPU here) from the workers' raw crops:
    a killed and resumed run is still the uninterrupted one."""
    run = [*short_run(demo_root), "experiment=demo_aug", "features_on_device=true", "num_workers=1"]
    run_stklia("train", *run, f"model_dir={tmp_path / 'straight'}", cwd=tmp_path)
    model_dir = tmp_path / "model"
    killed = run_stklia("train", *run, *interrupted_at(N + 1, "SIGKILL"), f"model_dir={model_dir}", cwd=tmp_path,
                        check=False)
    assert killed.returncode == -signal.SIGKILL
    run_stklia("train", *run, f"model_dir={model_dir}", "checkpoint=last", cwd=tmp_path)
    assert "on the training device (cpu)" in (model_dir / "train.log").read_text()
    assert_same_run(load_checkpoint(checkpoint_path(model_dir, 2 * N)),
                    load_checkpoint(checkpoint_path(tmp_path / "straight", 2 * N)))


def test_preemption_signal_checkpoints_stops_and_a_requeue_resumes(demo_root: Path, tmp_path: Path,
                                                                    straight: dict) -> None:
    model_dir = tmp_path / "model"
    stopped = run_stklia("train", *short_run(demo_root), *interrupted_at(N + 1, "SIGTERM"), f"model_dir={model_dir}",
                         cwd=tmp_path, check=False)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr
    assert "stopped by SIGTERM" in (model_dir / "train.log").read_text()
    assert list(list_checkpoints(model_dir)) == [N, N + 1]  # the step that was running, finished
    assert load_checkpoint(checkpoint_path(model_dir, N + 1))["step"] == N + 1

    # a requeued Slurm job runs the same command again: it resumes by itself
    run_stklia("train", *short_run(demo_root), f"model_dir={model_dir}", cwd=tmp_path, env={"SLURM_RESTART_COUNT": "1"})
    assert f"at step {N + 1}" in (model_dir / "train.log").read_text()
    assert_same_run(load_checkpoint(checkpoint_path(model_dir, 2 * N)), straight)


def test_unreadable_checkpoint_is_a_one_line_error(demo_root: Path, tmp_path: Path) -> None:
    broken = checkpoint_path(tmp_path / "model", 3)
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"PK\x03\x04 not a whole checkpoint")
    proc = run_stklia("train", *short_run(demo_root), f"model_dir={tmp_path / 'model'}", "checkpoint=last",
                      cwd=tmp_path, check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"stklia: error: {broken}: not a readable checkpoint")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_keep_last_prunes_old_checkpoints_but_keeps_the_best(demo_root: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    run_stklia("train", *short_run(demo_root), "checkpoint_interval=2", "keep_last=2", f"model_dir={model_dir}",
               cwd=tmp_path)
    best = json.loads((model_dir / "checkpoints" / "best.json").read_text())["step"]
    assert set(list_checkpoints(model_dir)) == {2 * N - 2, 2 * N, best}


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_and_channels_last_train(demo_root: Path, tmp_path: Path, amp: str, straight: dict) -> None:
    model_dir = tmp_path / "model"
    run_stklia("train", *short_run(demo_root), f"amp={amp}", "channels_last=true", f"model_dir={model_dir}",
               cwd=tmp_path)
    log = (model_dir / "train.log").read_text()
    losses = [float(line.split(" loss ")[1].split()[0]) for line in log.splitlines() if " loss " in line]
    assert len(losses) == N and all(math.isfinite(loss) for loss in losses)
    state = load_checkpoint(checkpoint_path(model_dir, 2 * N))
    weights = state["generator"]["conv1.weight"]
    assert weights.dtype == torch.float32  # the master weights stay float32
    assert not torch.equal(weights, straight["generator"]["conv1.weight"])  # half precision did compute
    assert ("scale" in state["scaler"]) == (amp == "fp16")  # the grad scaler's state is checkpointed


def test_partial_files_are_not_checkpoints(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    for name in ("step_00000001.pt", "step_00000002.pt", ".step_00000003.pt.tmp-99", "step_00000004.pt.bak"):
        (tmp_path / "checkpoints" / name).write_bytes(b"")
    assert list(list_checkpoints(tmp_path)) == [1, 2]
