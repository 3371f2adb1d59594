"""Sweeps people can read: the leaderboard (stklia.report) and its DET overlay, the table a sweep prints,
TensorBoard HParams of every run, and the Optuna search preset (Slurm sweeps: test_slurm.py)."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from hydra_plugins.stklia_optuna_sweeper.optuna_sweeper import JOB_ATTR, PRUNED_ATTR, objective_value
from stklia.core.errors import InputError
from stklia.training.checkpointing import BestValidation
from stklia.training.distributed import World
from stklia.training.leaderboard import (
    default_settings,
    det_overlay,
    differing_overrides,
    find_runs,
    leaderboard,
    metric_columns,
    ranked,
    rows,
)
from stklia.training.loop import check_config, optimized_value
from stklia.training.records import read_status

from conftest import (
    ONE_THREAD,
    REPO,
    TINY_TRAINING,
    demo_data_overrides,
    hooked,
    kaldi_trial,
    run_stklia,
    stklia_env,
)

HEADS = ("softmax", "adacos")
PREEMPTED = 4  # job 4 (SIGTERM, softmax) is stopped by its signal, which ends the local sweep


@pytest.fixture(scope="module")
def sweep(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A local sweep of actions x heads: jobs 0, 1 finish, 2, 3 fail after step 4, 4 gets SIGTERM after step 4
    (pre-empted: checkpoint, exit 143, which ends the sweep before job 5). Plus a dir that is not a model dir."""
    out = tmp_path_factory.mktemp("sweep") / "sweep"
    proc = run_stklia("train", "-m", *demo_data_overrides(demo_root), *TINY_TRAINING, *hooked("none,fail,SIGTERM", 4),
                      f"head={','.join(HEADS)}", f"hydra.sweep.dir={out}", cwd=out.parent, check=False)
    assert proc.returncode == 143, proc.stdout + proc.stderr
    (out / "notes").mkdir()
    (out / "notes" / "todo.txt").write_text("not a run\n")
    return {"dir": out, "stdout": proc.stdout}


def report(sweep: dict, *settings: str, check: bool = True):
    return run_stklia("report", str(sweep["dir"]), *settings, cwd=sweep["dir"].parent, check=check)


