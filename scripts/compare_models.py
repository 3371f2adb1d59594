"""Compare the model families on the demo corpus at one equal budget, through the commands users run.

Each family of conf/model/ at the demo's scale (widths cut so that every generator has 0.3-0.6 M
parameters, as the demo's default `resnet_small`; the full-size presets need hours per run on a CPU)
trains with `python -m stklia.train` on the demo's settings: the same steps, batch, crops, head
(AdaCos), optimizer (SGD) and schedule, for each of --seeds; then its final checkpoint's test results
(results/step_<N>.json, both demo test lists, raw and AS-norm) are read back. Prints a Markdown table
of the mean and standard deviation over the seeds, and the command of each run.

Example: python scripts/compare_models.py --out exp/compare [--seeds 0 1 2] [--families ecapa_tdnn ...]
A finished run (its results file present) is not trained again, a stopped one resumes: the script can be
stopped and rerun.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's stklia, even where another one is installed

# Each family at the demo's scale: its conf/model/ option (<family>_small.yaml, widths cut as resnet_small's).
FAMILIES = {family: [f"model={family if family == 'resnet_small' else family + '_small'}"]
            for family in ("resnet_small", "resnet34", "ecapa_tdnn", "campplus", "xvector")}
METRICS = ("eer", "min_dcf@0.01")


def run(family: str, seed: int, out: Path, extra: list[str]) -> tuple[dict, float, list[str]]:
    """Train (unless done) and return the test summary, the training samples/s (status.json) and the command."""
    model_dir = out / f"{family}-seed{seed}"
    command = [sys.executable, "-m", "stklia.train", *FAMILIES[family], f"seed={seed}", f"model_dir={model_dir}",
               "progress=false", *extra]
    results = sorted((model_dir / "results").glob("step_*.json")) if model_dir.is_dir() else []
    if not results:
        stopped = (model_dir / "checkpoints").is_dir() and any((model_dir / "checkpoints").glob("step_*.pt"))
        subprocess.run([*command, *(["checkpoint=last"] if stopped else [])], check=True, cwd=out,
                       stdout=subprocess.DEVNULL)
        results = sorted((model_dir / "results").glob("step_*.json"))
    status = json.loads((model_dir / "status.json").read_text())
    return json.loads(results[-1].read_text()), status["samples"] / status["train_seconds"], command


def parameters(family: str, features_per_frame: int = 40) -> float:
    """Millions of parameters of the family's generator at the demo's scale."""
    from hydra import compose, initialize_config_dir

    from stklia.core.config import build
    from stklia.models.complexity import count_parameters

    with initialize_config_dir(str(REPO / "stklia" / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[*FAMILIES[family], f"data.features_per_frame={features_per_frame}"])
    return count_parameters(build(cfg.model)) / 1e6


def cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}" if values[0] > 1 else f"{values[0]:.3f}"
    mean, spread = statistics.mean(values), statistics.stdev(values)
    return f"{mean:.2f} ± {spread:.2f}" if mean > 1 else f"{mean:.3f} ± {spread:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("exp/compare"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--families", nargs="+", choices=list(FAMILIES), default=list(FAMILIES))
    parser.add_argument("extra", nargs="*", help="overrides for every run (e.g. num_iterations=500)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.out = args.out.resolve()
    rows, commands = [], []
    for family in args.families:
        per_seed = []
        for seed in args.seeds:
            summary, speed, command = run(family, seed, args.out, args.extra)
            per_seed.append((summary, speed))
            commands.append(shlex.join(["python", *command[1:]]).replace(str(args.out) + "/", ""))
            print(f"{family} seed {seed}: {speed:.0f} samples/s", file=sys.stderr, flush=True)
        lists = [(r["trials"], kind) for r in per_seed[0][0]["results"] for kind in ("", "asnorm_")
                 if f"{kind}eer" in r]
        cells = []
        for trials, kind in lists:
            for metric in METRICS:
                cells.append(cell([next(r for r in summary["results"] if r["trials"] == trials)[f"{kind}{metric}"]
                                   for summary, _ in per_seed]))
        rows.append([family, f"{parameters(family):.2f} M", *cells, f"{max(speed for _, speed in per_seed):.0f}"])
    header = ["model", "parameters (40 dims)"]
    for trials, kind in lists:
        name = f"{Path(trials).parent.name}{' AS-norm' if kind else ''}"
        header += [f"{name} EER %", f"{name} minDCF 0.01"]
    header.append("training samples/s (best seed)")
    print(f"{len(args.seeds)} seeds ({', '.join(map(str, args.seeds))}); mean ± standard deviation\n")
    print("\n".join("| " + " | ".join(row) + " |" for row in [header, ["---"] * len(header), *rows]))
    print("\nCommands (in --out):\n" + "\n".join(commands))


if __name__ == "__main__":
    main()
