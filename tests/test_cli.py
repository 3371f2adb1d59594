"""The real command lines on a tiny generated corpus: train -> test -> extract, sweeps (resume: test_resume.py)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import kaldiio
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from stklia.data.kaldi import load_data_dir
from stklia.data.trials import read_trials, trials_name
from stklia.evaluation.metrics import compute_eer, compute_min_dcf
from stklia.modeldir.checkpoints import list_checkpoints, load_checkpoint

from conftest import (
    REPO,
    TINY_TRAINING,
    assert_same_run,
    demo_data_overrides,
    kaldi_trial,
    make_enrollment,
    poison_features,
    results_written,
    run_stklia,
    table_rows,
    without_module,
)


def test_train_writes_a_complete_model_dir(trained: Path, demo_root: Path) -> None:
    assert sorted(list_checkpoints(trained)) == [3, 6]
    state = load_checkpoint(trained / "checkpoints" / "step_00000006.pt")
    assert state["step"] == 6 and set(state) >= {"generator", "head", "optimizer", "scheduler"}
    cfg = OmegaConf.load(trained / "config.yaml")
    assert cfg.model_dir == str(trained) and cfg.model.emb_size == 16
    best = json.loads((trained / "checkpoints" / "best.json").read_text())
    assert best["step"] in (3, 6)
    assert any((trained / "tensorboard").iterdir())
    results = json.loads((trained / "results" / "step_00000006.json").read_text())["results"]
    trials = read_trials(demo_root / "test" / "trials", load_data_dir(demo_root / "test").feats)
    assert results[0]["num_trials"] == len(trials.labels)
    assert 0 <= results[0]["eer"] <= 100


def test_tensorboard_has_the_training_curves(trained: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(trained / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/accuracy", "train/lr", "eval/eer/eval_trials", "eval/min_dcf@0.01/eval_trials"} <= tags
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4, 6]
    assert [e.step for e in events.Scalars("eval/eer/eval_trials")] == [3, 6]
    # each test list keeps its own DET plot and metrics, equal to its results file's
    lists = ("test_trials", "test_noisy_trials")
    assert {"eval/det/eval_trials", *(f"test/det/{name}" for name in lists)} <= set(events.Tags()["images"])
    assert [e.step for e in events.Images("eval/det/eval_trials")] == [3, 6]
    for row, name in zip(json.loads((trained / "results" / "step_00000006.json").read_text())["results"], lists):
        for metric in ("eer", "min_dcf@0.01", "min_dcf@0.001", "asnorm_eer"):
            (logged,) = events.Scalars(f"test/{metric}/{name}")
            assert logged.step == 6 and logged.value == pytest.approx(row[metric], abs=1e-4)


def test_result_files_hold_rounded_metrics(trained: Path, demo_root: Path) -> None:
    """EER (%) and minDCF to 4 decimals (no 0.5770000000000001): those of the written scores; the best
    validation EER too."""
    results = trained / "results"
    summary = json.loads((results / "step_00000006.json").read_text())["results"][0]
    trials = read_trials(demo_root / "test" / "trials", load_data_dir(demo_root / "test").feats)
    scores = np.loadtxt(summary["files"]["raw_scores"], usecols=2)
    assert summary["eer"] == round(100 * compute_eer(scores, trials.labels)[0], 4)
    assert summary["min_dcf@0.01"] == round(compute_min_dcf(scores, trials.labels, p_target=0.01)[0], 4)
    for path in (results / "step_00000006.json", results / "step_00000006" / "test_trials.json",
                 trained / "checkpoints" / "best.json"):
        numbers = re.findall(r"\d+\.\d+", path.read_text())
        assert numbers and all(len(number.split(".")[1]) <= 4 for number in numbers), path


def test_progress_away_from_a_terminal_is_a_line_per_tenth(demo_root: Path, tmp_path: Path) -> None:
    """stderr of a Slurm job or a CI run is a file: the bars write a line at 0%, 10%, ..., 100%, no redraws."""
    proc = run_stklia("train", *demo_data_overrides(demo_root), *TINY_TRAINING, "num_iterations=20",
                      "checkpoint_interval=20", "progress=true", f"model_dir={tmp_path / 'model'}", cwd=tmp_path)
    assert "\r" not in proc.stderr
    assert [int(p) // 10 for p in re.findall(r"^train: +(\d+)%", proc.stderr, re.M)] == list(range(11))
    embedded = re.findall(r"^embeddings: +(\d+)%", proc.stderr, re.M)  # the test's: its lists, then the cohort
    assert embedded.count("0") == embedded.count("100") == 2 and len(embedded) <= 2 * 11


def test_test_command_prints_and_saves_results(trained: Path) -> None:
    proc = run_stklia("test", f"model_dir={trained}", "checkpoint=3", "progress=false", cwd=trained.parent)
    assert "eer" in proc.stdout and "min_dcf@0.01" in proc.stdout and "min_dcf@0.001" in proc.stdout
    saved = json.loads((trained / "results" / "step_00000003.json").read_text())
    assert saved["step"] == 3
    row = saved["results"][0]
    assert {"eer", "min_dcf@0.01", "min_dcf@0.001"} <= set(row)
    assert f"{row['eer']:.2f}" in proc.stdout


def test_test_command_scores_enrollment_trials_with_asnorm(trained: Path, demo_root: Path, tmp_path: Path) -> None:
    own = {path: path.read_bytes() for path in (trained / "results").rglob("*") if path.is_file()}
    enroll = make_enrollment(demo_root / "test", tmp_path / "enroll")
    lists = [demo_root / "test" / "trials", enroll / "trials"]
    replaced = [f"test_enroll={enroll}", f"test_trials=[{','.join(map(str, lists))}]", f"cohort={demo_root / 'train'}",
                "asnorm_top_n=3"]
    proc = run_stklia("test", f"model_dir={trained}", *replaced, "extraction.batch_frames=500", "progress=false",
                      cwd=tmp_path)
    header, *rows = table_rows(proc.stdout)
    assert header == ["trials", "scores", "n", "eer", "min_dcf@0.01", "min_dcf@0.001", "act_dcf@0.01",
                      "act_dcf@0.001", "cllr", "min_cllr"]
    assert [r[:2] for r in rows] == [[trials_name(p), kind] for p in lists for kind in ("raw", "asnorm")]
    # other lists' results go under their own name: the training's own test results are kept as they were
    summary, out = results_written(proc)
    assert summary.parent == out.parent == trained / "results" and summary.name == f"{out.name}.json"
    assert out.name.startswith("step_00000006-")
    assert {path: path.read_bytes() for path in own} == own
    saved = json.loads(summary.read_text())
    assert saved["replaced"]["test_enroll"] == str(enroll) and saved["replaced"]["asnorm_top_n"] == 3
    saved = saved["results"]
    assert [r["trials"] for r in saved] == [str(p) for p in lists]
    again = run_stklia("test", f"model_dir={trained}", *replaced[:2], "progress=false", cwd=tmp_path)  # other settings
    assert results_written(again)[0] != summary and summary.read_bytes()  # nothing earlier lost
    for summary, stem, path in zip(saved, ("test_trials", "enroll_trials"), lists):
        assert Path(summary["files"]["det"]) == out / f"{stem}.det.png" and (out / f"{stem}.det.png").stat().st_size
        trial_lines = [line.split()[1:] for line in path.read_text().splitlines()]
        for kind in ("raw", "asnorm"):
            scores = [line.split() for line in Path(summary["files"][f"{kind}_scores"]).read_text().splitlines()]
            assert [s[:2] for s in scores] == trial_lines
        assert json.loads((out / f"{stem}.json").read_text()) == summary
        assert 0 <= summary["asnorm_eer"] <= 100


def test_test_command_reads_kaldi_trials(trained: Path, demo_root: Path, tmp_path: Path) -> None:
    """Kaldi's `<a> <b> target|nontarget` form of the test trials scores exactly as the `1|0 <a> <b>` form."""
    label_first = demo_root / "test" / "trials"
    kaldi = tmp_path / "kaldi_trials"
    kaldi.write_text("".join(f"{kaldi_trial(line)}\n" for line in label_first.read_text().splitlines()))
    proc = run_stklia("test", f"model_dir={trained}", f"test_trials=[{label_first},{kaldi}]", "progress=false",
                      cwd=tmp_path)
    rows = table_rows(proc.stdout)[1:]  # each list raw, then AS-norm
    assert [row[:2] for row in rows] == [[trials_name(path), kind] for path in (label_first, kaldi)
                                         for kind in ("raw", "asnorm")]
    assert [row[1:] for row in rows[:2]] == [row[1:] for row in rows[2:]]