def validation_eers(model_dir: Path, tag: str = "eval/eer/eval_trials") -> dict[int, float]:
    """The run's TensorBoard scalars `tag` by step: its validation EERs."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(model_dir / "tensorboard"))
    events.Reload()
    return {event.step: event.value for event in events.Scalars(tag)}


def lowest_validation_eer(model_dir: Path) -> float:
    """The lowest of the validation EERs the run logged to TensorBoard (not what the report reads)."""
    return min(validation_eers(model_dir).values())


def test_a_sweep_says_where_it_writes_and_prints_its_table_at_the_end(sweep: dict) -> None:
    out = sweep["dir"]
    assert f"Sweep dir: {out}\nFollow it with: python -m stklia.report {out}\n" in sweep["stdout"]
    table = sweep["stdout"].split(f"Runs of the sweep {out}:\n", 1)[1]  # printed as the pre-emption ended it
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines()
             if line.startswith("| ")]
    assert cells[0][:3] == ["run", "optim.action", "head"] and cells[0][-1] == "status"
    assert sorted((row[0], row[-1]) for row in cells[1:]) == [("0", "finished"), ("1", "finished"), ("2", "failed"),
                                                              ("3", "failed"), ("4", "pre-empted")]


def test_report_lists_every_run_with_its_state(sweep: dict) -> None:
    proc = report(sweep, "format=json", "top=0")
    table = {row["run"]: row for row in json.loads(proc.stdout)}
    assert sorted(table) == ["0", "1", "2", "3", "4"]  # job 5 never ran: the pre-emption ended the sweep
    assert f"skipped {sweep['dir'] / 'notes'}: not a model dir" in proc.stderr
    # only the overrides that differ, with the values each run got
    assert [key for key in table["0"] if key not in ("run", "steps")][:2] == ["optim.action", "head"]
    assert "data.root" not in table["0"] and "batch_size" not in table["0"]
    actions = ("none", "fail", "SIGTERM")
    for job, row in table.items():
        assert (row["optim.action"], row["head"]) == (actions[int(job) // 2], HEADS[int(job) % 2])
        assert row["num_iterations"] == 6 and row["samples/s"] > 0 and row["wall"] > 0
        assert row["eval_eer"] == pytest.approx(lowest_validation_eer(sweep["dir"] / job))
    for job in ("0", "1"):
        assert table[job]["status"] == "finished" and table[job]["steps"] == 6 and table[job]["error"] is None
        results = json.loads((sweep["dir"] / job / "results" / "step_00000006.json").read_text())["results"]
        assert table[job]["test/trials:eer"] == results[0]["eer"]
        assert table[job]["test_noisy/trials:asnorm_min_dcf@0.01"] == results[1]["asnorm_min_dcf@0.01"]
    for job in ("2", "3"):  # failed after step 4: the last checkpoint is step 3
        assert table[job]["status"] == "failed" and table[job]["steps"] == 3
        assert table[job]["error"] == "RuntimeError: deliberate failure after step 4"
        assert table[job]["test/trials:eer"] is None
    assert table["4"]["status"] == "pre-empted" and table["4"]["steps"] == PREEMPTED
    # ranked by the first test list's EER, best first; runs without one last, in job order
    order = [row["run"] for row in json.loads(proc.stdout)]
    finished = sorted(("0", "1"), key=lambda job: table[job]["test/trials:eer"])
    assert order == [*finished, "2", "3", "4"]


def test_report_formats_and_sorting(sweep: dict) -> None:
    rows_json = json.loads(report(sweep, "format=json", "top=0").stdout)
    rows_csv = list(csv.DictReader(io.StringIO(report(sweep, "format=csv", "top=0").stdout)))
    assert [row["run"] for row in rows_csv] == [row["run"] for row in rows_json]
    assert float(rows_csv[0]["test/trials:eer"]) == rows_json[0]["test/trials:eer"]

    markdown = report(sweep, "sort=samples/s", "top=0").stdout
    header, rule, *body = markdown.splitlines()[:7]
    assert header.startswith("| run ") and set(rule) == {"|", "-"} and len(body) == 5
    speeds = [float(line.split("|")[-4]) for line in body]  # ..., samples/s, wall, status
    assert speeds == sorted(speeds, reverse=True)  # samples/s: highest first
    assert "| 3/6 " in markdown and "| 4/6 " in markdown and "| pre-empted " in markdown
    assert "\n2: RuntimeError: deliberate failure after step 4" in markdown

    settings = default_settings([sweep["dir"]])
    settings.update(format="json", top=0, sort="eval_eer")
    table, _ = leaderboard(settings)
    eers = [lowest_validation_eer(sweep["dir"] / row["run"]) for row in json.loads(table)]
    assert eers == sorted(eers)

    bad = report(sweep, "sort=nonsense", check=False)
    assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1].startswith(
        "stklia: error: report: sort=nonsense is not a column of this table: one of eval_eer, test/trials:eer")
    bad = report(sweep, "fromat=csv", check=False)
    assert bad.returncode == 1 and "fromat" in bad.stderr and "Traceback" not in bad.stderr
    missing = run_stklia("report", str(sweep["dir"] / "absent"), cwd=sweep["dir"], check=False)
    assert missing.returncode == 1 and missing.stderr.strip() == f"stklia: error: {sweep['dir'] / 'absent'}: no such " \
                                                                 f"directory"


def test_det_overlay_of_the_best_runs(sweep: dict, tmp_path: Path) -> None:
    png = tmp_path / "det.png"
    proc = report(sweep, "top=2", f"det={png}", "sort=test_noisy/trials:asnorm_eer")
    assert f"DET plot (test_noisy/trials (asnorm scores): best 2 by test_noisy/trials:asnorm_eer): {png}" in proc.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    runs, _ = find_runs([sweep["dir"]])
    differing = differing_overrides(runs)
    columns = metric_columns(runs, ["eer"])
    table = ranked(rows(runs, differing, columns), "test_noisy/trials:asnorm_eer")
    figure, notes = det_overlay(runs, table, "test_noisy/trials:asnorm_eer", 3, differing)
    legend = [text.get_text() for text in figure.legends[0].get_texts()]
    # only the finished runs have scores; named by their differing overrides, best first, with the EER of the curve
    expected = [f"{row['run']}: optim.action=none head={row['head']} (EER {row['test_noisy/trials:asnorm_eer']:.2f}%)"
                for row in table[:2]]
    assert legend == expected and notes == []


def test_report_of_runs_scored_on_a_kaldi_form_trial_list(demo_root: Path, tmp_path: Path) -> None:
    """Two runs whose test list is in Kaldi's `<a> <b> target|nontarget` form: the leaderboard ranks them and draws
    their DET curves from their score files, whose trials it checks against that list."""
    trials = tmp_path / "kaldi" / "trials"
    trials.parent.mkdir()
    label_first = (demo_root / "test" / "trials").read_text().splitlines()
    trials.write_text("".join(f"{kaldi_trial(line)}\n" for line in label_first))
    for seed in (0, 1):
        run_stklia("train", *demo_data_overrides(demo_root), *TINY_TRAINING, f"seed={seed}",
                   f"data.test_trials=[{trials}]", "data.asnorm_top_n=0", f"model_dir={tmp_path / 'runs' / str(seed)}",
                   cwd=tmp_path)
    png = tmp_path / "det.png"
    proc = run_stklia("report", str(tmp_path / "runs"), f"det={png}", "format=json", cwd=tmp_path)
    table = json.loads(proc.stdout)
    assert [row["run"] for row in table] == sorted(("0", "1"), key=lambda run: next(
        r["kaldi/trials:eer"] for r in table if r["run"] == run))
    assert f"DET plot (kaldi/trials (raw scores): best 2 by kaldi/trials:eer): {png}" in proc.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "left out" not in proc.stderr


def test_each_run_logs_its_hyperparameters_and_final_metrics_to_tensorboard(sweep: dict) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import api_pb2, metadata

    for job in ("0", "1"):
        model_dir = sweep["dir"] / job
        events = EventAccumulator(str(model_dir / "tensorboard"))
        events.Reload()
        content = events.PluginTagToContent(metadata.PLUGIN_NAME)
        start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
        hparams = {key: value.WhichOneof("kind") and getattr(value, value.WhichOneof("kind"))
                   for key, value in start.hparams.items()}
        assert hparams["head"] == HEADS[int(job)] and hparams["optim.action"] == "none"
        lr = OmegaConf.load(model_dir / "config.yaml").optim.lr  # (AdaCos with SGD: the found recipe's)
        assert hparams["model"] == "resnet_small" and hparams["optim.lr"] == pytest.approx(lr)
        assert (hparams["batch_size"], hparams["max_seq_len"], hparams["num_iterations"],
                hparams["model.emb_size"]) == (8, 40, 6, 16)
        experiment = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
        tags = {info.name.tag for info in experiment.metric_infos}
        end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
        assert end.status == api_pb2.STATUS_SUCCESS
        results = json.loads((model_dir / "results" / "step_00000006.json").read_text())["results"]
        expected = {"hparams/eval_eer": json.loads((model_dir / "checkpoints" / "best.json").read_text())["eer"]}
        for result, name in zip(results, ("test/trials", "test_noisy/trials")):
            expected.update({f"hparams/{name}/{key}": result[key] for key in ("eer", "min_dcf@0.01", "asnorm_eer")})
        assert set(expected) <= tags
        for tag, value in expected.items():
            assert [event.value for event in events.Scalars(tag)] == [pytest.approx(value)]


def test_optuna_preset_runs_a_study_and_reports_the_best_trial(demo_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "study"
    proc = run_stklia("train", "-m", "hparams_search=demo_optuna", "hydra.sweeper.n_trials=3",
                      "hydra.sweeper.n_jobs=2", *demo_data_overrides(demo_root), *TINY_TRAINING,
                      f"hydra.sweep.dir={out}", cwd=tmp_path)
    results = OmegaConf.to_container(OmegaConf.load(out / "optimization_results.yaml"))
    assert [trial["job"] for trial in results["trials"]] == [0, 1, 2]
    # the value each trial returned is the lowest validation EER of its run, read here from TensorBoard
    values = {str(trial["job"]): trial["value"] for trial in results["trials"]}
    for job, value in values.items():
        assert value == pytest.approx(lowest_validation_eer(out / job))
    best = min(values, key=values.get)
    assert results["best_value"] == pytest.approx(values[best]) and str(results["best_job"]) == best
    # searched: lr and head (the tiny model fixes emb_size and crop length on the command line)
    overrides = yaml.safe_load((out / best / ".hydra" / "overrides.yaml").read_text())
    assert set(results["best_params"]) == {"optim.lr", "head"}
    assert f"head={results['best_params']['head']}" in overrides
    assert f"optim.lr={results['best_params']['optim.lr']}" in overrides
    assert "model.emb_size=16" in overrides and "max_seq_len=40" in overrides
    assert re.search(rf"Best trial \d+ \(job {best}\): value {re.escape(str(results['best_value']))}, parameters",
                     proc.stdout + proc.stderr)
    assert f"Runs of the sweep {out}:" in proc.stdout  # the leaderboard too


def test_an_interrupted_recipe_search_continues_where_it_stopped(demo_root: Path, tmp_path: Path) -> None:
    """hparams_search=demo_budget keeps its study in its sweep dir. Its first trial is pre-empted (SIGTERM after
    step 4), which ends the sweep; the same command again runs that trial again in its own job dir, resuming from
    its checkpoint, then the remaining trials. Conditional parameters (a margin for the margin heads only, the
    SGD-only momentum) are set in the trials they apply to, and only there."""
    out = tmp_path / "search"
    command = ["train", "-m", "hparams_search=demo_budget", "hydra.sweeper.n_trials=3", "optim=sgd",
               *demo_data_overrides(demo_root), *TINY_TRAINING, f"hydra.sweep.dir={out}"]
    first = run_stklia(*command, *hooked("SIGTERM", 4), cwd=tmp_path, check=False)
    assert first.returncode == 143, first.stdout + first.stderr
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["0"]
    second = run_stklia(*command, *hooked("none", 4), cwd=tmp_path)
    results = OmegaConf.to_container(OmegaConf.load(out / "optimization_results.yaml"))
    assert [(trial["trial"], trial["job"]) for trial in results["trials"]] == [(0, 0), (1, 1), (2, 2)]
    assert all("value" in trial for trial in results["trials"])
    # the seeded sampler went on from the trial it had proposed: it did not propose it again
    assert results["trials"][1]["params"] != results["trials"][0]["params"]
    assert "the study goes on from 1 trials: sampler seed 0 + 1" in second.stdout + second.stderr
    status = json.loads((out / "0" / "status.json").read_text())
    assert (status["state"], status["step"], status["preemptions"], status["resumes"]) == ("finished", 6, 1, 1)
    for trial in results["trials"]:
        params = trial["params"]
        overrides = yaml.safe_load((out / str(trial["job"]) / ".hydra" / "overrides.yaml").read_text())
        margin = [o for o in overrides if o.startswith("head.margin=")]
        assert bool(margin) == (params["head"] in ("arcface", "amsoftmax"))
        assert "optim=sgd" in overrides and any(o.startswith("optim.momentum=") for o in overrides)
        assert not any("[" in name for name in params if name.startswith(("optim", "max_seq_len")))


def pruned_study(out: Path, *overrides: str) -> list[str]:
    """A study of checkpoint_interval 2 or 6 (6 steps; brute force tries each once) whose pruner stops any trial
    it is asked about from step 3 on: the trial validating at 2, 4 is pruned at 4; the other validates only at
    its last step, where nothing is asked."""
    return ["train", "-m", "hydra/sweeper=stklia_optuna", "optimized_metric=eval_eer", *TINY_TRAINING,
            "checkpoint_interval=choice(2,6)", "hydra.sweeper.sampler._target_=optuna.samplers.BruteForceSampler",
            f"hydra.sweeper.storage=sqlite:///{out}/optuna.db", "hydra.sweeper.study_name=pruned",
            "hydra.sweeper.pruner={_target_:optuna.pruners.ThresholdPruner,upper:-1,n_warmup_steps:3}",
            f"hydra.sweep.dir={out}", *overrides]


@pytest.mark.parametrize("processes", [1, 2])
def test_a_pruner_stops_the_trials_it_is_asked_to_with_their_checkpoint_untested(demo_root: Path, tmp_path: Path,
                                                                                    processes: int) -> None:
    """In a run of 2 processes (gloo), rank 0 asks the study and both ranks stop."""
    import optuna

    out = tmp_path / "study"
    proc = run_stklia(*pruned_study(out, "hydra.sweeper.n_trials=3", f"multi_gpu={processes}",
                                    *demo_data_overrides(demo_root)), cwd=tmp_path, env=ONE_THREAD)
    output = proc.stdout + proc.stderr
    results = OmegaConf.to_container(OmegaConf.load(out / "optimization_results.yaml"))
    by_interval = {trial["params"]["checkpoint_interval"]: trial for trial in results["trials"]}
    pruned, finished = by_interval[2], by_interval[6]
    # each reported value is the lowest validation EER so far, as the run logged it
    eers = validation_eers(out / str(pruned["job"]))
    assert sorted(eers) == [2, 4]
    study = optuna.load_study(study_name="pruned", storage=f"sqlite:///{out}/optuna.db")
    trial = study.trials[pruned["trial"]]
    assert trial.state == optuna.trial.TrialState.PRUNED and trial.user_attrs[PRUNED_ATTR] == 4
    assert trial.intermediate_values == pytest.approx({2: eers[2], 4: min(eers.values())})
    assert pruned["pruned"] == pytest.approx({"step": 4, "value": min(eers.values())})
    assert f"trial {pruned['trial']} (job {pruned['job']}) pruned at step 4" in output
    # the pruned run stopped with its checkpoint, untested; the other ran to the end and was tested
    pruned_dir, finished_dir = out / str(pruned["job"]), out / str(finished["job"])
    status = json.loads((pruned_dir / "status.json").read_text())
    assert (status["state"], status["step"]) == ("pruned", 4)
    assert sorted(p.name for p in (pruned_dir / "checkpoints").glob("step_*")) == ["step_00000002.pt",
                                                                                    "step_00000004.pt"]
    assert not (pruned_dir / "results").exists()
    hparams = validation_eers(pruned_dir, "hparams/eval_eer")  # in TensorBoard's HParams with the sweep's others
    assert hparams == {4: pytest.approx(json.loads((pruned_dir / "checkpoints" / "best.json").read_text())["eer"])}
    assert json.loads((finished_dir / "status.json").read_text())["state"] == "finished"
    assert finished["value"] == pytest.approx(min(validation_eers(finished_dir).values()))
    assert results["best_job"] == finished["job"]  # a pruned trial is never the best
    # brute force covered its two values: the study ends there, not at n_trials=3
    assert "BruteForceSampler has covered its search space: the study ends after 2 trials" in output
    assert len(results["trials"]) == 2
    board = report({"dir": out}, "format=csv").stdout
    states = {row["run"]: row["status"] for row in csv.DictReader(io.StringIO(board))}
    assert states == {str(pruned["job"]): "pruned", str(finished["job"]): "finished"}


def test_a_trial_pruned_before_an_interruption_is_not_run_again(demo_root: Path, tmp_path: Path) -> None:
    """The study as an interrupted sweep left it: trial 0 (job 0) still running, its job pruned at step 4. The
    sweep started again tells it PRUNED without running job 0, then runs the other value as job 1."""
    import optuna

    out = tmp_path / "study"
    out.mkdir()
    study = optuna.create_study(study_name="pruned", storage=f"sqlite:///{out}/optuna.db")
    study.enqueue_trial({"checkpoint_interval": 2})
    trial = study.ask({"checkpoint_interval": optuna.distributions.CategoricalDistribution([2, 6])})
    trial.set_user_attr(JOB_ATTR, 0)
    trial.set_user_attr(PRUNED_ATTR, 4)
    proc = run_stklia(*pruned_study(out, "hydra.sweeper.n_trials=2", *demo_data_overrides(demo_root)), cwd=tmp_path)
    assert "trial 0 (job 0) pruned at step 4" in proc.stdout + proc.stderr
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["1"]
    results = OmegaConf.to_container(OmegaConf.load(out / "optimization_results.yaml"))
    assert [(t["job"], t["params"]["checkpoint_interval"], "pruned" in t) for t in results["trials"]] == [
        (0, 2, True), (1, 6, False)]


def test_a_pruner_needs_a_stored_study_and_the_validation_eer(demo_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "study"
    proc = run_stklia(*pruned_study(out, "hydra.sweeper.storage=null", *demo_data_overrides(demo_root)),
                      cwd=tmp_path, check=False)
    assert proc.returncode == 1
    assert "hydra.sweeper.pruner needs a storage and a study_name" in proc.stderr
    proc = run_stklia(*pruned_study(out, "optimized_metric=test_eer", "hydra.sweeper.n_trials=1",
                                    *demo_data_overrides(demo_root)), cwd=tmp_path, check=False)
    assert proc.returncode == 1
    assert ("hydra.sweeper.pruner stops trials on their validation EER so far: it needs optimized_metric=eval_eer "
            "(not test_eer) and data.eval_trials") in proc.stdout + proc.stderr
    assert not (out / "0").exists()  # refused before anything was written


def test_a_trial_that_ends_frees_its_slot_for_the_next_at_once(demo_root: Path, tmp_path: Path) -> None:
    """Two trials at a time (submitit_local): job 0 is held after its step 2 until the test lets it go, job 1
    runs through, and job 2 must then start and end while job 0 is still held: the sweeper asks the next trial
    when any running one ends, not when a batch's slowest does."""
    out, gates = tmp_path / "study", tmp_path / "gates"
    for job in ("1", "2"):
        (gates / job).mkdir(parents=True)
        (gates / job / "go").touch()
    sweep = subprocess.Popen(
        [sys.executable, "-m", "stklia.train", "-m", "hparams_search=demo_optuna", "hydra/launcher=submitit_local",
         "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=2", "num_threads=1", "num_workers=0",
         *demo_data_overrides(demo_root), *TINY_TRAINING, *hooked("wait", 2, out_dir=f"{gates}/${{hydra:job.num}}"),
         f"hydra.sweep.dir={out}"], cwd=tmp_path, env=stklia_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)

    def state(job: str) -> str | None:
        status = read_status(out / job)
        return status and status["state"]

    try:
        deadline = time.monotonic() + 300
        while state("2") != "finished" and sweep.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        states = {job: state(job) for job in ("0", "1", "2")}
    finally:
        (gates / "0").mkdir(exist_ok=True)
        (gates / "0" / "go").touch()
        output = sweep.communicate(timeout=600)[0]
    assert sweep.returncode == 0, output
    assert states == {"0": "running", "1": "finished", "2": "finished"}, (states, output)
    assert state("0") == "finished"
    results = OmegaConf.to_container(OmegaConf.load(out / "optimization_results.yaml"))
    assert [(trial["trial"], trial["job"]) for trial in results["trials"]] == [(0, 0), (1, 1), (2, 2)]
    assert all("value" in trial for trial in results["trials"])


