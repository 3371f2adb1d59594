"""Scoring back-ends and calibration from the command line, on a tiny trained demo model.

Each score file of `stklia.test` is recomputed here from embeddings written by `stklia.extract`
(a separate command) with the back-end rebuilt in the test: the normalisations from their
definitions with numpy, PLDA from the library's PldaBackend (checked against scipy densities in
test_plda.py), AS-norm as a loop over cohort speakers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import kaldiio
import numpy as np
import pytest

from stklia.data.kaldi import load_data, load_data_dir
from stklia.data.trials import read_trials
from stklia.evaluation.backends.fitting import ScoringOptions, prepare_scoring
from stklia.evaluation.backends.plda import PldaBackend
from stklia.evaluation.calibration import LinearCalibration
from stklia.evaluation.metrics import compute_cllr

from conftest import TINY_TRAINING, demo_data_overrides, results_written, run_stklia, table_rows

STEP = "step_00000006"


@pytest.fixture(scope="module")
def extracted(trained: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The train and test splits (test + test_noisy) extracted by stklia.extract into <dir>/<split>/."""
    out = tmp_path_factory.mktemp("emb")
    for split in ("train", "test"):
        run_stklia("extract", f"model_dir={trained}", f"data={split}", "format=ark", f"out_dir={out / split}",
                   "progress=false", cwd=out)
    return out


@pytest.fixture(scope="module")
def embeddings(extracted: Path) -> dict[str, dict[str, np.ndarray]]:
    """utt -> embedding of the train and test splits."""
    return {split: {u: np.asarray(v, dtype=np.float64)
                    for u, v in kaldiio.load_scp(str(extracted / split / "embeddings.scp")).items()}
            for split in ("train", "test")}


def quality_table(path: Path) -> dict[str, dict[str, float]]:
    """A quality file read by hand: id -> measure -> value."""
    header, *lines = [line.split() for line in path.read_text().splitlines()]
    return {side: dict(zip(header[1:], map(float, values))) for side, *values in lines}


def test_extract_records_frames_and_norms(extracted: Path, embeddings, demo_root: Path) -> None:
    data = load_data_dir(demo_root / "train")
    quality = quality_table(extracted / "train" / "quality")
    assert sorted(quality) == data.utts
    for utt in data.utts:
        assert quality[utt]["frames"] == len(data.load(utt))
        assert quality[utt]["norm"] == pytest.approx(np.linalg.norm(embeddings["train"][utt]), rel=1e-5)


def scores_of(path: Path) -> tuple[list[tuple[str, str]], np.ndarray]:
    lines = [line.split() for line in path.read_text().splitlines()]
    return [(a, b) for a, b, _ in lines], np.array([float(s) for *_, s in lines])


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def asnorm_loop(score: float, sides: tuple[np.ndarray, np.ndarray], cohort_scores) -> float:
    """AS-norm of one trial: each side's cohort scores (all of them: top_n >= the 6 cohort speakers)."""
    return 0.5 * sum((score - np.mean(cohort_scores(x))) / np.std(cohort_scores(x)) for x in sides)


def speaker_means(emb: dict[str, np.ndarray], utt2spk: dict[str, str]) -> tuple[np.ndarray, np.ndarray]:
    speakers = sorted(set(utt2spk.values()))
    groups = [[emb[u] for u in sorted(emb) if utt2spk[u] == s] for s in speakers]
    return np.array([np.mean(g, axis=0) for g in groups]), np.array([len(g) for g in groups])


