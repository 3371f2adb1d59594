"""Bad input of every kind: one line naming file and line, a non-zero exit, no output written."""

from __future__ import annotations

import math
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from stklia.core.errors import InputError
from stklia.data.datasets import BatchSchedule
from stklia.data.kaldi import load_data
from stklia.data.trials import read_trials

from conftest import TINY_TRAINING, demo_data_overrides, kaldi_trial, make_enrollment, poison_features, run_stklia


def _edit(path: Path, change: Callable[[list[str]], list[str]]) -> None:
    lines = path.read_text().splitlines()
    path.write_text("".join(f"{line}\n" for line in change(lines)))


def _set_line(path: Path, index: int, new: Callable[[list[str]], str]) -> None:
    """Replace line `index` (0-based) by new(all lines)."""
    _edit(path, lambda ls: [*ls[:index], new(ls), *ls[index + 1:]])


# name -> (how to break the copied test dir, file named in the error, its line or None, words of the message)
BREAKAGES = {
    "missing feats.scp": (lambda d: [(d / f).unlink() for f in ("feats.scp", "wav.scp")], "feats.scp", None,
                          "no such file"),
    "wrong field count": (lambda d: _set_line(d / "utt2spk", 2, lambda ls: ls[2] + " extra"),
                          "utt2spk", 3, "expected 2 fields, found 3"),
    "utt absent from feats.scp": (lambda d: _edit(d / "feats.scp", lambda ls: ls[1:]),
                                  "utt2spk", 1, "is not in"),
    "duplicate utterance": (lambda d: _edit(d / "feats.scp", lambda ls: ls + ls[:1]),
                            "feats.scp", None, "duplicate key"),
    "spk2utt disagrees": (lambda d: _set_line(d / "spk2utt", 0, lambda ls: f"{ls[1].split()[0]} {ls[0].split()[1]}"),
                          "spk2utt", 1, "disagrees with"),
    "missing ark": (lambda d: _set_line(d / "feats.scp", 1, lambda ls: f"{ls[1].split()[0]} {d}/gone.ark:9"),
                    "feats.scp", 2, "does not exist"),
    "empty data dir": (lambda d: [(d / f).write_text("") for f in ("feats.scp", "utt2spk", "spk2utt")],
                       "feats.scp", None, "empty"),
    "unknown trial utterance": (lambda d: _set_line(d / "trials", 4, lambda ls: ls[4].rsplit(" ", 1)[0] + " ghost"),
                                "trials", 5, "utterance 'ghost' is not in"),
    "bad label": (lambda d: _set_line(d / "trials", 1, lambda ls: "target" + ls[1][1:]),
                  "trials", 2, "is not a trial: expected '<1|0> <enroll> <test>' or Kaldi's '<enroll> <test> "
                               "<target|nontarget>'"),
    "mixed trial forms": (lambda d: _set_line(d / "trials", 2, lambda ls: kaldi_trial(ls[2])),
                          "trials", 3, "is of the form '<enroll> <test> <target|nontarget>' but line 1 is of the "
                                       "form '<1|0> <enroll> <test>': one form per file"),
    "short trial line": (lambda d: _set_line(d / "trials", 6, lambda ls: ls[6].rsplit(" ", 1)[0]),
                         "trials", 7, "expected 3 fields, found 2"),
    "empty trials": (lambda d: (d / "trials").write_text("\n"), "trials", None, "empty"),
}


@pytest.mark.parametrize("case", BREAKAGES)
def test_train_rejects_bad_test_data_before_writing_anything(case: str, kaldi_dir: Path, demo_root: Path,
                                                              tmp_path: Path) -> None:
    breaks, filename, line, words = BREAKAGES[case]
    breaks(kaldi_dir)
    model_dir = tmp_path / "model"
    proc = run_stklia("train", *demo_data_overrides(demo_root), *TINY_TRAINING, f"model_dir={model_dir}",
                      f"data.test={kaldi_dir}", f"data.test_trials=[{kaldi_dir / 'trials'}]", cwd=tmp_path, check=False)
    assert proc.returncode == 1
    error = proc.stderr.strip().splitlines()[-1]
    where = re.escape(str(kaldi_dir / filename)) + (f":{line}" if line else r"(:\d+)?")
    assert re.fullmatch(rf"stklia: error: {where}: .*{re.escape(words)}.*", error), error
    assert "Traceback" not in proc.stderr
    written = {p.name for p in model_dir.iterdir()} if model_dir.exists() else set()
    assert not written & {"config.yaml", "checkpoints", "tensorboard", "results"}


def test_feature_dimension_mismatch_names_the_scp(demo_root: Path, tmp_path: Path) -> None:
    proc = run_stklia("train", *demo_data_overrides(demo_root), *TINY_TRAINING, "data.features_per_frame=30",
                      f"model_dir={tmp_path / 'model'}", cwd=tmp_path, check=False)
    assert proc.returncode == 1
    scp = re.escape(str(demo_root / "train" / "feats.scp"))
    assert re.fullmatch(rf"stklia: error: {scp}:1: utterance '\S+' has 40 features per frame but the config says "
                        r"features_per_frame=30", proc.stderr.strip().splitlines()[-1])


