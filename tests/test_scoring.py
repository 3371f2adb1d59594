"""Scoring: cosine trials, speaker models, AS-norm, DET curves and result files.

Each is checked against a hand-worked case and/or an independent per-trial float64 loop written
here; evaluate() end to end against embeddings of the plain forward pass, one utterance at a time.
"""

from __future__ import annotations

import json
import re
import tracemalloc
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
from scipy.special import ndtri

from stklia.core.errors import InputError
from stklia.data.features import subtract_mean
from stklia.data.kaldi import load_data
from stklia.data.trials import EvalData, Trials, read_trials, trials_name
from stklia.evaluation import metrics, scoring
from stklia.evaluation.backends.normalize import unit
from stklia.evaluation.backends.scorer import Scorer
from stklia.evaluation.det import MAX_POINTS, det_curve, det_figure
from stklia.evaluation.embeddings import Embedder, Extraction
from stklia.evaluation.results import format_results, write_results
from stklia.evaluation.scoring import asnorm, asnorm_stats, evaluate, trial_scores

from conftest import alone, make_enrollment, tiny_resnet

# --------------------------------------------------------------------------
# Independent references: one trial at a time, float64
# --------------------------------------------------------------------------


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def loop_asnorm(score: float, a: np.ndarray, b: np.ndarray, cohort: list[np.ndarray], top_n: int) -> float:
    """AS-norm of one trial: each side's top_n cohort cosines give its mean and (population) std."""
    sides = []
    for x in (a, b):
        top = sorted((cosine(x, c) for c in cohort), reverse=True)[:top_n]
        mean = sum(top) / len(top)
        std = (sum((t - mean) ** 2 for t in top) / len(top)) ** 0.5
        sides.append((score - mean) / std)
    return 0.5 * (sides[0] + sides[1])


def loop_model(embeddings: list[np.ndarray]) -> np.ndarray:
    """A speaker model: mean of length-normalised embeddings, length-normalised."""
    mean = sum(e / np.linalg.norm(e) for e in np.asarray(embeddings, dtype=np.float64)) / len(embeddings)
    return mean / np.linalg.norm(mean)


# --------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------


def test_cosine_scores_match_a_direct_loop() -> None:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(50, 24)) * rng.uniform(0.1, 10, size=(50, 1))  # lengths vary
    left, right = rng.integers(0, 50, 1000), rng.integers(0, 50, 1000)
    table = unit(emb).astype(np.float32)
    got = trial_scores(table, table, left, right, chunk=77)  # several chunks, a ragged last
    expected = [cosine(emb[a], emb[b]) for a, b in zip(left, right)]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_speaker_model_worked_example() -> None:
    # A: [3, 4] -> [.6, .8] and [0, 2] -> [0, 1]; mean [.3, .9]; normalised [.3, .9] / sqrt(.9).
    # B: [-2, 0] -> [-1, 0].
    scorer = Scorer()  # cosine
    names, rows, counts = scorer.speaker_models(np.array([[0.0, 2.0], [-2.0, 0.0], [3.0, 4.0]]), ["A", "B", "A"])
    assert names == ["A", "B"] and counts.tolist() == [2, 1]
    models, same = scorer.tables(rows, counts)
    assert models is same  # cosine: one table for both sides
    np.testing.assert_allclose(models, [[0.3 / np.sqrt(0.9), 0.9 / np.sqrt(0.9)], [-1.0, 0.0]], atol=1e-7)


