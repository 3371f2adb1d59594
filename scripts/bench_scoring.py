"""Benchmark the evaluation engine against the naive way, each measured in the same run.

* metrics: EER + minDCF(0.01) + minDCF(0.001) on --num-trials random trials (bench_metrics.py's
  vectorised vs naive code, the naive one on a --naive-trials subset); and, in a table of its own,
  stklia's one sort (SortedTrials) vs its previous code (stklia/metrics.py at git revision
  --previous, one sort per metric), on float64 scores (no ties) and float32 ones (ties);
* cosine scoring of --num-trials trials (random string ids) from a --table-size x --dim embedding
  table: stklia.evaluation.scoring (ids -> rows once, chunked row-wise dot products) vs a per-trial Python
  loop, compared on a --naive-trials subset; plus AS-norm of all trials against a --cohort-size
  cohort (top --top-n).

Extraction has its own benchmark: scripts/bench_extraction.py.

Prints Markdown tables. Example: python scripts/bench_scoring.py [--parts metrics]
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's stklia, even where another one is installed

from bench_metrics import PREVIOUS, best_of, estimate_naive_full, make_trials, module_at, naive, vectorised  # noqa: E402

from stklia.data.trials import read_trials  # noqa: E402
from stklia.evaluation.backends.normalize import unit  # noqa: E402
from stklia.evaluation.scores import write_scores  # noqa: E402
from stklia.evaluation.scoring import asnorm, asnorm_stats, trial_indices, trial_scores  # noqa: E402


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
    cohort = unit(rng.normal(size=(args.cohort_size, args.dim))).astype(np.float32)
    left_i, right_i = trial_indices(index, left), trial_indices(index, right)

    def normalise() -> np.ndarray:
        return asnorm(scores, asnorm_stats(table, cohort, args.top_n), left_i, right_i)

    t_asnorm, _ = best_of(normalise, args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trials"
        path.write_text("".join(f"{int(s > 0)} {a} {b}\n" for s, a, b in zip(scores.tolist(), left, right)))
        t_read, trials = best_of(functools.partial(read_trials, path, index), 1)
        t_write, _ = best_of(functools.partial(write_scores, Path(tmp) / "scores", trials, scores), 1)
    return [f"| cosine scoring, {args.table_size:,} x {args.dim} table | {args.num_trials:,} trials | {t_full:.3f} s |"
            f" {t_sub * 1e3:.1f} ms at {m:,} | {t_naive:.2f} s at {m:,} | {t_naive / t_sub:,.0f}x |",
            f"| AS-norm, {args.cohort_size:,} cohort models, top {args.top_n} | {args.num_trials:,} trials | "
            f"{t_asnorm:.3f} s | | | |",
            f"| reading the trial list / writing the score file (text I/O) | {args.num_trials:,} lines | "
            f"{t_read:.2f} s / {t_write:.2f} s | | | |"], t_full


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
    ap.add_argument("--parts", nargs="+", choices=["metrics", "cosine"], default=["metrics", "cosine"])
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
    print("| task | size | stklia | stklia, naive's size | naive | speed-up at equal size |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
