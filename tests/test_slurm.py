"""Sweeps and pre-emption on a real Slurm cluster, through hydra-submitit-launcher.

Outside CI they use the cluster `sinfo` answers for, and skip when there is none. Under CI=true the
cluster is the single-node one of <repo>/../shared/slurm (or $STKLIA_SHARED/slurm), started as root if it
is not up (its start script is idempotent; .ci/run starts and stops it).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from stklia.modeldir.checkpoints import list_checkpoints, load_checkpoint

from conftest import (
    IN_CI,
    ONE_THREAD,
    REPO,
    TINY_TRAINING,
    N,
    assert_same_run,
    checkpoint_path,
    demo_data_overrides,
    hooked,
    require_system,
    run_stklia,
    short_run,
    stklia_env,
)

pytestmark = pytest.mark.slurm

SLURM_SCRIPTS = Path(os.environ.get("STKLIA_SHARED", REPO.parent / "shared")) / "slurm"
STEPS, INTERVAL = 600, 50  # job 0 is signalled after its first checkpoint, while it waits at step INTERVAL + 1


def training(demo_root: Path) -> list[str]:
    return [*demo_data_overrides(demo_root), *TINY_TRAINING, f"num_iterations={STEPS}",
            f"checkpoint_interval={INTERVAL}", f"log_interval={INTERVAL}"]


def local_partition() -> str | None:
    """A partition of the Slurm cluster `sinfo` answers for with this machine as a node (the tests share files
    with their jobs through /tmp), preferring the default one; None when there is none."""
    try:
        proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %P"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):  # no sinfo, or one that hangs on a dead controller
        return None
    here = socket.gethostname().split(".")[0]
    partitions = [line.split()[1] for line in proc.stdout.splitlines() if proc.returncode == 0 and
                  line.split()[0] == here]
    return min(partitions, key=lambda name: not name.endswith("*")).rstrip("*") if partitions else None


@pytest.fixture(scope="module")
def partition() -> str:
    """Outside CI, a partition of a cluster running on this machine (none: skip). Under CI=true, the local
    cluster of shared/slurm: its start script installs Slurm (apt-get) and starts its daemons, as root; a
    cluster this fixture started is stopped at the end."""
    start = SLURM_SCRIPTS / "start-local-slurm.sh"
    if not IN_CI:
        found = local_partition()
        require_system(found is not None, f"no Slurm cluster on this machine answers sinfo: start one as root with "
                       f"`bash {start}`, or run with CI=true (which does)")
        yield found
        return
    assert start.is_file(), f"no {start} (set STKLIA_SHARED)"
    assert os.geteuid() == 0, "the local Slurm cluster needs root"
    was_up = local_partition() is not None
    proc = subprocess.run(["bash", str(start)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    yield proc.stdout.strip()
    if not was_up:
        subprocess.run(["bash", str(SLURM_SCRIPTS / "stop-local-slurm.sh")], capture_output=True, timeout=300)


def sacct(job: str) -> list[dict[str, str]]:
    """Accounting records of a job, every requeued run included (-D), once the last one has ended."""
    fields = ["JobID", "State", "Elapsed", "Start", "End"]
    for _ in range(100):  # records reach slurmdbd asynchronously
        out = subprocess.run(["sacct", "-D", "-X", "-n", "-P", "-j", job, "-o", ",".join(fields)], capture_output=True,
                             text=True, check=True).stdout
        rows = [dict(zip(fields, line.split("|"))) for line in out.splitlines()]
        if rows and rows[-1]["State"] not in ("PENDING", "RUNNING", "REQUEUED"):
            return rows
        time.sleep(0.2)
    raise AssertionError(f"sacct has no final record of job {job}: {rows}")


def slurm_sweep(partition: str, out: Path, *overrides: str) -> subprocess.Popen:
    """Start `python -m stklia.train -m hydra/launcher=submitit_slurm ...`; it returns when all jobs have ended."""
    command = [sys.executable, "-m", "stklia.train", "-m", "hydra/launcher=submitit_slurm",
               f"hydra.launcher.partition={partition}", "hydra.launcher.timeout_min=5", *overrides,
               f"hydra.sweep.dir={out}"]
    return subprocess.Popen(command, cwd=out.parent, env=stklia_env(**ONE_THREAD), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def sweep(partition: str, demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 2-point sweep (softmax, adacos) as a Slurm job array; job 0 is sent submitit's SIGUSR2 mid-run, after
    `stklia.report` has read the sweep dir while it runs."""
    out = tmp_path_factory.mktemp("slurm") / "sweep"
    start = time.monotonic()
    # the jobs wait after step INTERVAL + 1 until `go` exists (tests/optim_hooks.py): the signal comes mid-run
    hydra = slurm_sweep(partition, out, "hydra.launcher.max_num_timeout=1",  # submitit: a short job timed out
                        "head=softmax,adacos", *training(demo_root), *hooked("wait", INTERVAL + 1, out_dir=out.parent))
    try:
        first = checkpoint_path(out / "0", INTERVAL)
        while not first.exists():
            assert hydra.poll() is None, hydra.stdout.read()
            assert time.monotonic() - start < 300, "job 0 wrote no checkpoint"
            time.sleep(0.05)
        job0 = next(p.name for p in (out / ".submitit").iterdir() if p.name.endswith("_0"))
        during = json.loads(run_stklia("report", str(out), "format=json", "top=0", cwd=out.parent).stdout)
        subprocess.run(["scancel", "--signal=USR2", job0], check=True)
        (out.parent / "go").touch()
        output, _ = hydra.communicate(timeout=400)
    finally:
        hydra.kill()
    assert hydra.returncode == 0, output
    array = job0.removesuffix("_0")
    return {"dir": out, "array": array, "seconds": time.monotonic() - start, "output": output, "during": during,
            "jobs": {task: sacct(f"{array}_{task}") for task in (0, 1)}}


