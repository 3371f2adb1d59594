"""Benchmark the evaluation engine against the naive way, each measured in the same run.

* metrics: EER + minDCF(0.01) + minDCF(0.001) on --num-trials random trials (bench_metrics.py's
  vectorised vs naive code, the naive one on a --naive-trials subset); and, in a table of its own,
  stklia's one sort (SortedTrials) vs its previous code (stklia/metrics.py at git revision
  --previous, one sort per metric), on float64 scores (no ties) and float32 ones (ties);
* cosine scoring of --num-trials trials (random string ids) from a --table-size x --dim embedding
  table: stklia.evaluation.scoring (ids -> rows once, chunked row-wise dot products) vs a per-trial Python
  loop, compared on a --naive-trials subset;
* AS-norm of --num-trials trials among --asnorm-table utterances against a --cohort-size cohort of speaker means
  (top --top-n): stklia's asnorm_stats (chunks of at most ASNORM_CHUNK_BYTES of scores, in-place partition) vs the
  plain way (the whole score matrix, sorted: WeSpeaker's score_norm.py), time and peak memory (tracemalloc: what
  numpy allocates beyond the inputs), same values;
* calibration on --num-trials trials: the fit and the application of QMF (score + duration and norm of both
  sides, from a quality table of --asnorm-table sides) and of the fusion of two systems, stklia's
  LinearCalibration (trust-region Newton on standardised features) vs scikit-learn's LogisticRegression
  (L-BFGS, the same prior weights: the same objective), and the application vs a per-trial Python loop over the
  quality table (WeSpeaker's score_calibration.py); same weights (to 1e-3) and same LLRs.

Extraction has its own benchmark: scripts/bench_extraction.py.

Prints Markdown tables. Example: python scripts/bench_scoring.py [--parts metrics asnorm calibration]
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's stklia, even where another one is installed

from bench_metrics import PREVIOUS, best_of, estimate_naive_full, make_trials, module_at, naive, vectorised  # noqa: E402

from stklia.data.trials import Trials, read_trials  # noqa: E402
from stklia.evaluation.backends.normalize import unit  # noqa: E402
from stklia.evaluation.calibration import LinearCalibration  # noqa: E402
from stklia.evaluation.quality import Quality  # noqa: E402
from stklia.evaluation.scores import write_scores  # noqa: E402
from stklia.evaluation.scoring import ASNORM_CHUNK_BYTES, asnorm, asnorm_stats, trial_indices, trial_scores  # noqa: E402


def naive_cosine(emb: np.ndarray, index: dict[str, int], left: list[str], right: list[str]) -> np.ndarray:
    """One trial at a time: look both ids up, cosine of the two rows."""
    out = []
    for a, b in zip(left, right):
        x, y = emb[index[a]], emb[index[b]]
        out.append(float(np.dot(x, y) / (np.linalg.norm(x) * np.linalg.norm(y))))
    return np.array(out)


def fast_cosine(table: np.ndarray, index: dict[str, int], left: list[str], right: list[str]) -> np.ndarray:
    """What stklia.evaluation.scoring.evaluate does per trial list, given the unit-normalised table."""
    return trial_scores(table, table, trial_indices(index, left), trial_indices(index, right))


def bench_metrics(args: argparse.Namespace, rng: np.random.Generator) -> tuple[list[str], float]:
    scores, labels = make_trials(rng, args.num_trials, 0.01, "float32")
    t_full, _ = best_of(functools.partial(vectorised, scores, labels), args.repeats)
    sub = scores[: args.naive_trials], labels[: args.naive_trials]
    t_sub, fast = best_of(functools.partial(vectorised, *sub), args.repeats)
    t_naive, slow = best_of(functools.partial(naive, *sub), 1)
    assert fast[0] == slow[0] and np.allclose(fast[1], slow[1], rtol=1e-9), (fast, slow)
    estimate = estimate_naive_full(scores, labels, 200, rng)
    return [f"| EER + minDCF 0.01 + minDCF 0.001 | {args.num_trials:,} trials | {t_full:.3f} s | "
            f"{t_sub * 1e3:.1f} ms at {args.naive_trials:,} | {t_naive:.2f} s at {args.naive_trials:,} "
            f"(~{estimate:,.0f} s at {args.num_trials:,}, estimated) | {t_naive / t_sub:,.0f}x "
            f"(~{estimate / t_full:,.0f}x) |"], t_full


def bench_one_sort(args: argparse.Namespace, rng: np.random.Generator) -> list[str]:
    """EER + 2 minDCF from one sort vs the previous code (one sort per metric), same trials, same values."""
    previous = module_at(args.previous)
    rows = []
    for dtype in ("float64", "float32"):
        scores, labels = make_trials(rng, args.num_trials, 0.01, dtype)
        duplicates = scores.size - np.unique(scores).size
        t_new, new = best_of(functools.partial(vectorised, scores, labels), args.repeats)
        t_old, old = best_of(functools.partial(vectorised, scores, labels, previous), args.repeats)
        assert new == old, (new, old)  # bit-identical
        rows.append(f"| {dtype} ({duplicates:,} duplicate scores) | {args.num_trials:,} | **{t_new:.3f} s** | "
                    f"{t_old:.3f} s | {t_old / t_new:.1f}x |")
    return rows


def bench_cosine(args: argparse.Namespace, rng: np.random.Generator) -> tuple[list[str], float]:
    ids = [f"id{i:07d}-utterance" for i in range(args.table_size)]
    emb = rng.normal(size=(args.table_size, args.dim)).astype(np.float32)
    index = {u: i for i, u in enumerate(ids)}
    left = [ids[i] for i in rng.integers(0, args.table_size, args.num_trials)]
    right = [ids[i] for i in rng.integers(0, args.table_size, args.num_trials)]
    table = unit(emb).astype(np.float32)
    t_full, scores = best_of(functools.partial(fast_cosine, table, index, left, right), args.repeats)
    m = args.naive_trials * 5
    t_sub, fast = best_of(functools.partial(fast_cosine, table, index, left[:m], right[:m]), args.repeats)
    t_naive, slow = best_of(functools.partial(naive_cosine, emb, index, left[:m], right[:m]), 1)
    assert np.allclose(fast, slow, atol=1e-5)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trials"
        path.write_text("".join(f"{int(s > 0)} {a} {b}\n" for s, a, b in zip(scores.tolist(), left, right)))
        t_read, trials = best_of(functools.partial(read_trials, path, index), 1)
        t_write, _ = best_of(functools.partial(write_scores, Path(tmp) / "scores", trials, scores), 1)
    return [f"| cosine scoring, {args.table_size:,} x {args.dim} table | {args.num_trials:,} trials | {t_full:.3f} s |"
            f" {t_sub * 1e3:.1f} ms at {m:,} | {t_naive:.2f} s at {m:,} | {t_naive / t_sub:,.0f}x |",
            f"| reading the trial list / writing the score file (text I/O) | {args.num_trials:,} lines | "
            f"{t_read:.2f} s / {t_write:.2f} s | | | |"], t_full


def peak_memory(fn) -> tuple[int, object]:
    """The peak of what fn allocates through Python and numpy (tracemalloc), beyond what exists before it."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        out = fn()
        return tracemalloc.get_traced_memory()[1], out
    finally:
        tracemalloc.stop()