def test_asnorm_worked_example() -> None:
    # e = [1, 0] scores [1, .6, 0, -1] against the cohort: top 2 = {1, .6}, mean .8, std .2.
    # t = [0, 1] scores [0, .8, 1, 0]: top 2 = {1, .8}, mean .9, std .1.
    # Raw e.t = 0 -> AS-norm 0.5 * ((0 - .8) / .2 + (0 - .9) / .1) = 0.5 * (-4 - 9) = -6.5.
    table = np.array([[1.0, 0.0], [0.0, 1.0]])
    cohort = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]])
    mean, std = asnorm_stats(table, cohort, top_n=2)
    np.testing.assert_allclose(mean, [0.8, 0.9], atol=1e-12)
    np.testing.assert_allclose(std, [0.2, 0.1], atol=1e-12)
    left, right = np.array([0]), np.array([1])
    scores = trial_scores(table, table, left, right)
    assert scores.tolist() == [0.0]
    np.testing.assert_allclose(asnorm(scores, (mean, std), left, right), [-6.5], atol=1e-12)
    # top_n beyond the cohort size uses the whole cohort (plain S-norm); fewer than 2 is meaningless
    np.testing.assert_allclose(asnorm_stats(table, cohort, top_n=100)[0], [0.15, 0.45], atol=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        asnorm_stats(table, cohort, top_n=1)


def test_asnorm_memory_is_bounded_by_its_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cohort scores are computed ASNORM_CHUNK_BYTES at a time: what asnorm_stats allocates (numpy's
    allocations, traced) stays near that bound, not the (rows x cohort) matrix, and the statistics do not change."""
    rng = np.random.default_rng(3)
    table = unit(rng.normal(size=(3000, 16))).astype(np.float32)
    cohort = unit(rng.normal(size=(4000, 16))).astype(np.float32)
    whole = asnorm_stats(table, cohort, 50, chunk=len(table))  # one chunk: the 48 MB matrix of all scores
    monkeypatch.setattr(scoring, "ASNORM_CHUNK_BYTES", 2**20)
    tracemalloc.start()
    try:
        chunked = asnorm_stats(table, cohort, 50)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    for a, b in zip(chunked, whole):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    # 1 MiB of scores, the transposed cohort (256 kB), the outputs (48 kB) and a chunk's top 50 in float64
    assert peak < 2**20 + cohort.nbytes + 2 * 8 * len(table) + 8 * 50 * (2**20 // (4 * len(cohort))) + 2**17


def test_asnorm_matches_an_independent_loop() -> None:
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(30, 8))
    cohort = unit(rng.normal(size=(50, 8)))
    left, right = rng.integers(0, 30, 200), rng.integers(0, 30, 200)
    table = unit(emb).astype(np.float32)
    stats = asnorm_stats(table, cohort, top_n=7, chunk=4)
    got = asnorm(trial_scores(table, table, left, right), stats, left, right)
    expected = [loop_asnorm(cosine(emb[a], emb[b]), emb[a], emb[b], list(cohort), 7) for a, b in zip(left, right)]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ties", [False, True])
def test_det_curve_matches_brute_force(ties: bool) -> None:
    rng = np.random.default_rng(5)
    labels = (rng.random(300) < 0.3).astype(int)
    scores = rng.normal(size=300) + 1.5 * labels
    if ties:
        scores = np.round(scores, 1)
    false_alarm, miss = det_curve(scores, labels)
    thresholds = [*np.unique(scores), np.inf]  # every distinct decision "target iff score >= t"
    tar, non = scores[labels == 1], scores[labels == 0]
    np.testing.assert_allclose(false_alarm, [np.mean(non >= t) for t in thresholds], atol=1e-12)
    np.testing.assert_allclose(miss, [np.mean(tar < t) for t in thresholds], atol=1e-12)


def test_det_figure_of_many_trials_is_thinned_and_marks_the_eer() -> None:
    rng = np.random.default_rng(2)
    labels = (rng.random(100_000) < 0.1).astype(int)
    systems = {"a": rng.normal(size=100_000) + 2 * labels, "b": rng.normal(size=100_000) + 3 * labels}
    ax = det_figure(systems, labels, "title").axes[0]
    curves = [line for line in ax.lines if "EER" in line.get_label()]
    assert len(curves) == 2
    for line, (name, scores) in zip(curves, systems.items()):
        eer = metrics.compute_eer(scores, labels)[0]
        assert line.get_label() == f"{name} (EER {100 * eer:.2f}%)"
        x, y = line.get_data()
        assert 100 < len(x) <= MAX_POINTS + 1  # of ~100,000 operating points
        assert np.all(np.diff(x) <= 0) and np.all(np.diff(y) >= 0)  # false alarms fall as misses rise
    points = [line for line in ax.lines if line.get_marker() == "o"]
    expected = [ndtri(metrics.compute_eer(s, labels)[0]) for s in systems.values()]
    np.testing.assert_allclose([p.get_xdata()[0] for p in points], expected)
    np.testing.assert_allclose([p.get_ydata()[0] for p in points], expected)


def test_det_figure_keeps_long_run_names_readable_under_the_plot() -> None:
    """A sweep's runs are named by all their overrides: each name is wrapped, the legend sits under the axes (it
    covers no curve) and every line of it lies inside the figure."""
    from stklia.evaluation.det import LEGEND_WIDTH

    rng = np.random.default_rng(3)
    labels = (rng.random(2000) < 0.1).astype(int)
    names = [f"{job}: " + " ".join(f"key{k}.setting={rng.random():.4f}" for k in range(12)) for job in range(3)]
    figure = det_figure({name: rng.normal(size=2000) + 2 * labels for name in names}, labels, "title")
    figure.canvas.draw()
    (legend,) = figure.legends
    texts = [text.get_text() for text in legend.get_texts()]
    assert [" ".join(text.replace("\n    ", " ").split(" (EER")[:1]) for text in texts] == names
    assert all(len(line) <= LEGEND_WIDTH for text in texts for line in text.split("\n"))
    renderer = figure.canvas.get_renderer()
    box, axes = legend.get_window_extent(renderer), figure.axes[0].get_window_extent(renderer)
    assert box.y1 <= axes.y0 and box.x0 >= 0 and box.x1 <= figure.bbox.x1 and box.y0 >= 0


# --------------------------------------------------------------------------
# Trial lists with enrollment speakers
# --------------------------------------------------------------------------


def test_read_trials_with_enrollment_speakers(demo_root: Path, tmp_path: Path) -> None:
    enroll_dir = make_enrollment(demo_root / "test", tmp_path / "enroll")
    data, enroll = load_data(demo_root / "test"), load_data(enroll_dir)
    speakers = set(enroll.utt2spk.values())
    trials = read_trials(enroll_dir / "trials", data.feats, speakers)
    assert set(trials.enroll) == speakers and set(trials.test) <= set(data.utts)
    with pytest.raises(InputError, match=r"trials:1: utterance 'spk\d+' is not in the evaluation data"):
        read_trials(enroll_dir / "trials", data.feats)  # speakers are not utterances


# name -> (trial line, line number, message)
BAD_ENROLLMENT_TRIALS = {
    "unknown speaker": ("1 nobody {utt}", "'nobody' is neither an enrollment speaker nor an utterance"),
    "unknown test utterance": ("1 {spk} ghost", "utterance 'ghost' is not in the evaluation data"),
    "speaker as test side": ("1 {utt} {spk}", "utterance '{spk}' is not in the evaluation data"),
    "ambiguous id": ("0 {utt} {utt}", "'{utt}' is ambiguous: both an enrollment speaker and an utterance"),
}


@pytest.mark.parametrize("case", BAD_ENROLLMENT_TRIALS)
def test_bad_enrollment_trials_name_file_and_line(case: str, demo_root: Path, tmp_path: Path) -> None:
    enroll_dir = make_enrollment(demo_root / "test", tmp_path / "enroll")
    data, enroll = load_data(demo_root / "test"), load_data(enroll_dir)
    spk, utt = enroll.speakers[0], data.utts[-1]
    speakers = set(enroll.utt2spk.values()) | ({utt} if case == "ambiguous id" else set())
    line, words = (s.format(spk=spk, utt=utt) for s in BAD_ENROLLMENT_TRIALS[case])
    trials_path = enroll_dir / "trials"
    lines = trials_path.read_text().splitlines()
    trials_path.write_text("".join(f"{x}\n" for x in [*lines[:3], line, *lines[3:]]))
    with pytest.raises(InputError, match=rf"^{re.escape(str(trials_path))}:4: {re.escape(words)}"):
        read_trials(trials_path, data.feats, speakers)


# --------------------------------------------------------------------------
# evaluate() end to end, and the files it leads to
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def evaluated(demo_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """evaluate() on an utt-utt list and an enrollment list, with AS-norm against the train speakers."""
    enroll_dir = make_enrollment(demo_root / "test", tmp_path_factory.mktemp("enroll") / "enroll")
    data, enroll, cohort = load_data(demo_root / "test"), load_data(enroll_dir), load_data(demo_root / "train")
    speakers = set(enroll.utt2spk.values())
    lists = [read_trials(p, data.feats, speakers) for p in (demo_root / "test" / "trials", enroll_dir / "trials")]
    model = tiny_resnet("statistical", seed=7)
    # centre the embeddings: a random network puts them all in a narrow cone (cosines ~0.99), where
    # the tiny spread of the top cohort scores would amplify float32 rounding in the AS-norm
    settings = Extraction(torch.device("cpu"), True, progress=False, batch_frames=700)
    offset = Embedder(model, settings)(data).mean(axis=0)
    model.bn2.running_mean.copy_(torch.from_numpy(offset))
    results = evaluate(Embedder(model, settings), EvalData(data, lists, enroll, cohort, asnorm_top_n=4), (0.01, 0.05))
    return model, data, enroll, cohort, results


def test_evaluate_matches_one_trial_at_a_time(evaluated) -> None:
    model, data, enroll, cohort, results = evaluated

    def embed(d, utt):
        return alone(model, subtract_mean(d.load(utt)))

    def models_of(d, model=loop_model):
        return {spk: model([embed(d, u) for u in d.utts if d.utt2spk[u] == spk]) for spk in d.speakers}

    test_emb = {u: embed(data, u) for u in data.utts}
    sides = {**test_emb, **models_of(enroll)}
    # a cohort speaker is one mean embedding (WeSpeaker's cohorts), an enrolled one the mean of unit embeddings
    cohort_models = list(models_of(cohort, lambda embeddings: np.mean(embeddings, axis=0)).values())
    assert len(cohort_models) > 4  # top-4 is a real selection
    for result in results:
        trials = result.trials
        raw = [cosine(sides[a], test_emb[b]) for a, b in zip(trials.enroll, trials.test)]
        normed = [loop_asnorm(s, sides[a], test_emb[b], cohort_models, 4)
                  for s, a, b in zip(raw, trials.enroll, trials.test)]
        np.testing.assert_allclose(result.scores["raw"], raw, rtol=0, atol=1e-5)
        # AS-norm divides by the spread of the top cohort scores, which magnifies the float32 rounding
        # by which batched and one-by-one embeddings differ (~1e-6)
        np.testing.assert_allclose(result.scores["asnorm"], normed, rtol=1e-4, atol=1e-4)
        assert np.ptp(raw) > 1
        for kind, prefix in (("raw", ""), ("asnorm", "asnorm_")):
            s = result.scores[kind]
            assert result.metrics[f"{prefix}eer"] == 100 * metrics.compute_eer(s, trials.labels)[0]
            assert result.metrics[f"{prefix}min_dcf@0.05"] == metrics.compute_min_dcf(s, trials.labels, 0.05)[0]
            act_dcf = metrics.compute_actual_dcf(s, trials.labels, metrics.bayes_threshold(0.01), 0.01)
            assert result.metrics[f"{prefix}act_dcf@0.01"] == act_dcf
            assert result.metrics[f"{prefix}cllr"] == pytest.approx(metrics.compute_cllr(s, trials.labels), rel=1e-12)
            assert result.metrics[f"{prefix}min_cllr"] == metrics.compute_min_cllr(s, trials.labels)
    assert set(results[1].trials.enroll) == set(enroll.speakers)


def test_result_files(evaluated, tmp_path: Path) -> None:
    *_, results = evaluated
    same_name = Trials(results[0].trials.path, results[0].trials.labels, results[0].trials.enroll,
                       results[0].trials.test)
    results = [*results, type(results[0])(same_name, results[0].scores, results[0].metrics)]
    summaries = write_results(tmp_path, results)
    stems = [Path(s["files"]["det"]).name.removesuffix(".det.png") for s in summaries]
    assert stems[0] == "test_trials" and stems[2] == "test_trials_2" and len(set(stems)) == 3
    for result, summary, stem in zip(results, summaries, stems):
        assert json.loads((tmp_path / f"{stem}.json").read_text()) == summary
        assert summary["num_trials"] == len(result.trials.labels) and {"eer", "asnorm_eer"} <= set(summary)
        for kind, name in (("raw", f"{stem}.scores"), ("asnorm", f"{stem}.asnorm.scores")):
            assert summary["files"][f"{kind}_scores"] == str(tmp_path / name)
            lines = [line.split() for line in (tmp_path / name).read_text().splitlines()]
            assert [(a, b) for a, b, _ in lines] == list(zip(result.trials.enroll, result.trials.test))
            np.testing.assert_allclose([float(s) for *_, s in lines], result.scores[kind], rtol=0, atol=1e-6)
        image = matplotlib.image.imread(tmp_path / f"{stem}.det.png")
        assert image.ndim == 3 and image.shape[0] > 200 and image.std() > 0
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
    assert (tmp_path / "quality").is_file() and summaries[0]["files"]["quality"] == str(tmp_path / "quality")
    header, rule, *rows = [[cell.strip() for cell in line.strip("|").split("|")]
                           for line in format_results(summaries).splitlines()]
    columns = ["eer", "min_dcf@0.01", "min_dcf@0.05", "act_dcf@0.01", "act_dcf@0.05", "cllr", "min_cllr"]
    assert header == ["trials", "scores", "n", *columns] and set("".join(rule)) == {"-"}
    grouped = [summaries[0], summaries[2], summaries[1]]  # rows of one trial list together
    kinds = ("raw", "asnorm")
    assert [row[:2] for row in rows] == [[trials_name(s["trials"]), kind] for s in grouped for kind in kinds]
    for row, (summary, prefix) in zip(rows, [(s, p) for s in grouped for p in ("", "asnorm_")]):
        assert row[3:] == [f"{summary[prefix + c]:.{2 if c == 'eer' else 4}f}" for c in columns]