def test_plda_backend_scores_as_the_kaldi_recipe(trained: Path, demo_root: Path, embeddings, tmp_path: Path) -> None:
    proc = run_stklia("test", f"model_dir={trained}", "scoring.backend=plda", "scoring.lda_dim=4", "progress=false",
                      cwd=tmp_path)
    name = f"{STEP}-plda-lda4"
    saved = json.loads((trained / "results" / f"{name}.json").read_text())
    stored = trained / "backends" / STEP / "plda-lda4_train.npz"
    assert saved["scoring"]["files"] == {"plda": str(stored)} and saved["scoring"]["backend"] == "plda"
    assert f"Test results of {trained} at {name}" in proc.stdout
    # The recipe by hand from the extracted embeddings: PLDA on the train split, then every trial.
    train, test = embeddings["train"], embeddings["test"]
    utt2spk = load_data_dir(demo_root / "train").utt2spk
    backend = PldaBackend.fit(np.stack([train[u] for u in sorted(train)]), [utt2spk[u] for u in sorted(train)], 4)
    ids = sorted(test)
    enroll, probe = backend.scoring_tables(np.stack([test[u] for u in ids]))
    row = {u: i for i, u in enumerate(ids)}
    means, counts = speaker_means(train, utt2spk)
    cohort = backend.scoring_tables(means, counts)[0]  # cohort speakers enrolled with their utterances

    def llrs_against_cohort(u: str) -> np.ndarray:
        return cohort @ probe[row[u]]

    for summary in saved["results"]:
        pairs, raw = scores_of(Path(summary["files"]["raw_scores"]))
        expected = [enroll[row[a]] @ probe[row[b]] for a, b in pairs]
        np.testing.assert_allclose(raw, expected, rtol=1e-5, atol=2e-5)
        assert np.ptp(raw) > 1  # LLRs, not cosines
        _, normed = scores_of(Path(summary["files"]["asnorm_scores"]))
        expected = [asnorm_loop(s, (a, b), llrs_against_cohort) for s, (a, b) in zip(expected, pairs)]
        np.testing.assert_allclose(normed, expected, rtol=1e-4, atol=1e-4)
    # A second test reuses the stored back-end, and scores the same.
    before = stored.stat().st_mtime_ns, stored.with_suffix(".json").read_text()
    first = Path(saved["results"][0]["files"]["raw_scores"]).read_text()
    again = run_stklia("test", f"model_dir={trained}", "scoring.backend=plda", "scoring.lda_dim=4", "progress=false",
                       cwd=tmp_path)
    assert (stored.stat().st_mtime_ns, stored.with_suffix(".json").read_text()) == before
    assert Path(saved["results"][0]["files"]["raw_scores"]).read_text() == first
    assert "reusing" in again.stdout


@pytest.mark.parametrize("kind", ["mean", "whiten"])
def test_normalised_cosine(trained: Path, demo_root: Path, embeddings, tmp_path: Path, kind: str) -> None:
    proc = run_stklia("test", f"model_dir={trained}", f"scoring.normalize={kind}", "asnorm_top_n=0", "progress=false",
                      cwd=tmp_path)
    summary, _ = results_written(proc)  # asnorm_top_n=0: other settings than the experiment's, a name of their own
    assert summary.name.startswith(f"{STEP}-") and summary.name.endswith(f"-{kind}.json")
    saved = json.loads(summary.read_text())
    assert saved["scoring"]["files"] == {"normalizer": str(trained / "backends" / STEP / f"{kind}_train.npz")}
    train = np.stack(list(embeddings["train"].values()))
    mean = train.mean(axis=0)
    if kind == "mean":
        project = np.eye(len(mean))
    else:  # any whitening gives the same cosines: the inverse square root of the covariance
        values, vectors = np.linalg.eigh(np.cov(train.T, bias=True))
        project = vectors @ np.diag(values**-0.5) @ vectors.T
    test = {u: project @ (e - mean) for u, e in embeddings["test"].items()}
    for summary in saved["results"]:
        assert set(summary["files"]) == {"raw_scores", "det", "quality"}  # AS-norm off
        pairs, scores = scores_of(Path(summary["files"]["raw_scores"]))
        np.testing.assert_allclose(scores, [cosine(test[a], test[b]) for a, b in pairs], atol=2e-5)