def plain_asnorm_stats(table: np.ndarray, cohort: np.ndarray, top_n: int) -> tuple[np.ndarray, np.ndarray]:
    """The plain way (WeSpeaker's score_norm.py get_mean_std): every score at once, sorted, the top_n kept."""
    scores = table @ cohort.T
    top = np.sort(scores, axis=1)[:, ::-1][:, :top_n].astype(np.float64)
    return top.mean(axis=1), top.std(axis=1)


def mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def bench_asnorm(args: argparse.Namespace, rng: np.random.Generator) -> list[str]:
    """AS-norm of num_trials trials among asnorm_table utterances against cohort_size speaker means."""
    table = unit(rng.normal(size=(args.asnorm_table, args.dim))).astype(np.float32)
    cohort = unit(rng.normal(size=(args.cohort_size, args.dim))).astype(np.float32)
    left, right = rng.integers(0, args.asnorm_table, args.num_trials), rng.integers(0, args.asnorm_table,
                                                                                     args.num_trials)
    scores = trial_scores(table, table, left, right)
    results = {}
    for name, stats in (("stklia", asnorm_stats), ("plain", plain_asnorm_stats)):
        def normalise(stats=stats) -> np.ndarray:
            return asnorm(scores, stats(table, cohort, args.top_n), left, right)

        seconds, out = best_of(normalise, args.repeats)
        peak, _ = peak_memory(normalise)
        results[name] = seconds, peak, out
    assert np.allclose(results["stklia"][2], results["plain"][2], atol=1e-4), "different AS-norm scores"
    (t_ours, m_ours, _), (t_plain, m_plain, _) = results["stklia"], results["plain"]
    size = f"{args.num_trials:,} trials, {args.asnorm_table:,} x {args.cohort_size:,} scores"
    return [f"| AS-norm, top {args.top_n} of {args.cohort_size:,} cohort speaker means | {size} | "
            f"**{t_ours:.2f} s**, **{mib(m_ours)}** | {t_plain:.2f} s, {mib(m_plain)} | "
            f"{t_plain / t_ours:.1f}x, {m_plain / m_ours:.0f}x |"]


