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

from stklia.modeldir.checkpoints import list_checkpoints, load_checkpoint

from conftest import N, assert_same_run, checkpoint_path, hooked, run_stklia, short_run


@pytest.fixture(scope="module")
def straight(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The final checkpoint of an uninterrupted run of 2N steps."""
    model_dir = tmp_path_factory.mktemp("straight") / "model"
    run_stklia("train", *short_run(demo_root), f"model_dir={model_dir}", cwd=model_dir.parent)
    return load_checkpoint(checkpoint_path(model_dir, 2 * N))


def test_sigkill_then_resume_is_bitwise_identical(demo_root: Path, tmp_path: Path, straight: dict) -> None:
    model_dir = tmp_path / "model"
    with_worker = [*short_run(demo_root), "num_workers=1"]  # the batches do not depend on the workers
    killed = run_stklia("train", *with_worker, *hooked("SIGKILL", N + 1), f"model_dir={model_dir}",
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
    killed = run_stklia("train", *run, *hooked("SIGKILL", N + 1), f"model_dir={model_dir}", cwd=tmp_path,
                        check=False)
    assert killed.returncode == -signal.SIGKILL
    run_stklia("train", *run, f"model_dir={model_dir}", "checkpoint=last", cwd=tmp_path)
    assert "on the training device (cpu)" in (model_dir / "train.log").read_text()
    assert_same_run(load_checkpoint(checkpoint_path(model_dir, 2 * N)),
                    load_checkpoint(checkpoint_path(tmp_path / "straight", 2 * N)))


def test_preemption_signal_checkpoints_stops_and_a_requeue_resumes(demo_root: Path, tmp_path: Path,
                                                                    straight: dict) -> None:
    model_dir = tmp_path / "model"
    stopped = run_stklia("train", *short_run(demo_root), *hooked("SIGTERM", N + 1), f"model_dir={model_dir}",
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


def last_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    return lines[-1] if lines else ""


# what goes wrong right after step N + 1 (or N) -> the step named, the words of the one-line error
NON_FINITE = {
    "gradient": ("nan_grad", N + 1, "the gradient norm is not finite (NaN or Inf); its batch held "),
    "loss": ("nan_weights", N + 1, "the training loss is not finite (NaN or Inf); its batch held "),
    "weights at a checkpoint": ("nan_weights", N, "the weights are not finite (generator."),
}


@pytest.mark.parametrize("case", NON_FINITE)
def test_non_finite_training_stops_before_any_bad_checkpoint(demo_root: Path, tmp_path: Path, case: str) -> None:
    action, at_step, words = NON_FINITE[case]
    model_dir = tmp_path / "model"
    proc = run_stklia("train", *short_run(demo_root), *hooked(action, at_step), f"model_dir={model_dir}",
                      cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    # nan_weights after step N + 1 makes the loss of step N + 2 NaN; the flag is read at the next log line
    bad = {"gradient": N + 1, "loss": N + 2, "weights at a checkpoint": N}[case]
    read = bad if case == "weights at a checkpoint" else bad + bad % 2  # log_interval=2
    saved = [] if case == "weights at a checkpoint" else [N]
    last = f"the last checkpoint is {checkpoint_path(model_dir, N)}" if saved else "no checkpoint was written"
    assert last_line(proc).startswith(f"stklia: error: {model_dir}: step {bad}: {words}")
    assert last_line(proc).endswith(f"; stopped at step {read} without a checkpoint, {last}")
    assert list(list_checkpoints(model_dir)) == saved
    if case == "gradient":  # the utterances of the batch of step N + 1: a function of (seed, step)
        from stklia.data.datasets import BatchSchedule
        from stklia.data.kaldi import load_data_dir

        data = load_data_dir(demo_root / "train")
        batch = BatchSchedule(data.speaker_labels(), 8, 2 * N, seed=0).batch(N)
        assert sorted({data.utts[i] for i, _ in batch})[0] in last_line(proc)


def test_fp16_skipped_steps_are_not_errors(demo_root: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    run_stklia("train", *short_run(demo_root), "amp=fp16", *hooked("nan_grad", N + 1),
               f"model_dir={model_dir}", cwd=tmp_path)  # the grad scaler skips that step
    state = load_checkpoint(checkpoint_path(model_dir, 2 * N))
    assert state["scaler"]["scale"] < load_checkpoint(checkpoint_path(model_dir, N))["scaler"]["scale"]
    assert all(torch.isfinite(t).all() for t in state["generator"].values() if t.is_floating_point())


def test_a_full_disk_keeps_the_last_checkpoint_and_stops_in_one_line(demo_root: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    # after step N + 1 no file may be larger than half a checkpoint (no validation: no DET plots in TensorBoard)
    proc = run_stklia("train", *short_run(demo_root), "data.eval=null", *hooked("fill_disk", N + 1, out_dir=model_dir),
                      f"model_dir={model_dir}", cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert last_line(proc) == (f"stklia: error: {checkpoint_path(model_dir, 2 * N)}: could not be written ([Errno 27] "
                               f"File too large): is the disk full? the last checkpoint is still "
                               f"{checkpoint_path(model_dir, N)}")
    assert sorted(p.name for p in (model_dir / "checkpoints").iterdir()) == [checkpoint_path(model_dir, N).name]
    assert load_checkpoint(checkpoint_path(model_dir, N))["step"] == N


def test_ctrl_c_checkpoints_and_says_how_to_resume_a_second_stops_at_once(demo_root: Path, tmp_path: Path) -> None:
    stopped = run_stklia("train", *short_run(demo_root), *hooked("SIGINT", N + 1),
                         f"model_dir={tmp_path / 'once'}", cwd=tmp_path, check=False)
    assert stopped.returncode == 130, stopped.stderr
    assert list(list_checkpoints(tmp_path / "once")) == [N, N + 1]  # the step that was running, finished
    assert f"step {N + 1}: checkpoint written, stopping; to resume, run the same command with checkpoint=last" \
        in stopped.stdout
    twice = run_stklia("train", *short_run(demo_root), *hooked("SIGINT", N + 1, times=2),
                       f"model_dir={tmp_path / 'twice'}", cwd=tmp_path, check=False)
    assert twice.returncode == 130 and last_line(twice) == "stklia: interrupted" and "Traceback" not in twice.stderr
    assert list(list_checkpoints(tmp_path / "twice")) == [N]