def test_the_training_data_is_embedded_once_for_normalisation_and_as_norm(trained: Path, demo_root: Path,
                                                                         tmp_path: Path) -> None:
    """The demo's AS-norm cohort is its training data, which scoring.data also names: one extraction serves both
    (the progress lines of each extraction start at 0/<utterances>); a second test reuses the stored mean and the
    cohort's stored speaker means, and embeds no training utterance at all."""
    model_dir = Path(shutil.copytree(trained, tmp_path / "model", ignore=shutil.ignore_patterns("backends")))
    train = len(load_data_dir(demo_root / "train").utts)

    def train_extractions() -> int:
        proc = run_stklia("test", f"model_dir={model_dir}", "scoring.normalize=mean", "scoring.data=train",
                          f"cohort={demo_root / 'train'}", "asnorm_top_n=5", cwd=tmp_path)
        results = json.loads(results_written(proc)[0].read_text())["results"]
        assert all("asnorm_scores" in summary["files"] for summary in results)
        starts = [line for line in proc.stderr.splitlines() if line.startswith("embeddings:") and "| 0/" in line]
        return sum(f"| 0/{train} " in line for line in starts)

    assert train_extractions() == 1
    stored = model_dir / "backends" / STEP / "cohort_train.npz"
    record = json.loads(stored.with_suffix(".json").read_text())
    assert record["data"]["speakers"] == len(load_data_dir(demo_root / "train").speakers)
    assert train_extractions() == 0


def test_statistics_are_refitted_when_the_data_changes(demo_root: Path, tmp_path: Path) -> None:
    calls = []

    def embed(data) -> np.ndarray:  # stands for the generator: one random embedding per utterance
        calls.append(len(data.utts))
        return np.random.default_rng(len(data.utts)).normal(size=(len(data.utts), 6))

    options = ScoringOptions(backend="plda", normalize="mean", lda_dim=3)
    train, other = load_data_dir(demo_root / "train"), load_data_dir(demo_root / "test")
    first = prepare_scoring(options, train, "train", embed, tmp_path)
    assert set(calls) == {len(train.utts)}  # (an Embedder embeds a set once: see above)
    fitted = len(calls)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mean_train.json", "mean_train.npz",
                                                         "plda-lda3+mean_train.json", "plda-lda3+mean_train.npz"]
    again = prepare_scoring(options, train, "train", embed, tmp_path)
    assert len(calls) == fitted  # reused, not embedded again
    np.testing.assert_array_equal(again.scorer.plda.plda.psi, first.scorer.plda.plda.psi)
    changed = prepare_scoring(options, other, "train", embed, tmp_path)  # other data under the same name
    assert len(calls) > fitted and set(calls[fitted:]) == {len(other.utts)}
    fitted = len(calls)
    assert not np.array_equal(changed.scorer.normalizer.mean, first.scorer.normalizer.mean)
    assert not np.array_equal(changed.scorer.plda.plda.psi, first.scorer.plda.plda.psi)
    prepare_scoring(ScoringOptions(backend="plda", normalize="mean", lda_dim=3, num_em_iters=3), other, "train",
                    embed, tmp_path)
    assert len(calls) > fitted and (tmp_path / "plda-lda3-em3+mean_train.npz").is_file()