def quality_trials(rng: np.random.Generator, num_trials: int, num_sides: int
                   ) -> tuple[Trials, Quality, np.ndarray, np.ndarray]:
    """Trials between num_sides sides of random durations and norms, two systems' scores whose separation
    depends on the shorter side's duration, and the labels."""
    ids = [f"utt{i:07d}" for i in range(num_sides)]
    frames = rng.integers(200, 3000, num_sides)
    quality = Quality(ids, {"frames": frames, "norm": rng.uniform(5, 25, num_sides)})
    left, right = rng.integers(0, num_sides, num_trials), rng.integers(0, num_sides, num_trials)
    labels = (rng.random(num_trials) < 0.01).astype(np.int8)
    labels[:2] = (1, 0)
    shorter = np.log(np.minimum(frames[left], frames[right]))
    separation = (2 * labels - 1) * 0.25 * shorter
    systems = np.column_stack([separation + rng.normal(size=num_trials),
                               10 * (separation + rng.normal(size=num_trials)) - 3])
    trials = Trials(Path("trials"), labels, [ids[i] for i in left], [ids[i] for i in right])
    return trials, quality, systems, labels


def plain_qmf_features(trials: Trials, frames: dict[str, float], norms: dict[str, float], scores: np.ndarray
                       ) -> np.ndarray:
    """A trial at a time (WeSpeaker's score_calibration.py gather_calibration_factors): look both sides up."""
    rows = []
    for a, b, score in zip(trials.enroll, trials.test, scores.tolist()):
        fa, fb, na, nb = math.log(frames[a]), math.log(frames[b]), norms[a], norms[b]
        rows.append((score, min(fa, fb), max(fa, fb), min(na, nb), max(na, nb)))
    return np.array(rows)


def sklearn_fit(features: np.ndarray, labels: np.ndarray, prior: float = 0.5) -> np.ndarray:
    """scikit-learn's unpenalised logistic regression with the prior weights (the same objective)."""
    from sklearn.linear_model import LogisticRegression

    weights = np.where(labels == 1, prior / labels.sum(), (1 - prior) / (labels == 0).sum()) * len(labels)
    model = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10_000).fit(features, labels, sample_weight=weights)
    return np.array([*model.coef_[0], model.intercept_[0] - math.log(prior / (1 - prior))])


def timed_fits(name: str, x: np.ndarray, labels: np.ndarray, args: argparse.Namespace
               ) -> tuple[str, LinearCalibration]:
    """The row of a fit by stklia and by scikit-learn (the same objective, asserted to give the same weights)."""
    t_fit, fitted = best_of(functools.partial(LinearCalibration.fit, x, labels), args.repeats)
    t_plain, reference = best_of(functools.partial(sklearn_fit, x, labels), 1)
    assert np.allclose([*fitted.weights, fitted.offset], reference, rtol=1e-3, atol=1e-3), (fitted, reference)
    return (f"| {name}: fit | {args.num_trials:,} trials, {x.shape[1]} columns | **{t_fit:.2f} s** | "
            f"{t_plain:.2f} s (scikit-learn, L-BFGS) | {t_plain / t_fit:.1f}x |"), fitted