@pytest.mark.parametrize("fmt", ["ark", "txt", "pt"])
def test_extract_every_format(trained: Path, demo_root: Path, tmp_path: Path, fmt: str) -> None:
    run_stklia("extract", f"model_dir={trained}", "data=test", f"format={fmt}", f"out_dir={tmp_path}",
               "progress=false", cwd=tmp_path)
    if fmt == "ark":
        emb = dict(kaldiio.load_scp(str(tmp_path / "embeddings.scp")))
        assert dict(kaldiio.load_ark(str(tmp_path / "embeddings.ark"))).keys() == emb.keys()
    elif fmt == "txt":
        emb = dict(kaldiio.load_ark(str(tmp_path / "embeddings.txt")))
    else:
        emb = {k: v.numpy() for k, v in torch.load(tmp_path / "embeddings.pt", weights_only=True).items()}
    assert sorted(emb) == sorted(load_data_dir(demo_root / "test").utts + load_data_dir(demo_root / "test_noisy").utts)
    assert all(np.asarray(v).shape == (16,) and np.isfinite(v).all() for v in emb.values())
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
    if fmt != "ark":  # all formats hold the same numbers
        run_stklia("extract", f"model_dir={trained}", "format=ark", f"out_dir={tmp_path / 'ref'}", "progress=false",
                   cwd=tmp_path)
        ref = dict(kaldiio.load_scp(str(tmp_path / "ref" / "embeddings.scp")))
        for utt, vec in ref.items():
            np.testing.assert_allclose(emb[utt], vec, rtol=1e-5, atol=1e-6)