@pytest.mark.parametrize("backend", ["plda", "whiten"])
def test_back_ends_adapted_to_unlabelled_data(trained: Path, demo_root: Path, embeddings, tmp_path: Path,
                                              backend: str) -> None:
    """scoring.adapt: the statistics fitted on the train split, adapted to unlabelled test data (PLDA: the noisy
    list's; whitening: the whole test split's, which has more utterances than the embeddings have dimensions),
    stored beside the fitted ones with a record of both; the scores recomputed here from the extracted embeddings
    (PLDA: PldaBackend.adapt, checked against Kaldi's formulas in test_plda.py; whitening: the in-domain data's
    own)."""
    plda = backend == "plda"
    adapt, name = (str(demo_root / "test_noisy"), "test_noisy") if plda else ("test", "test")
    dirs = [str(demo_root / "test_noisy")] if plda else [str(demo_root / "test"), str(demo_root / "test_noisy")]
    options = ["scoring.backend=plda", "scoring.lda_dim=4"] if plda else ["scoring.normalize=whiten"]
    proc = run_stklia("test", f"model_dir={trained}", *options, f"scoring.adapt={adapt}",
                      "scoring.within_covar_scale=0.75", "scoring.between_covar_scale=0.25", "asnorm_top_n=0",
                      "progress=false", cwd=tmp_path)
    summary, _ = results_written(proc)
    stem, key = ("plda-lda4", "plda") if plda else ("whiten", "normalizer")
    assert summary.name.endswith(f"-{stem}-adapt_{name}.json")
    saved = json.loads(summary.read_text())
    store = trained / "backends" / STEP
    adapted = store / f"{stem}_train-adapt_{name}.npz"
    scoring = saved["scoring"]
    assert scoring["files"] == {key: str(adapted)}
    assert scoring["fitted_files"] == {key: str(store / f"{stem}_train.npz")}
    assert scoring["adapt_dirs"] == dirs and scoring["data_dirs"] == [str(demo_root / "train")]
    record = json.loads(adapted.with_suffix(".json").read_text())
    assert record["fitted"]["data"]["dirs"] == [str(demo_root / "train")] and record["adapt"]["data"]["dirs"] == dirs
    assert record["adapt"].get("within_covar_scale") == (0.75 if plda else None)

    train_utts, test = sorted(embeddings["train"]), embeddings["test"]
    train = np.stack([embeddings["train"][u] for u in train_utts])
    in_domain = np.stack([test[u] for u in sorted(test) if plda is False or u.endswith("-noisy")])
    assert len(in_domain) == len(load_data_dir(demo_root / "test_noisy").utts) * (1 if plda else 2)
    if plda:
        utt2spk = load_data_dir(demo_root / "train").utt2spk
        adapted_backend = PldaBackend.fit(train, [utt2spk[u] for u in train_utts], 4).adapt(in_domain, 0.75, 0.25)
        ids = sorted(test)
        enroll, probe = adapted_backend.scoring_tables(np.stack([test[u] for u in ids]))
        row = {u: i for i, u in enumerate(ids)}

        def score(a: str, b: str) -> float:
            return enroll[row[a]] @ probe[row[b]]
    else:  # the in-domain data's mean and symmetric whitening (any whitening gives the same cosines)
        values, vectors = np.linalg.eigh(np.cov(in_domain.T, bias=True))
        project = vectors @ np.diag(values**-0.5) @ vectors.T
        white = {u: project @ (e - in_domain.mean(axis=0)) for u, e in test.items()}

        def score(a: str, b: str) -> float:
            return cosine(white[a], white[b])
    for result in saved["results"]:
        pairs, scores = scores_of(Path(result["files"]["raw_scores"]))
        np.testing.assert_allclose(scores, [score(a, b) for a, b in pairs], rtol=1e-5, atol=2e-5)


def markdown_rows(text: str) -> list[list[str]]:
    """The body rows of the markdown tables in a command's output."""
    return [row for row in table_rows(text) if row[0] != "trials"]