def test_parallel_trials_share_the_cores(demo_root: Path, tmp_path: Path) -> None:
    """Two trials at once (submitit_local runs a batch's jobs in parallel), each with one torch thread."""
    out = tmp_path / "study"
    run_stklia("train", "-m", "hparams_search=demo_optuna", "hydra/launcher=submitit_local", "hydra.sweeper.n_trials=2",
               "hydra.sweeper.n_jobs=2", "num_threads=1", "num_workers=0", *demo_data_overrides(demo_root),
               *TINY_TRAINING, f"hydra.sweep.dir={out}", cwd=tmp_path)
    spans = []
    for job in ("0", "1"):
        log = (out / job / "train.log").read_text()
        assert "cpu, 1 torch threads" in log
        times = re.findall(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+\]", log, re.M)
        spans.append((times[0], times[-1]))
    assert spans[0][0] <= spans[1][1] and spans[1][0] <= spans[0][1], spans  # their runs overlap in time


def test_a_study_whose_trials_fail_ends_with_their_errors(demo_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "study"
    proc = run_stklia("train", "-m", "hparams_search=demo_optuna", "hydra.sweeper.n_trials=1",
                      *demo_data_overrides(demo_root), *TINY_TRAINING, *hooked("fail", 2),
                      f"hydra.sweep.dir={out}", cwd=tmp_path, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1
    assert "trial 0 (job 0) failed: RuntimeError: deliberate failure after step 2" in output
    assert json.loads((out / "0" / "status.json").read_text())["state"] == "failed"
    assert "no trial of the 1 completed" in output


def test_what_a_run_returns_to_a_sweeper_is_a_number_or_a_failure(tmp_path: Path) -> None:
    cfg = OmegaConf.create({"optimized_metric": "eval_eer", "optimized_trials": 1})
    best = BestValidation(6, 20.0, [20.0, 12.5])
    assert optimized_value(cfg, best, None, tmp_path) == 12.5  # the lowest validation EER on list 1
    tested = [{"eer": 30.0, "asnorm_eer": 25.0}, {"eer": 40.0, "asnorm_eer": math.nan}]
    cfg.optimized_metric, cfg.optimized_trials = "test_asnorm_eer", 0
    assert optimized_value(cfg, best, tested, tmp_path) == 25.0
    cfg.optimized_trials = 1
    with pytest.raises(RuntimeError, match=r"optimized_metric=test_asnorm_eer \(optimized_trials=1\) is nan"):
        optimized_value(cfg, best, tested, tmp_path)
    # the sweeper: a failed job, or one that returned no number, is a failed trial with its error
    assert objective_value(JobReturn(status=JobStatus.COMPLETED, _return_value=12.5)) == 12.5
    with pytest.raises(ValueError, match="returned None, not a finite number"):
        objective_value(JobReturn(status=JobStatus.COMPLETED, _return_value=None))
    with pytest.raises(RuntimeError, match="diverged"):
        objective_value(JobReturn(status=JobStatus.FAILED, _return_value=RuntimeError("diverged")))


def test_optimized_metric_is_checked_before_training() -> None:
    from hydra import compose, initialize_config_dir

    def check(*overrides: str) -> None:
        with initialize_config_dir(str(REPO / "stklia" / "conf"), version_base="1.3"):
            check_config(compose("train", ["data.root=/demo", *overrides]), World(torch.device("cpu")))

    check("optimized_metric=test_asnorm_eer", "optimized_trials=1")  # test_noisy/trials, AS-norm on the demo
    with pytest.raises(InputError, match=r"optimized_metric=test_eer on optimized_trials=2 needs that trial list in "
                                         r"data.test_trials \(2 configured\)"):
        check("optimized_metric=test_eer", "optimized_trials=2")
    with pytest.raises(InputError, match="optimized_metric=test_asnorm_eer needs AS-norm"):
        check("optimized_metric=test_asnorm_eer", "data.asnorm_top_n=0")
    with pytest.raises(InputError, match="optimized_metric=eval_eer on optimized_trials=0 needs that trial list"):
        check("optimized_metric=eval_eer", "data.eval=null")


def script(name: str) -> Any:
    """A module of scripts/, imported from its file."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sweep_occupancy_reads_job_spans_and_estimates_batches(tmp_path: Path) -> None:
    """scripts/sweep_occupancy.py: 4 jobs on 2 slots, as they ran (each job started when a slot freed) and in
    batches of consecutive jobs: [0, 1] waits for job 0 (600 s), [2, 3] for job 3 (400 s)."""
    from datetime import datetime, timezone

    occupancy = script("sweep_occupancy")
    spans = {0: (0, 600), 1: (0, 100), 2: (100, 300), 3: (300, 700), 4: (700, 760)}
    for job, (start, end) in spans.items():
        (tmp_path / str(job)).mkdir()
        updated = datetime.fromtimestamp(1_800_000_000 + end, timezone.utc).isoformat(timespec="seconds")
        state = "running" if job == 4 else "finished"  # a job that has not ended does not count
        (tmp_path / str(job) / "status.json").write_text(json.dumps({"state": state, "wall_seconds": end - start,
                                                                    "updated": updated}))
    (tmp_path / ".submitit").mkdir()
    found = occupancy.job_spans(tmp_path)
    assert {job: (end - start) for job, (start, end) in found.items()} == {0: 600, 1: 100, 2: 200, 3: 400}
    assert occupancy.batched_span(found, 2) == 1000
    assert occupancy.batched_span(found, 1) == 1300 and occupancy.batched_span(found, 4) == 600
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "sweep_occupancy.py"), str(tmp_path), "--slots", "2"],
                          capture_output=True, text=True, env=stklia_env(), check=True)
    assert f"| {tmp_path.name} | 4 | 22 | 12 | 93% | 17 | 1.43 |" in proc.stdout  # 1300 s busy of 2 x 700
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "sweep_occupancy.py"), str(tmp_path),
                           "--first-job", "2"], capture_output=True, text=True, env=stklia_env(), check=True)
    assert f"| {tmp_path.name} | 2 | 10 | 10 | 50% | 7 | 0.67 |" in proc.stdout  # jobs 2-3: 600 s of 2 x 600


def test_confirmation_trains_a_searchs_best_trials_and_defaults_at_its_budget(tmp_path: Path) -> None:
    """scripts/confirm_recipes.py: the default row is the search's model at the search's budget, as train.yaml
    composes it (with a recipe of conf/recipe/ where one applies: the current defaults, which a recipe must beat);
    the best rows are the best completed trials' overrides (pruned and failed trials are not candidates), without
    what says how the search ran."""
    confirm = script("confirm_recipes")
    search = tmp_path / "search"
    search.mkdir()
    task = ["hparams_search=demo_budget", "hydra/sweeper/pruner=median", "model=ecapa_tdnn_small",
            "num_iterations=1000", "num_threads=1", "num_workers=1"]
    OmegaConf.save(OmegaConf.create({"hydra": {"overrides": {"task": task}}}), search / "multirun.yaml")
    trials = [{"trial": 0, "job": 0, "params": {}, "value": 5.0},
              {"trial": 1, "job": 1, "params": {}, "pruned": {"step": 300, "value": 1.0}},
              {"trial": 2, "job": 2, "params": {}, "error": "RuntimeError: diverged"},
              {"trial": 3, "job": 3, "params": {}, "value": 2.0}]
    OmegaConf.save(OmegaConf.create({"trials": trials}), search / "optimization_results.yaml")
    for job in range(4):
        (search / str(job) / ".hydra").mkdir(parents=True)
        overrides = [*task, f"optim.lr=0.{job + 1}", "augment.specaugment.prob=0.3", "checkpoint=last"]
        (search / str(job) / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    model, found = confirm.recipes(search, top=3)
    assert model == "ecapa_tdnn_small"
    assert found == {
        "default": ["model=ecapa_tdnn_small", "num_iterations=1000"],
        "best1": ["model=ecapa_tdnn_small", "num_iterations=1000", "optim.lr=0.4", "augment.specaugment.prob=0.3",
                  "augment=specaugment"],
        "best2": ["model=ecapa_tdnn_small", "num_iterations=1000", "optim.lr=0.1", "augment.specaugment.prob=0.3",
                  "augment=specaugment"]}