def timed_applications(name: str, apply, plain_apply, args: argparse.Namespace) -> str:
    t_apply, llr = best_of(apply, args.repeats)
    t_loop, slow = best_of(plain_apply, 1)
    assert np.allclose(llr, slow, atol=1e-6)
    return (f"| {name}: apply (features and LLRs) | {args.num_trials:,} trials | **{t_apply:.4f} s** | "
            f"{t_loop:.2f} s (a Python loop over trials) | {t_loop / t_apply:.0f}x |")


def bench_calibration(args: argparse.Namespace, rng: np.random.Generator) -> list[str]:
    trials, quality, systems, labels = quality_trials(rng, args.num_trials, args.asnorm_table)
    frames = dict(zip(quality.ids, quality.measures["frames"].tolist()))
    norms = dict(zip(quality.ids, quality.measures["norm"].tolist()))

    def qmf_features() -> np.ndarray:
        return np.column_stack([systems[:, 0], quality.features(trials, ["duration", "norm"])[0]])

    name = "QMF (score, duration, norm)"
    fit_row, qmf = timed_fits(name, qmf_features(), labels, args)

    def plain_qmf() -> np.ndarray:
        return plain_qmf_features(trials, frames, norms, systems[:, 0]) @ np.array(qmf.weights) + qmf.offset

    rows = [fit_row, timed_applications(name, lambda: qmf(qmf_features()), plain_qmf, args)]
    name = "fusion of 2 systems"
    fit_row, fusion = timed_fits(name, systems, labels, args)

    def plain_fusion() -> np.ndarray:
        (w1, w2), offset = fusion.weights, fusion.offset
        return np.array([w1 * a + w2 * b + offset for a, b in systems.tolist()])

    return [*rows, fit_row, timed_applications(name, lambda: fusion(systems), plain_fusion, args)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-trials", type=int, default=1_000_000)
    ap.add_argument("--naive-trials", type=int, default=20_000, help="subset for the naive metrics (x5 for cosine)")
    ap.add_argument("--table-size", type=int, default=5_000, help="utterances in the embedding table")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--cohort-size", type=int, default=6_000)
    ap.add_argument("--top-n", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--previous", default=PREVIOUS, help="git revision of the previous metrics code")
    ap.add_argument("--asnorm-table", type=int, default=20_000, help="utterances of the AS-norm and QMF trials")
    ap.add_argument("--parts", nargs="+", choices=["metrics", "cosine", "asnorm", "calibration"],
                    default=["metrics", "cosine", "asnorm", "calibration"])
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    print(f"{os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f}; best of {args.repeats} (naive: once)\n")
    rows = []
    if "metrics" in args.parts:
        print("| EER + minDCF 0.01 + minDCF 0.001, scores | trials | one sort (SortedTrials) | "
              f"previous code ({args.previous}) | speed-up |")
        print("|---|---|---|---|---|")
        print("\n".join(bench_one_sort(args, rng)) + "\n")
        metric_rows, t_metrics = bench_metrics(args, rng)
        rows += metric_rows
    if "cosine" in args.parts:
        cosine_rows, t_cosine = bench_cosine(args, rng)
        rows.append(cosine_rows[0])
        if "metrics" in args.parts:
            rows.append(f"| **scoring total** (cosine + metrics) | {args.num_trials:,} trials | "
                        f"**{t_cosine + t_metrics:.3f} s** | | | |")
        rows += cosine_rows[1:]
    if rows:
        print("| task | size | stklia | stklia, naive's size | naive | speed-up at equal size |")
        print("|---|---|---|---|---|---|")
        print("\n".join(rows) + "\n")
    if "asnorm" in args.parts:
        print(f"| task | size | stklia: time, peak memory (chunks of {mib(ASNORM_CHUNK_BYTES)} of scores) | "
              "plain: whole matrix, sorted | ratio |")
        print("|---|---|---|---|---|")
        print("\n".join(bench_asnorm(args, rng)) + "\n")
    if "calibration" in args.parts:
        print("| task | size | stklia | plain | ratio |")
        print("|---|---|---|---|---|")
        print("\n".join(bench_calibration(args, rng)))


if __name__ == "__main__":
    main()