def test_one_test_compares_back_ends_calibrated_with_qmf_and_fused(trained: Path, demo_root: Path, embeddings,
                                                                    tmp_path: Path) -> None:
    """Cosine and PLDA in one run, calibrated (with and without QMF) and fused on the noisy list: one table, a
    quality file whose measures are recomputed here, and maps that equal fits on the written scores and measures."""
    proc = run_stklia("test", f"model_dir={trained}", "compare=[{backend:plda,lda_dim:4}]", "asnorm_top_n=5",
                      "calibration.trials=test_noisy_trials", "calibration.qmf=[duration,norm,cohort_mean]",
                      "progress=false", cwd=tmp_path)
    wrote = [line.removeprefix("wrote ").split(" and ")[0] for line in proc.stdout.splitlines()
             if line.startswith("wrote ")]
    cosine_summary, plda_summary, fused_summary = (json.loads(Path(path).read_text()) for path in wrote)
    assert Path(wrote[1]).name.endswith("-plda-lda4.json") and Path(wrote[2]).name.endswith(
        "-fused-cosine_plda-lda4.json")
    kinds = ["raw", "asnorm", "asnorm_calibrated", "asnorm_qmf"]
    expected = [[name, system, kind] for name in ("test/trials", "test_noisy/trials")
                for system, system_kinds in (("cosine", kinds), ("plda-lda4", kinds), ("fused", ["fused"]))
                for kind in system_kinds]
    assert [row[:3] for row in markdown_rows(proc.stdout)] == expected

    # The quality of the sides, by hand: frames of the features, norms and top-5 cosines against the cohort's
    # speaker means of the extracted embeddings.
    data = load_data([demo_root / "test", demo_root / "test_noisy"])
    quality = quality_table(Path(cosine_summary["results"][0]["files"]["quality"]))
    train_utt2spk = load_data_dir(demo_root / "train").utt2spk
    means, _ = speaker_means(embeddings["train"], train_utt2spk)
    cohort = means / np.linalg.norm(means, axis=1, keepdims=True)
    for utt, emb in embeddings["test"].items():
        assert quality[utt]["frames"] == len(data.load(utt))
        assert quality[utt]["norm"] == pytest.approx(np.linalg.norm(emb), rel=1e-5)
        top = np.sort(cohort @ (emb / np.linalg.norm(emb)))[-5:]
        assert quality[utt]["cohort_mean"] == pytest.approx(top.mean(), abs=1e-5)

    def columns(summary: dict, kind: str) -> tuple[np.ndarray, np.ndarray]:
        trials = read_trials(summary["trials"], None)
        return scores_of(Path(summary["files"][f"{kind}_scores"]))[1], trials

    for summary in (cosine_summary, plda_summary):
        record = summary["scoring"]["calibration"]
        assert record["fit"] == str(demo_root / "test_noisy" / "trials")
        fit_scores, trials = columns(summary["results"][1], "asnorm")
        quality = quality_table(Path(summary["results"][1]["files"]["quality"]))  # its own cohort scores
        measures = np.array([[min(quality[a][m], quality[b][m]), max(quality[a][m], quality[b][m])]
                             for a, b in zip(trials.enroll, trials.test) for m in ("frames", "norm", "cohort_mean")])
        measures = measures.reshape(len(trials.labels), 6)
        measures[:, :2] = np.log(measures[:, :2])
        for name, features in (("asnorm_calibrated", fit_scores),
                               ("asnorm_qmf", np.column_stack([fit_scores, measures]))):
            reference = LinearCalibration.fit(features, trials.labels)
            np.testing.assert_allclose(record[name]["weights"], reference.weights, rtol=1e-3, atol=1e-3)
            assert record[name]["columns"] == ["asnorm", *(f"{m}_{side}" for m in ("duration", "norm", "cohort_mean")
                                                            for side in ("min", "max"))][:len(reference.weights)]
        for result in summary["results"]:
            scores, _ = columns(result, "asnorm")
            calibrated, _ = columns(result, "asnorm_calibrated")
            cal = record["asnorm_calibrated"]
            np.testing.assert_allclose(calibrated, cal["weights"][0] * scores + cal["offset"], atol=2e-5)
        fitted = summary["results"][1]
        assert fitted["asnorm_qmf_cllr"] <= fitted["asnorm_calibrated_cllr"] + 1e-4  # QMF does all calibration does
    stacked = np.column_stack([columns(s["results"][1], "asnorm")[0] for s in (cosine_summary, plda_summary)])
    fused = fused_summary["scoring"]["calibration"]["fused"]
    reference = LinearCalibration.fit(stacked, read_trials(demo_root / "test_noisy" / "trials", None).labels)
    np.testing.assert_allclose(fused["weights"], reference.weights, rtol=1e-3, atol=1e-3)
    fitted = fused_summary["results"][1]
    assert fitted["fused_cllr"] <= min(s["results"][1]["asnorm_calibrated_cllr"]
                                       for s in (cosine_summary, plda_summary)) + 1e-4