def test_sweep_runs_one_slurm_job_per_point(sweep: dict) -> None:
    print(f"\nsweep: Slurm job array {sweep['array']}, {sweep['seconds']:.0f} s from submission to results")
    for task, head in ((0, "Softmax"), (1, "AdaCos")):
        job_dir = sweep["dir"] / str(task)
        assert f"_target_: stklia.training.heads.{head}" in (job_dir / "config.yaml").read_text()
        assert STEPS in list_checkpoints(job_dir) and (job_dir / "results" / f"step_{STEPS:08d}.json").is_file()
        runs = sweep["jobs"][task]
        for run in runs:
            print(f"  job {run['JobID']}: {run['State']}, {run['Elapsed']} ({run['Start']} .. {run['End']})")
        assert runs[-1]["State"] == "COMPLETED"
    assert [run["State"] for run in sweep["jobs"][1]] == ["COMPLETED"]


def test_preempted_job_checkpoints_is_requeued_and_resumes_exactly(sweep: dict, demo_root: Path,
                                                                   tmp_path: Path) -> None:
    assert [run["State"] for run in sweep["jobs"][0]] == ["REQUEUED", "COMPLETED"]
    job_dir = sweep["dir"] / "0"
    log = (job_dir / "train.log").read_text()
    assert "got SIGUSR2" in log and "stopped by SIGUSR2" in log
    stopped_at = int(re.search(r"step (\d+): checkpoint written, stopping", log).group(1))
    assert INTERVAL <= stopped_at < STEPS
    assert f"resumed from {checkpoint_path(job_dir, stopped_at)} at step {stopped_at}" in log

    reference = tmp_path / "straight"  # the same training, uninterrupted and without Slurm
    run_stklia("train", *training(demo_root), "head=softmax", f"model_dir={reference}", cwd=tmp_path, env=ONE_THREAD)
    assert_same_run(load_checkpoint(checkpoint_path(job_dir, STEPS)),
                    load_checkpoint(checkpoint_path(reference, STEPS)))


def test_slurm_sweep_is_reported_while_it_runs_and_when_it_ends(sweep: dict) -> None:
    out = sweep["dir"]
    assert f"Sweep dir: {out}\nFollow it with: python -m stklia.report {out}\n" in sweep["output"]
    running = next(row for row in sweep["during"] if row["run"] == "0")  # at its first checkpoint
    assert running["status"] == "running" and running["steps"] < STEPS and running.get("test/trials:eer") is None
    table = {row["run"]: row for row in json.loads(run_stklia("report", str(out), "format=json", "top=0",
                                                              cwd=out.parent).stdout)}
    assert table["0"]["status"] == "finished (1 pre-emption, resumed)" and table["0"]["steps"] == STEPS
    assert table["1"]["status"] == "finished" and table["1"]["steps"] == STEPS
    assert table["0"]["head"] == "softmax" and table["1"]["head"] == "adacos"
    for job in ("0", "1"):
        results = json.loads((out / job / "results" / f"step_{STEPS:08d}.json").read_text())["results"]
        assert table[job]["test/trials:eer"] == results[0]["eer"]
    # the submitting process printed the same table once the jobs had ended
    printed = sweep["output"].split(f"Runs of the sweep {out}:\n", 1)[1]
    assert re.search(r"^\| 0 +\| softmax .*\| finished \(1 pre-emption, resumed\) \|$", printed, re.MULTILINE)
    assert re.search(r"^\| 1 +\| adacos .*\| finished +\|$", printed, re.MULTILINE)


