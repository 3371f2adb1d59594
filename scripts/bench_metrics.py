"""Benchmark stklia.evaluation.metrics (vectorised) against naive per-threshold loops.

Times EER + minDCF(p=0.01) + minDCF(p=0.001) on ``--num-trials`` random trials,
and, in the same run, on a ``--naive-trials`` subset where the naive
implementations are also timed:

* naive minDCF: loop over every distinct score as threshold, error rates by
  direct numpy comparison (O(n^2));
* naive EER: Kaldi compute-eer's walk as a plain Python loop (after sorting).

The speed-up is reported at equal size (the subset). The naive time at full
size is not run (it would take many minutes); it is estimated as the measured
naive EER at full size plus, per minDCF, (#distinct scores + 1) times the
loop-body cost measured at full size on ``--probe-thresholds`` thresholds.

Example: python scripts/bench_metrics.py --num-trials 1000000 --target-frac 0.01
"""

from __future__ import annotations

import argparse
import functools
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's stklia, even where another one is installed

from stklia.evaluation.metrics import SortedTrials, compute_min_dcf  # noqa: E402

P_TARGETS = (0.01, 0.001)
PREVIOUS = "4f7a6df"  # the last commit whose metrics sorted once per metric


def naive_min_dcf(scores: np.ndarray, labels: np.ndarray, p_target: float, thresholds=None) -> float:
    """Brute force: every distinct score (and +inf) as a ">=" threshold."""
    tar, non = scores[labels == 1], scores[labels == 0]
    if thresholds is None:
        thresholds = [*np.unique(scores), np.inf]
    best = np.inf
    for t in thresholds:
        miss = np.count_nonzero(tar < t) / tar.size
        fa = np.count_nonzero(non >= t) / non.size
        best = min(best, miss * p_target + fa * (1 - p_target))
    return best / min(p_target, 1 - p_target)


def naive_eer(scores: np.ndarray, labels: np.ndarray) -> float:
    """Kaldi compute-eer's loop in plain Python."""
    tar = sorted(scores[labels == 1].tolist())
    non = sorted(scores[labels == 0].tolist())
    p = 0
    while p + 1 < len(tar):
        k = max(len(non) - 1 - int(len(non) * p * 1.0 / len(tar)), 0)
        if non[k] < tar[p]:
            break
        p += 1
    return p / len(tar)


def make_trials(rng: np.random.Generator, n: int, target_frac: float, dtype: str):
    """Gaussian scores, targets shifted by 2.5 (EER ~ 10.6%).

    float32 scores (what a model emits) have duplicates at 1M trials, which
    sends minDCF down its slower stable-sort path; float64 ones do not.
    """
    labels = (rng.random(n) < target_frac).astype(np.int8)
    labels[:2] = (1, 0)  # guarantee both classes even for tiny n
    scores = (rng.normal(size=n) + 2.5 * labels).astype(dtype)
    return scores, labels


def best_of(fn, repeats: int) -> tuple[float, object]:
    """Best wall time over `repeats` runs (least disturbed by other load)."""
    best, out = np.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def vectorised(scores, labels, metrics=None):
    """EER and minDCFs as stklia.evaluation.scoring.trial_metrics gets them: one SortedTrials.

    With `metrics`, an older stklia.evaluation.metrics module (module_at): its functions, one call per metric.
    """
    if metrics is not None:
        eer = metrics.compute_eer(scores, labels)[0]
        return eer, [metrics.compute_min_dcf(scores, labels, p)[0] for p in P_TARGETS]
    trials = SortedTrials(scores, labels)
    return trials.eer()[0], [trials.min_dcf(p)[0] for p in P_TARGETS]


def module_at(revision: str, path: str = "stklia/metrics.py") -> types.ModuleType:
    """A module of this repository as it was at a git revision, to time old code in the same run."""
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{revision}:{path}"], capture_output=True, text=True,
                            check=True).stdout
    module = types.ModuleType(f"{Path(path).stem}_{revision}")
    exec(compile(source, f"{revision}:{path}", "exec"), module.__dict__)
    return module


def naive(scores, labels):
    return naive_eer(scores, labels), [naive_min_dcf(scores, labels, p) for p in P_TARGETS]


def estimate_naive_full(scores: np.ndarray, labels: np.ndarray, probes: int, rng: np.random.Generator) -> float:
    """Naive time at full size: EER measured, minDCF loop body sampled."""
    t_eer, _ = best_of(functools.partial(naive_eer, scores, labels), 1)
    sample = rng.choice(scores, probes, replace=False).tolist()
    t_probe, _ = best_of(functools.partial(naive_min_dcf, scores, labels, 0.01, sample), 1)
    n_thresholds = np.unique(scores).size + 1
    return t_eer + len(P_TARGETS) * n_thresholds * t_probe / probes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-trials", type=int, default=1_000_000)
    ap.add_argument("--naive-trials", type=int, default=20_000, help="subset size for naive")
    ap.add_argument("--probe-thresholds", type=int, default=200)
    ap.add_argument("--target-frac", type=float, nargs="+", default=[0.01, 0.1])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    rows = []
    for frac in args.target_frac:
        scores, labels = make_trials(rng, args.num_trials, frac, args.dtype)
        sub_s, sub_y = scores[: args.naive_trials], labels[: args.naive_trials]
        t_full, (eer, dcfs) = best_of(functools.partial(vectorised, scores, labels), args.repeats)
        t_vsub, vsub = best_of(functools.partial(vectorised, sub_s, sub_y), args.repeats)
        t_naive, nsub = best_of(functools.partial(naive, sub_s, sub_y), 1)
        # Sanity: same EER as the Kaldi loop, same minDCF as the brute force.
        assert vsub[0] == nsub[0], (vsub, nsub)
        exact = [compute_min_dcf(sub_s, sub_y, p, kaldi=False)[0] for p in P_TARGETS]
        assert np.allclose(exact, nsub[1], rtol=1e-9, atol=1e-12), (exact, nsub)
        n_ties = scores.size - np.unique(scores).size
        est = estimate_naive_full(scores, labels, args.probe_thresholds, rng)
        rows.append((frac, n_ties, eer, dcfs, t_full, t_vsub, t_naive, est))

    n, m = args.num_trials, args.naive_trials
    print(
        f"EER + minDCF(p=0.01) + minDCF(p=0.001) on {n:,} {args.dtype} trials; "
        f"vectorised: best of {args.repeats}; naive: timed once\n"
    )
    print(
        f"| targets | duplicate scores | EER | minDCF 0.01 | minDCF 0.001 | vectorised, {n:,} | "
        f"vectorised, {m:,} | naive, {m:,} | speed-up at {m:,} | "
        f"naive at {n:,} (estimate) | speed-up at {n:,} (estimate) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for frac, n_ties, eer, dcfs, t_full, t_vsub, t_naive, est in rows:
        print(
            f"| {frac:.0%} | {n_ties:,} | {eer:.4%} | {dcfs[0]:.4f} | {dcfs[1]:.4f} | "
            f"{t_full:.3f} s | {t_vsub * 1e3:.1f} ms | {t_naive:.2f} s | "
            f"{t_naive / t_vsub:,.0f}x | ~{est:,.0f} s | ~{est / t_full:,.0f}x |"
        )


if __name__ == "__main__":
    main()
