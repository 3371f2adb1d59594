"""How busy a sweep kept its slots, and what the same jobs would have taken launched in batches.

For each sweep dir, each job's span comes from its status.json (stklia.training.records): it ended at `updated`
and ran `wall_seconds` (summed over the segments of a resumed job, so such a job's span starts a little late). The
table gives the jobs' busy time, the sweep's span (first start to last end), the occupancy of --slots slots over
it, and the span the same jobs would have taken in batches of --slots consecutive jobs, each batch waiting for its
slowest (Hydra's sweepers' way, and stklia's Optuna sweeper's before each trial became its own launch), with the
ratio of the two. For a sweep that ran in batches the estimate is its own span again (less any restart): a check
of the estimate. It ignores that a job alone on a machine may run faster than beside another.

Example:
    python scripts/sweep_occupancy.py multirun/search4x-ecapa_tdnn_small multirun/search4x-resnet_small --slots 2
    python scripts/sweep_occupancy.py multirun/search4x-resnet_small --first-job 8   # its jobs from 8 on
"""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path

from stklia.training.records import read_status


def job_spans(sweep_dir: Path) -> dict[int, tuple[float, float]]:
    """Job number -> (start, end) in seconds since the epoch, for the jobs of `sweep_dir` that ended."""
    spans = {}
    for job_dir in sweep_dir.iterdir():
        status = read_status(job_dir) if job_dir.name.isdigit() else None
        if status is None or status["state"] == "running":
            continue
        end = datetime.fromisoformat(status["updated"]).timestamp()
        spans[int(job_dir.name)] = (end - status["wall_seconds"], end)
    return spans


def batched_span(spans: dict[int, tuple[float, float]], slots: int) -> float:
    """Seconds the jobs would take in batches of `slots` consecutive job numbers, each as long as its slowest."""
    jobs = sorted(spans)
    batches = [jobs[i:i + slots] for i in range(0, len(jobs), slots)]
    return sum(max(spans[job][1] - spans[job][0] for job in batch) for batch in batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweeps", nargs="+", type=Path, help="sweep dirs (hydra.sweep.dir)")
    parser.add_argument("--slots", type=int, default=2, help="jobs at a time (hydra.sweeper.n_jobs)")
    parser.add_argument("--first-job", type=int, default=0,
                        help="count jobs from this one on (a sweep continued with other settings)")
    args = parser.parse_args()
    print("| sweep | jobs | busy (job-min) | span (min) | occupancy | in batches (min) | batches / span |")
    print("|---|---|---|---|---|---|---|")
    for sweep in args.sweeps:
        spans = {job: span for job, span in job_spans(sweep).items() if job >= args.first_job}
        if not spans:
            raise SystemExit(f"{sweep}: no job with a status.json that ended")
        busy = sum(end - start for start, end in spans.values())
        span = max(end for _, end in spans.values()) - min(start for start, _ in spans.values())
        batched = batched_span(spans, args.slots)
        print(f"| {sweep.name} | {len(spans)} | {busy / 60:.0f} | {span / 60:.0f} | "
              f"{busy / (args.slots * span):.0%} | {batched / 60:.0f} | {batched / span:.2f} |")


if __name__ == "__main__":
    main()