def test_test_and_extract_use_their_own_num_workers(trained: Path, tmp_path: Path) -> None:
    """num_workers of the command, not the training's: a value no data loader accepts in the model dir's
    config.yaml stops nothing."""
    model_dir = Path(shutil.copytree(trained, tmp_path / "model"))
    config = OmegaConf.load(model_dir / "config.yaml")
    config.num_workers = -1
    OmegaConf.save(config, model_dir / "config.yaml")
    for command in ("test", "extract"):
        run_stklia(command, f"model_dir={model_dir}", "num_workers=0", "progress=false", cwd=tmp_path)
    assert (model_dir / "embeddings" / "test" / "embeddings.ark").is_file()


def test_extract_any_kaldi_dir(trained: Path, demo_root: Path) -> None:
    run_stklia("extract", f"model_dir={trained}", f"data={demo_root / 'eval'}", "format=pt", "progress=false",
               cwd=trained.parent)
    emb = torch.load(trained / "embeddings" / "eval" / "embeddings.pt", weights_only=True)
    assert sorted(emb) == load_data_dir(demo_root / "eval").utts


HEADS = {"softmax": "Softmax", "amsoftmax": "AMSoftmax", "arcface": "ArcFace", "sphereface": "SphereFace",
         "adacos": "AdaCos", "subcenter_arcface": "SubcenterArcFace"}


