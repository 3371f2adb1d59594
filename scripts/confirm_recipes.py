"""Confirm the recipes a search found, on a corpus it never saw (docs/recipes.md, "Recipes found by search").

For each search dir (`python -m stklia.train -m hparams_search=demo_budget model=M hydra.sweep.dir=DIR`), the
best --top trials by their value (the lowest validation EER) and the defaults the search started from
(the current defaults: the search's model and budget, e.g. `model=M num_iterations=1000`, with the recipe of
conf/recipe/ that applies to them, if one was found before) are trained again with each of --seeds, through
`python -m stklia.train`, tested on the demo's two test lists and on the heldout corpus's two (`python -m
stklia.demo DIR variant=heldout`, which the search never saw: other speakers, recording conditions and noises), all
four at the end of each run. Then prints, per model, a Markdown table of the EER mean and standard deviation over
the seeds on the four lists and the training samples/s, the rule's verdict (a recipe beats the default where its
mean EER on each heldout list is lower by more than the larger of the two standard deviations), the commands, and
the search's parameter importances (Optuna's fANOVA, over the parameters every trial has). All runs go under --out
(one model dir each), so that `python -m stklia.report OUT` is their leaderboard. A finished run is not trained
again; a stopped one resumes.

Example:
    python scripts/confirm_recipes.py --searches multirun/search-resnet_small --heldout data/heldout --out exp/confirm
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's stklia, even where another one is installed

LISTS = ("demo test", "demo test_noisy", "heldout test", "heldout test_noisy")
# overrides of a search or its trials that are not the recipe: the search itself, where and how it ran
NOT_RECIPE = ("hparams_search=", "hydra", "num_threads=", "num_workers=", "checkpoint=")


def recipes(search: Path, top: int) -> tuple[str, dict[str, list[str]]]:
    """The search's model and its recipes to confirm: `default` and `best<k>`, as training overrides."""
    overrides = yaml.safe_load((search / "multirun.yaml").read_text())["hydra"]["overrides"]["task"]
    model = next(o.split("=", 1)[1] for o in overrides if o.startswith("model="))
    results = yaml.safe_load((search / "optimization_results.yaml").read_text())
    done = sorted((t for t in results["trials"] if "value" in t), key=lambda t: t["value"])[:top]  # not pruned
    # the current defaults, which a recipe must beat: the search's model and budget (num_iterations=...), with the
    # recipe of conf/recipe/ that train.yaml applies to them, if any (resnet_small's, found at 250 steps)
    found = {"default": [o for o in overrides if not o.startswith(NOT_RECIPE)]}
    for rank, trial in enumerate(done, 1):
        job = yaml.safe_load((search / str(trial["job"]) / ".hydra" / "overrides.yaml").read_text())
        keep = [o for o in job if not o.startswith(NOT_RECIPE)]
        found[f"best{rank}"] = [*keep, "augment=specaugment"] if any(o.startswith("augment.") for o in keep) \
            else keep
    return model, found


def run(name: str, overrides: list[str], seed: int, out: Path, lists: list[Path], workers: list[str]
        ) -> tuple[list[float], float, list[str]]:
    """Train (unless done) and return the EERs of the four lists, the training samples/s and the command."""
    model_dir = out / f"{name}-seed{seed}"
    tests = [str(path.parent) for path in lists]
    command = [sys.executable, "-m", "stklia.train", *overrides, f"seed={seed}", f"model_dir={model_dir}",
               f"data.test=[{','.join(tests)}]", f"data.test_trials=[{','.join(map(str, lists))}]", "progress=false",
               *workers]
    summaries = sorted((model_dir / "results").glob("step_*.json")) if model_dir.is_dir() else []
    if not summaries:
        stopped = any((model_dir / "checkpoints").glob("step_*.pt")) if model_dir.is_dir() else False
        subprocess.run([*command, *(["checkpoint=last"] if stopped else [])], check=True, cwd=out,
                       stdout=subprocess.DEVNULL)
        summaries = sorted((model_dir / "results").glob("step_*.json"))
    results = json.loads(summaries[-1].read_text())["results"]
    status = json.loads((model_dir / "status.json").read_text())
    return [r["eer"] for r in results], status["samples"] / status["train_seconds"], command


def importances(search: Path) -> dict[str, float]:
    """Optuna's parameter importances of the search's study (the parameters every completed trial has)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="demo_budget", storage=f"sqlite:///{search / 'optuna.db'}")
    return optuna.importance.get_param_importances(study)


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--searches", nargs="+", type=Path, required=True, help="the searches' sweep dirs")
    parser.add_argument("--heldout", type=Path, required=True, help="the heldout corpus (python -m stklia.demo "
                        "DIR variant=heldout)")
    parser.add_argument("--demo", type=Path, help="the demo corpus (default: the cache's)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--top", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", nargs="*", default=[], help="overrides of every run, e.g. num_threads=1")
    args = parser.parse_args()
    from stklia.core.config import demo_root

    demo = (args.demo or demo_root()).resolve()
    lists = [demo / "test" / "trials", demo / "test_noisy" / "trials", args.heldout.resolve() / "test" / "trials",
             args.heldout.resolve() / "test_noisy" / "trials"]
    args.out = args.out.resolve()  # the runs' model_dir, whatever their working directory
    args.out.mkdir(parents=True, exist_ok=True)
    for search in args.searches:
        model, found = recipes(search, args.top)
        rows, commands, eers = [], [], {}
        for name, overrides in found.items():
            runs = [run(f"{model}-{name}", overrides, seed, args.out, lists, args.workers) for seed in args.seeds]
            eers[name] = [[r[0][i] for r in runs] for i in range(len(LISTS))]
            stats = [mean_std(values) for values in eers[name]]
            speed = max(r[1] for r in runs)
            rows.append(f"| {model} | {name} | " + " | ".join(f"{m:.2f} ± {s:.2f}" for m, s in stats)
                        + f" | {speed:.0f} |")
            commands.append(f"{name}: " + shlex.join(["python", *runs[0][2][1:]]).replace(str(args.out) + "/", ""))
        print(f"\n### {model}\n\n| model | recipe | " + " | ".join(f"{name} EER %" for name in LISTS)
              + " | samples/s (best seed) |\n|" + " --- |" * (len(LISTS) + 3))
        print("\n".join(rows))
        default = eers["default"]
        for name in (n for n in found if n != "default"):
            wins = all(mean_std(eers[name][i])[0] < mean_std(default[i])[0]
                       - max(mean_std(eers[name][i])[1], mean_std(default[i])[1]) for i in (2, 3))
            print(f"\n{name} {'beats' if wins else 'does not beat'} the default on the heldout corpus "
                  "(both lists, by more than the larger seed spread)")
        print("\nimportances: " + ", ".join(f"{k} {v:.2f}" for k, v in importances(search).items()))
        print("\n" + "\n".join(commands))


if __name__ == "__main__":
    main()