@pytest.fixture(scope="module")
def second_model(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another tiny model: the `trained` run's recipe from another seed."""
    model_dir = tmp_path_factory.mktemp("second") / "model"
    run_stklia("train", *demo_data_overrides(demo_root), *TINY_TRAINING, "seed=1", f"model_dir={model_dir}",
               cwd=model_dir.parent)
    return model_dir


def test_fusion_of_two_models_is_no_worse_than_the_better_one(trained: Path, second_model: Path, demo_root: Path,
                                                              tmp_path: Path) -> None:
    """Two demo models scored on the eval list, fused by stklia.calibrate on it: no worse in Cllr than the better
    one calibrated alone; the fusion applied to the test list; the weights those of a fit on the two files."""
    eval_dir = demo_root / "eval"
    fit = []
    for model in (trained, second_model):
        proc = run_stklia("test", f"model_dir={model}", f"test={eval_dir}", f"test_trials=[{eval_dir / 'trials'}]",
                          "asnorm_top_n=0", "progress=false", cwd=tmp_path)
        fit.append(results_written(proc)[1] / "eval_trials.scores")
    apply = [model / "results" / STEP / "test_trials.scores" for model in (trained, second_model)]
    proc = run_stklia("calibrate", f"fit.scores=[{fit[0]},{fit[1]}]", f"fit.trials={eval_dir / 'trials'}",
                      f"apply=[[{apply[0]},{apply[1]}]]", f"apply_trials=[{demo_root / 'test' / 'trials'}]",
                      cwd=tmp_path)
    assert [row[:2] for row in markdown_rows(proc.stdout)] == [
        [f"{name}/trials", kind] for name in ("eval", "test") for kind in ("score1", "score2", "fused")]
    record = json.loads(fit[0].with_name("eval_trials.fused.json").read_text())
    labels = read_trials(eval_dir / "trials", None).labels
    scores = np.column_stack([scores_of(path)[1] for path in fit])
    reference = LinearCalibration.fit(scores, labels)
    np.testing.assert_allclose(record["weights"], reference.weights, rtol=1e-9)
    assert record["columns"] == ["score1", "score2"] and record["fit"]["scores"] == [str(p) for p in fit]
    fused = scores_of(fit[0].with_name("eval_trials.fused.scores"))[1]
    alone = [compute_cllr(LinearCalibration.fit(column, labels)(column), labels) for column in scores.T]
    assert compute_cllr(fused, labels) <= min(alone) + 1e-6
    pairs, applied = scores_of(apply[0].with_name("test_trials.fused.scores"))
    test_scores = np.column_stack([scores_of(path)[1] for path in apply])
    np.testing.assert_allclose(applied, reference(test_scores), atol=2e-5)
    assert pairs == scores_of(apply[0])[0]


def test_fusion_and_qmf_reject_bad_input_and_write_nothing(trained: Path, demo_root: Path, tmp_path: Path) -> None:
    results = trained / "results" / STEP
    first = Path(shutil.copy(results / "test_trials.scores", tmp_path / "a.scores"))
    lines = (results / "test_trials.asnorm.scores").read_text().splitlines()
    second = tmp_path / "b.scores"
    second.write_text("\n".join([*lines[:4], lines[5], lines[4], *lines[6:]]) + "\n")
    trials = demo_root / "test" / "trials"
    before = sorted(tmp_path.iterdir())

    def error(*overrides: str) -> str:
        proc = run_stklia("calibrate", f"fit.trials={trials}", *overrides, cwd=tmp_path, check=False)
        assert proc.returncode == 1 and sorted(tmp_path.iterdir()) == before
        return proc.stderr.strip().splitlines()[-1]

    a, b, _ = lines[5].split()
    assert error(f"fit.scores=[{first},{second}]").startswith(f"stklia: error: {second}:5: '{a} {b}' is not trial 5")
    assert error(f"fit.scores=[{first},{first}]", f"apply=[{first}]", f"apply_trials=[{trials}]") == (
        "stklia: error: apply: entry 1 has 1 score file(s) for the 2 system(s) of fit.scores")
    assert error(f"fit.scores={first}", "qmf=[duration]") == (
        f"stklia: error: {tmp_path / 'quality'}: no such file")
    (tmp_path / "quality").write_text("id frames\n")
    before = sorted(tmp_path.iterdir())
    utt = lines[0].split()[0]
    assert error(f"fit.scores={first}", "qmf=[duration]") == (
        f"stklia: error: {tmp_path / 'quality'}: no line for '{utt}', a side of trial 1 of {trials}")
    assert error(f"fit.scores=[{first},{first}]") == (  # what cannot be fitted: test_calibration.py
        f"stklia: error: {first}: the features score1, score2 are linearly dependent (one is a combination of the "
        "others): no unique fit")


def one_utterance_per_speaker(data_dir: Path, out: Path) -> Path:
    shutil.copytree(data_dir, out)
    utts = [line.split()[0] for line in (out / "utt2spk").read_text().splitlines()]
    (out / "utt2spk").write_text("".join(f"{u} {u}\n" for u in utts))
    (out / "spk2utt").write_text("".join(f"{u} {u}\n" for u in utts))
    return out


@pytest.mark.parametrize(("overrides", "message"), [
    (["scoring.backend=lda"], "scoring.backend: 'lda' is not one of cosine, plda"),
    (["scoring.normalize=center"], "scoring.normalize: 'center' is not one of none, mean, whiten"),
    (["scoring.lda_dim=4"], "scoring.lda_dim: a positive dimension, for scoring.normalize=whiten or "
                            "scoring.backend=plda only"),
    (["scoring.backend=plda", "scoring.data={singles}"], "scoring.data (singles): PLDA needs speakers with "
                                                        "several utterances: every speaker has one"),
    (["scoring.adapt=train"], "scoring.adapt: adapts the back-end's statistics: cosine scoring has none unless "
                              "scoring.normalize=mean or whiten (or use scoring.backend=plda)"),
    (["compare=[{{backend:plda,lda:4}}]"], "compare: entry 1: 'lda' is not a scoring key (one of backend, normalize, "
                                          "data, lda_dim, num_em_iters, adapt, within_covar_scale, "
                                          "between_covar_scale)"),
    (["calibration.trials=eval_trials"], "calibration.trials: 'eval_trials' is none of the test trial lists "
                                         "(test_trials, test_noisy_trials): give one's name or path"),
    (["calibration.trials=test_trials", "asnorm_top_n=0", "calibration.qmf=[cohort_mean]"],
     "calibration.qmf: cohort_mean needs AS-norm (a cohort and asnorm_top_n > 0)"),
])
def test_bad_scoring_options(trained: Path, demo_root: Path, tmp_path: Path, overrides: list[str], message: str
                             ) -> None:
    singles = one_utterance_per_speaker(demo_root / "train", tmp_path / "singles")
    proc = run_stklia("test", f"model_dir={trained}", *(o.format(singles=singles) for o in overrides),
                      "progress=false", cwd=tmp_path, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == f"stklia: error: {message}"


def test_calibrate_command(trained: Path, demo_root: Path, tmp_path: Path) -> None:
    results = trained / "results" / STEP  # written by the test at the end of training
    fit, other = results / "test_noisy_trials.scores", results / "test_trials.scores"
    fit_trials, other_trials = demo_root / "test_noisy" / "trials", demo_root / "test" / "trials"
    proc = run_stklia("calibrate", f"fit.scores={fit}", f"fit.trials={fit_trials}", f"apply=[{other}]",
                      f"apply_trials=[{other_trials}]", cwd=tmp_path)
    record = json.loads((results / "test_noisy_trials.calibrated.json").read_text())
    labels = read_trials(fit_trials, None).labels
    reference = LinearCalibration.fit(scores_of(fit)[1], labels)
    assert record["weights"] == [pytest.approx(reference.weights[0], rel=1e-9)]
    assert record["offset"] == pytest.approx(reference.offset, rel=1e-9, abs=1e-12)
    for summary, source in zip(record["results"], (fit, other)):
        out = source.with_name(source.name.replace(".scores", ".calibrated.scores"))
        assert summary["files"] == {"raw_scores": str(source), "calibrated_scores": str(out)}
        pairs, raw = scores_of(source)
        calibrated_pairs, calibrated = scores_of(out)
        assert calibrated_pairs == pairs
        np.testing.assert_allclose(calibrated, record["weights"][0] * raw + record["offset"], atol=1e-5)
        assert summary["calibrated_eer"] == pytest.approx(summary["eer"])  # a monotonic map
        assert summary["calibrated_cllr"] == pytest.approx(compute_cllr(calibrated, read_trials(
            summary["trials"], None).labels), abs=1e-4)
        assert f"{summary['calibrated_cllr']:.4f}" in proc.stdout
    fitted = record["results"][0]
    assert fitted["calibrated_cllr"] < fitted["cllr"]  # the identity is one of the maps the fit tried
    # Another prior, under another name: side by side with the first.
    first = (results / "test_trials.calibrated.scores").read_text()
    run_stklia("calibrate", f"fit.scores={fit}", f"fit.trials={fit_trials}", "prior=0.01", "name=p01", cwd=tmp_path)
    other_record = json.loads((results / "test_noisy_trials.p01.json").read_text())
    reference = LinearCalibration.fit(scores_of(fit)[1], labels, prior=0.01)
    assert (other_record["weights"], other_record["prior"]) == ([pytest.approx(reference.weights[0], rel=1e-9)], 0.01)
    assert (results / "test_noisy_trials.p01.scores").is_file()
    assert (results / "test_trials.calibrated.scores").read_text() == first
    assert list(tmp_path.iterdir()) == []  # Hydra writes nothing of its own


def test_calibrate_rejects_mismatched_scores_and_writes_nothing(trained: Path, demo_root: Path, tmp_path: Path
                                                                ) -> None:
    lines = (trained / "results" / STEP / "test_trials.scores").read_text().splitlines()
    scores = tmp_path / "swapped.scores"
    scores.write_text("\n".join([lines[0], lines[2], lines[1], *lines[3:]]) + "\n")
    trials = demo_root / "test" / "trials"
    proc = run_stklia("calibrate", f"fit.scores={scores}", f"fit.trials={trials}", cwd=tmp_path, check=False)
    a, b, _ = lines[2].split()
    expected_a, expected_b, _ = lines[1].split()
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"stklia: error: {scores}:2: '{a} {b}' is not trial 2 of {trials} ('{expected_a} {expected_b}')")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["swapped.scores"]
    proc = run_stklia("calibrate", f"fit.scores={scores}", f"fit.trials={trials}", f"apply=[{scores}]", cwd=tmp_path,
                      check=False)
    assert proc.stderr.strip().splitlines()[-1] == ("stklia: error: apply_trials: 0 trial lists for the 1 score "
                                                    "files of apply")
