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

from stklia.data.kaldi import load_data_dir
from stklia.data.trials import read_trials
from stklia.evaluation.backends.fitting import ScoringOptions, prepare_scoring
from stklia.evaluation.backends.plda import PldaBackend
from stklia.evaluation.calibration import LinearCalibration
from stklia.evaluation.metrics import compute_cllr

from conftest import results_written, run_stklia

STEP = "step_00000006"


@pytest.fixture(scope="module")
def embeddings(trained: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, np.ndarray]]:
    """utt -> embedding of the train and test splits (test + test_noisy), by stklia.extract."""
    out = tmp_path_factory.mktemp("emb")
    for split in ("train", "test"):
        run_stklia("extract", f"model_dir={trained}", f"data={split}", "format=ark", f"out_dir={out / split}",
                   "progress=false", cwd=out)
    return {split: {u: np.asarray(v, dtype=np.float64)
                    for u, v in kaldiio.load_scp(str(out / split / "embeddings.scp")).items()}
            for split in ("train", "test")}


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
