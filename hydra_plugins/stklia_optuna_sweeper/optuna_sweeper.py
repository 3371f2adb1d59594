"""An Optuna study as a Hydra sweep, on current Optuna (the official hydra-optuna-sweeper pins optuna < 3).

Hydra's Sweeper interface: `setup` gets the launcher, `sweep` turns the sweep's overrides into jobs.
Here every trial is one job: the search space is `params` (key -> a Hydra sweep expression) joined by the
sweep overrides of the command line; `choice(...)` is categorical, `range(...)` of integers an integer
step distribution, `interval(a, b)` continuous (integer when both ends are, `tag(log, ...)` on a log
scale). Plain overrides are passed to every trial, and fix a key of `params`. Trials are asked in
batches of `n_jobs`, launched together, and told their job's return value. A job that raises, or
returns something that is not a finite number, is a failed trial (its error is logged) and the study
goes on. At the end the best trial is logged and written, with every trial, to
<sweep dir>/optimization_results.yaml.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def distribution(override: Override) -> Any:
    """The Optuna distribution of a sweep override."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    sweep = override.value()
    if isinstance(sweep, ChoiceSweep):
        return CategoricalDistribution(list(override.sweep_iterator()))
    if isinstance(sweep, RangeSweep):
        values = list(override.sweep_iterator())
        if all(isinstance(v, int) for v in (sweep.start, sweep.stop, sweep.step)) and sweep.step > 0:
            return IntDistribution(values[0], values[-1], step=sweep.step)
        return CategoricalDistribution(values)
    if isinstance(sweep, IntervalSweep):
        log_scale = "log" in sweep.tags
        if isinstance(sweep.start, int) and isinstance(sweep.end, int):
            return IntDistribution(sweep.start, sweep.end, log=log_scale)
        return FloatDistribution(sweep.start, sweep.end, log=log_scale)
    raise ValueError(f"{override.input_line}: not a sweep Optuna can search (choice, range or interval)")


def objective_value(job_return: Any) -> float:
    """A job's return value as a number to minimise or maximise; a failed job raises its error."""
    value = job_return.return_value  # raises the job's exception
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"the job returned {value!r}, not a finite number (stklia.train returns its "
                         f"optimized_metric: is it set?)")
    return float(value)


class OptunaSweeper(Sweeper):
    def __init__(self, sampler: Any, direction: str, study_name: str | None, storage: str | None, n_trials: int,
                 n_jobs: int, params: Mapping[str, str] | None) -> None:
        self.sampler, self.direction, self.study_name, self.storage = sampler, direction, study_name, storage
        self.n_trials, self.n_jobs = n_trials, n_jobs
        self.params = {str(key): str(value) for key, value in (params or {}).items()}

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    def search_space(self, arguments: Sequence[str]) -> tuple[dict[str, Override], list[str]]:
        """The searched keys (name -> sweep override) and the overrides every trial gets."""
        parser = OverridesParser.create()
        overrides = {o.key_or_group: o for o in parser.parse_overrides([f"{k}={v}" for k, v in self.params.items()])}
        overrides.update({o.key_or_group: o for o in parser.parse_overrides(list(arguments))})
        space = {key: o for key, o in overrides.items() if o.is_sweep_override()}
        return space, [o.input_line for o in overrides.values() if not o.is_sweep_override()]

    def sweep(self, arguments: list[str]) -> Any:
        import optuna

        if self.n_trials < 1 or self.n_jobs < 1:
            raise ValueError(f"hydra.sweeper: n_trials ({self.n_trials}) and n_jobs ({self.n_jobs}) must be >= 1")
        space, fixed = self.search_space(arguments)
        distributions = {key: distribution(override) for key, override in space.items()}
        study = optuna.create_study(study_name=self.study_name, storage=self.storage, sampler=self.sampler,
                                    direction=self.direction, load_if_exists=self.study_name is not None)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        log.info("Optuna study %s (%s, %s): %d trials, %d at a time, searching %s", study.study_name,
                 type(study.sampler).__name__, self.direction, self.n_trials, self.n_jobs,
                 " ".join(override.input_line for override in space.values()) or "nothing")
        trials: list[dict[str, Any]] = []
        while len(trials) < self.n_trials:
            batch = [study.ask(distributions) for _ in range(min(self.n_jobs, self.n_trials - len(trials)))]
            jobs = [(*fixed, *(f"{space[key].get_key_element()}={trial.params[key]}" for key in space))
                    for trial in batch]
            self.validate_batch_is_legal(jobs)
            returns = self.launcher.launch(jobs, initial_job_idx=len(trials))
            for trial, job_return in zip(batch, returns):
                job = {"trial": trial.number, "job": len(trials), "params": trial.params}
                try:
                    job["value"] = objective_value(job_return)
                    study.tell(trial, job["value"])
                except Exception as err:  # the study goes on without this trial
                    job["error"] = f"{type(err).__name__}: {err}"
                    log.warning("trial %d (job %d) failed: %s", trial.number, job["job"], job["error"])
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                trials.append(job)
        completed = [job for job in trials if "value" in job]
        if not completed:
            raise RuntimeError(f"no trial of the {len(trials)} completed: see the errors above")
        best = study.best_trial
        best_job = next((job["job"] for job in trials if job["trial"] == best.number), None)
        results = {"study": study.study_name, "direction": self.direction, "best_value": best.value,
                   "best_params": best.params, "best_job": best_job, "trials": trials}
        OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
        log.info("Best trial %d (job %s): value %s, parameters %s", best.number, best_job, best.value, best.params)
        return results