def test_feature_dirs_of_another_dimension_than_the_features_config_are_refused(demo_root: Path,
                                                                                tmp_path: Path) -> None:
    """data=voxceleb takes features_per_frame from features=fbank80 (80; audio dirs, tests/test_configs.py):
    the demo's 40-dimensional feats.scp dirs are refused until data.features_per_frame says 40."""
    data = [f"data.train=[{demo_root / 'train'}]", f"data.test={demo_root / 'test'}",
            f"data.test_trials=[{demo_root / 'test' / 'trials'}]"]
    proc = run_stklia("train", "data=voxceleb", *data, *TINY_TRAINING, f"model_dir={tmp_path / 'model'}", cwd=tmp_path,
                      check=False)
    scp = re.escape(str(demo_root / "train" / "feats.scp"))
    assert re.fullmatch(rf"stklia: error: {scp}:1: utterance '\S+' has 40 features per frame but the config says "
                        r"features_per_frame=80", proc.stderr.strip().splitlines()[-1])
    composed = run_stklia("train", "data=voxceleb", *data, "data.features_per_frame=40", "--cfg", "job", cwd=tmp_path)
    assert "features_per_frame: 40" in composed.stdout


def test_missing_mandatory_value_and_typos_fail(tmp_path: Path) -> None:
    proc = run_stklia("train", "data=voxceleb", f"model_dir={tmp_path / 'm'}", cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "missing mandatory value 'data.train'" in proc.stderr
    assert not (tmp_path / "m").exists()


def _no_key(key: str, meant: str) -> str:
    return f"config: no key '{key}': did you mean {meant}? (all keys: --cfg job)"


MISSING_MODEL_DIR = "config: missing mandatory value 'model_dir': set it on the command line"
# a mistake on the command line -> its one line (never Hydra's advice to add a key with +key)
COMMAND_LINE_MISTAKES = {
    ("train", "num_iteration=10"): _no_key("num_iteration", "num_iterations"),
    ("train", "model.emb_sise=512"): _no_key("model.emb_sise", "model.emb_size"),
    ("train", "head=arcfase"): "config: 'arcfase' is not an option of head: did you mean arcface? (options: adacos, "
                               "amsoftmax, arcface, softmax, sphereface, subcenter_arcface)",
    ("train", "-m", "head=arcface,adacos", "optim.lr=0.1,0.2", "num_iteration=3"):
        _no_key("num_iteration", "num_iterations"),
    ("test", "model_dir=x", "checkpointt=3"): _no_key("checkpointt", "checkpoint"),
    ("test",): MISSING_MODEL_DIR,
    ("extract",): MISSING_MODEL_DIR,
    ("average",): MISSING_MODEL_DIR,
    ("export",): MISSING_MODEL_DIR,
}


@pytest.mark.parametrize("command", COMMAND_LINE_MISTAKES, ids=" ".join)
def test_command_line_mistakes_get_one_line(command: tuple[str, ...], tmp_path: Path) -> None:
    proc = run_stklia(*command, cwd=tmp_path, check=False)
    assert proc.returncode == 1
    assert proc.stderr == f"stklia: error: {COMMAND_LINE_MISTAKES[command]}\n"
    assert not list(tmp_path.iterdir())  # nothing written: no run dir, no log, no .hydra/


@pytest.mark.parametrize(("setting", "message"), [
    ("num_workers=-1", "num_workers must be a whole number, 0 or more, not -1"),
    ("prefetch_factor=0", "prefetch_factor must be a whole number, 1 or more, not 0"),
    ("prefetch_factor=null", "prefetch_factor must be a whole number, 1 or more, not None"),
])
def test_loader_settings_that_cannot_work_are_one_line(setting: str, message: str, demo_root: Path,
                                                        tmp_path: Path) -> None:
    workers = "num_workers=2" if setting.startswith("prefetch") else "num_workers=0"  # prefetching needs workers
    proc = run_stklia("train", f"data.root={demo_root}", "data.prepare=null", workers, setting,
                      f"model_dir={tmp_path / 'm'}", cwd=tmp_path, check=False)
    assert proc.returncode == 1 and proc.stderr == f"stklia: error: config: {message}\n"
    assert not list(tmp_path.iterdir())


def test_lmft_of_a_head_without_margin_is_one_line(tmp_path: Path) -> None:
    for head, name in (("adacos", "AdaCos"), ("sphereface", "SphereFace")):
        proc = run_stklia("train", f"head={head}", "+stage=lmft", f"init_from={tmp_path / 'x'}", cwd=tmp_path,
                          check=False)
        assert proc.returncode == 1 and proc.stderr == (
            f"stklia: error: head: stklia.training.heads.{name} has no margin to enlarge: large-margin fine-tuning "
            "(+stage=lmft) is for the margin heads amsoftmax, arcface and subcenter_arcface\n")
    assert not list(tmp_path.iterdir())


def test_test_and_extract_reject_bad_input(kaldi_dir: Path, tmp_path: Path) -> None:
    proc = run_stklia("test", f"model_dir={tmp_path / 'nothing'}", cwd=tmp_path, check=False)
    assert proc.returncode == 1 and proc.stderr.strip().endswith("config.yaml: not found: is this a model directory "
                                                                 "written by stklia.train?")
    proc = run_stklia("extract", f"model_dir={tmp_path / 'nothing'}", "format=npy", cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "'npy' is not one of ark, txt, pt" in proc.stderr


def test_merging_dirs_with_a_shared_utterance_fails(kaldi_dir: Path, demo_root: Path) -> None:
    with pytest.raises(InputError, match=rf"{re.escape(str(kaldi_dir / 'feats.scp'))}:1: utterance '\S+' also appears"):
        load_data([demo_root / "test", kaldi_dir])
    merged = load_data([demo_root / "train", demo_root / "test"])
    assert len(merged.speakers) == len(load_data(demo_root / "train").speakers) + len(load_data(kaldi_dir).speakers)
    assert read_trials(kaldi_dir / "trials", merged.feats).labels.dtype.kind == "i"


# name -> (how to break an enrollment dir + its trials, extra overrides, file named in the error, line, words)
ENROLLMENT_BREAKAGES = {
    "unknown enrolled speaker": (lambda d: _set_line(d / "trials", 2, lambda ls: ls[2].replace(ls[2].split()[1], "x")),
                                 [], "trials", 3, "'x' is neither an enrollment speaker nor an utterance"),
    "enrollment spk2utt disagrees": (lambda d: _set_line(d / "spk2utt", 0, lambda ls: f"{ls[1].split()[0]} "
                                                                                    f"{ls[0].split()[1]}"),
                                     [], "spk2utt", 1, "disagrees with"),
    "missing cohort": (lambda d: None, ["data.cohort=/nonexistent/cohort"], "/nonexistent/cohort", None,
                       "no such data directory"),
    "top-N of one": (lambda d: None, ["data.asnorm_top_n=1"], "data.asnorm_top_n", None, "at least 2"),
}


@pytest.mark.parametrize("case", ENROLLMENT_BREAKAGES)
def test_train_rejects_bad_enrollment_and_cohort(case: str, demo_root: Path, tmp_path: Path) -> None:
    breaks, overrides, filename, line, words = ENROLLMENT_BREAKAGES[case]
    enroll = make_enrollment(demo_root / "test", tmp_path / "enroll")
    breaks(enroll)
    model_dir = tmp_path / "model"
    proc = run_stklia("train", *demo_data_overrides(demo_root), *TINY_TRAINING, f"model_dir={model_dir}",
                      f"data.test_enroll={enroll}", f"data.test_trials=[{enroll / 'trials'}]", *overrides,
                      cwd=tmp_path, check=False)
    assert proc.returncode == 1
    error = proc.stderr.strip().splitlines()[-1]
    where = re.escape(filename if filename.startswith(("/", "data.")) else str(enroll / filename))
    where += f":{line}" if line else ""
    assert re.fullmatch(rf"stklia: error: {where}: .*{re.escape(words)}.*", error), error
    assert not model_dir.exists() or not {p.name for p in model_dir.iterdir()} & {"config.yaml", "results"}


def test_kaldi_trial_form_reads_as_the_label_first_form(kaldi_dir: Path) -> None:
    data = load_data(kaldi_dir)
    lines = (kaldi_dir / "trials").read_text().splitlines()
    (kaldi_dir / "kaldi_trials").write_text("".join(f"{kaldi_trial(line)}\n" for line in lines))
    label_first, kaldi = (read_trials(kaldi_dir / name, data.feats) for name in ("trials", "kaldi_trials"))
    assert kaldi.labels.tolist() == label_first.labels.tolist() == [int(line[0]) for line in lines]
    assert (kaldi.enroll, kaldi.test) == (label_first.enroll, label_first.test)
    assert set(kaldi.labels.tolist()) == {0, 1}


def test_non_finite_training_features_stop_the_run_in_one_line(demo_root: Path, tmp_path: Path) -> None:
    train = Path(shutil.copytree(demo_root / "train", tmp_path / "train"))
    data = load_data(train)
    utt = data.utts[BatchSchedule(data.speaker_labels(), 8, 6, seed=0).batch(0)[0][0]]  # in the first batch
    line = poison_features(train, utt, math.inf)  # NaN: test_cli, test_check_data
    model_dir = tmp_path / "model"
    proc = run_stklia("train", *demo_data_overrides(demo_root), *TINY_TRAINING, f"data.train=[{train}]",
                      "num_workers=1", f"model_dir={model_dir}", cwd=tmp_path, check=False)  # read by a worker
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"stklia: error: {train / 'feats.scp'}:{line}: features of '{utt}' hold non-finite values (NaN or Inf), "
        "first at frame 3")
    assert not (model_dir / "checkpoints").exists()