def test_ddp_over_the_tasks_of_a_slurm_job(partition: str, demo_root: Path, tmp_path: Path, ddp_run: Path) -> None:
    """tasks_per_node=2: two Slurm tasks train as one DDP run, exactly as torchrun's 2 processes do."""
    out = tmp_path / "sweep"
    hydra = slurm_sweep(partition, out, "hydra.launcher.tasks_per_node=2", *short_run(demo_root))
    output, _ = hydra.communicate(timeout=400)
    assert hydra.returncode == 0, output
    assert "distributed run: 2 processes (gloo)" in (out / "0" / "train.log").read_text()
    assert_same_run(load_checkpoint(checkpoint_path(out / "0", 2 * N)),
                    load_checkpoint(checkpoint_path(ddp_run, 2 * N)))


def test_optuna_study_runs_each_trial_as_its_own_slurm_job(partition: str, demo_root: Path, tmp_path: Path) -> None:
    """The Optuna sweeper on a cluster: 4 trials, 2 at a time, with the median pruner. Each trial is one Slurm job
    (its own submission, launched from one of the sweeper's threads), never more than 2 submitted and unfinished at
    once, each job reports its validation EER to the study's storage from its node, and each trial is told its job's
    objective."""
    import optuna

    out = tmp_path / "study"
    hydra = slurm_sweep(partition, out, "hparams_search=demo_optuna", "hydra.sweeper.n_trials=4",
                        "hydra.sweeper.n_jobs=2", "hydra/sweeper/pruner=median", "hydra.sweeper.study_name=study",
                        f"hydra.sweeper.storage=sqlite:///{out}/optuna.db", "num_threads=1",
                        *demo_data_overrides(demo_root), *TINY_TRAINING)
    output, _ = hydra.communicate(timeout=400)
    assert hydra.returncode == 0, output
    slurm_job = {job: OmegaConf.load(out / str(job) / ".hydra" / "hydra.yaml").hydra.job.id for job in range(4)}
    assert len(set(slurm_job.values())) == 4, slurm_job
    runs = {job: sacct(slurm_id) for job, slurm_id in slurm_job.items()}
    assert all([run["State"] for run in job_runs] == ["COMPLETED"] for job_runs in runs.values()), runs
    # From the sweeper writing a job's submission script (not the job's start: the cluster's 2 CPUs would hold a
    # surplus job back) to the job writing its result, when submitit, and so the sweeper, sees it done (Slurm's End
    # comes later, after the job's cleanup, and the next job may be submitted before it).
    spans = [((job / f"{job.name}_submission.sh").stat().st_mtime, (job / f"{job.name}_0_result.pkl").stat().st_mtime)
             for job in (out / ".submitit").iterdir() if job.is_dir()]
    assert len(spans) == 4, spans
    at_once = max(sum(submitted <= moment < done for submitted, done in spans) for moment, _ in spans)
    assert at_once <= 2, spans

    study = optuna.load_study(study_name="study", storage=f"sqlite:///{out}/optuna.db")
    table = {row["run"]: row for row in json.loads(run_stklia("report", str(out), "format=json", "top=0",
                                                              cwd=out.parent).stdout)}
    assert sorted(trial.user_attrs["job"] for trial in study.trials) == [0, 1, 2, 3]
    for trial in study.trials:
        assert trial.state == optuna.trial.TrialState.COMPLETE
        assert trial.intermediate_values, f"trial {trial.number}: its job reported nothing to the study"
        assert trial.value == pytest.approx(table[str(trial.user_attrs["job"])]["eval_eer"], abs=1e-4)  # (rounded)