def test_multirun_gives_each_job_its_own_model_dir(demo_root: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = run_stklia("train", "-m", f"head={','.join(HEADS)}", *demo_data_overrides(demo_root), *TINY_TRAINING,
                      "num_iterations=3", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    for job, (name, cls) in enumerate(HEADS.items()):
        assert f"#{job} : head={name}" in proc.stdout
        cfg = OmegaConf.load(sweep / str(job) / "config.yaml")
        assert cfg.head._target_ == f"stklia.training.heads.{cls}" and cfg.model_dir == str(sweep / str(job))
        assert list(list_checkpoints(sweep / str(job))) == [3]


def test_slurm_launcher_preset_extends_submitit_slurm() -> None:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(REPO / "stklia" / "conf"), version_base="1.3"):
        cfg = compose("train", ["hydra/launcher=slurm_gpu", "hydra.launcher.tasks_per_node=4"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.gpus_per_node, launcher.tasks_per_node, launcher.mem_gb) == (1, 4, 16)
    assert launcher.max_num_timeout > 0  # pre-empted and timed-out jobs are requeued


@pytest.mark.parametrize("launcher", ["slurm_gpu", "submitit_local"])
def test_slurm_launcher_without_the_slurm_extra_names_it(tmp_path: Path, launcher: str) -> None:
    plugin = "hydra_plugins.hydra_submitit_launcher"
    proc = run_stklia("train", "-m", f"hydra/launcher={launcher}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                      cwd=tmp_path, check=False, env=without_module(plugin, tmp_path / "site"))
    assert proc.returncode == 1 and not (tmp_path / "sweep").exists()
    assert proc.stderr.strip() == (f"stklia: error: hydra/launcher={launcher}: needs {plugin}, which cannot be "
                                   f"imported (No module named '{plugin}'): pip install \"stklia[slurm]\"")


# heads whose schedules (margin warm-up, lambda annealing) follow the step
@pytest.mark.parametrize("head", [["head=arcface", "head.margin_warmup.start=1", "head.margin_warmup.end=5"],
                                  ["head=sphereface"]],
                         ids=["arcface_warmup", "sphereface"])
def test_resume_with_step_dependent_heads(demo_root: Path, tmp_path: Path, head: list[str]) -> None:
    common = [*demo_data_overrides(demo_root), *TINY_TRAINING, *head]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_stklia("train", *common, f"model_dir={straight}", cwd=tmp_path)
    run_stklia("train", *common, "num_iterations=3", f"model_dir={resumed}", cwd=tmp_path)
    assert list(list_checkpoints(resumed)) == [3]
    again = run_stklia("train", *common, f"model_dir={resumed}", cwd=tmp_path, check=False)
    assert again.returncode != 0 and "checkpoint=last" in again.stderr  # refuses to overwrite silently
    run_stklia("train", *common, f"model_dir={resumed}", "checkpoint=last", cwd=tmp_path)
    assert_same_run(load_checkpoint(resumed / "checkpoints" / "step_00000006.pt"),
                    load_checkpoint(straight / "checkpoints" / "step_00000006.pt"))


def test_refused_or_failed_runs_write_nothing(trained: Path, demo_root: Path, tmp_path: Path) -> None:
    def snapshot(folder: Path) -> dict[str, bytes]:
        return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

    before = snapshot(trained)
    common = [*demo_data_overrides(demo_root), *TINY_TRAINING, f"model_dir={trained}"]
    refused = run_stklia("train", *common, "num_iterations=9", cwd=tmp_path, check=False)
    assert refused.returncode == 1 and "already holds checkpoints" in refused.stderr
    failed = run_stklia("train", *common, "checkpoint=last", "data.test=/nonexistent", cwd=tmp_path, check=False)
    assert failed.returncode == 1 and failed.stderr.endswith("/nonexistent: no such data directory\n")
    assert snapshot(trained) == before  # .hydra/ and train.log included
    new = tmp_path / "new"
    failed = run_stklia("train", *demo_data_overrides(demo_root), *TINY_TRAINING, f"model_dir={new}",
                        "data.test=/nonexistent", cwd=tmp_path, check=False)
    assert failed.returncode == 1 and not new.exists()
    missing = run_stklia("test", f"model_dir={tmp_path / 'NOT_A_DIR'}", cwd=tmp_path, check=False)
    assert missing.returncode == 1 and not (tmp_path / "NOT_A_DIR").exists()
    assert not list(tmp_path.iterdir())  # no .hydra/ nor log in the current directory either


def test_broken_checkpoints_are_one_line_naming_the_others(trained: Path, tmp_path: Path) -> None:
    model_dir = Path(shutil.copytree(trained, tmp_path / "model", ignore=shutil.ignore_patterns("results")))
    last = model_dir / "checkpoints" / "step_00000006.pt"
    for content, what in ((last.read_bytes()[: last.stat().st_size // 2], "not a readable checkpoint ("),  # truncated
                          (b"", "not a readable checkpoint (EOFError)"),
                          (None, "not a stklia checkpoint (no step and generator)")):
        if content is None:
            torch.save(torch.zeros(3), last)
        else:
            last.write_bytes(content)
        proc = run_stklia("test", f"model_dir={model_dir}", "progress=false", cwd=tmp_path, check=False)
        assert proc.returncode == 1 and proc.stderr.count("\n") == 1
        assert proc.stderr.startswith(f"stklia: error: {last}: {what}")
        assert proc.stderr.endswith("; available: checkpoint=3\n")


def test_non_finite_features_stop_extraction_in_one_line(trained: Path, kaldi_dir: Path, tmp_path: Path) -> None:
    utt = load_data_dir(kaldi_dir).utts[-1]
    line = poison_features(kaldi_dir, utt)
    out = tmp_path / "emb"
    proc = run_stklia("extract", f"model_dir={trained}", f"data={kaldi_dir}", f"out_dir={out}", "num_workers=1",
                      "progress=false", cwd=tmp_path, check=False)
    assert proc.returncode == 1 and proc.stderr == (
        f"stklia: error: {kaldi_dir / 'feats.scp'}:{line}: features of '{utt}' hold non-finite values (NaN or Inf), "
        "first at frame 3\n")
    assert not out.exists()
