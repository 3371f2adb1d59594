"""An Optuna study as a Hydra sweep, on current Optuna (the official hydra-optuna-sweeper pins optuna < 3).

Hydra's Sweeper interface: `setup` gets the launcher, `sweep` turns the sweep's overrides into jobs.
Here every trial is one job: the search space is `params` (key -> a Hydra sweep expression) joined by the
sweep overrides of the command line; `choice(...)` is categorical, `range(...)` of integers an integer
step distribution, `interval(a, b)` continuous (integer when both ends are, `tag(log, ...)` on a log
scale). A key may be conditional, `key[parent=a|b]`: it is searched (and set) only in trials whose `parent`
took one of those values (a margin for the margin heads, a learning rate range per optimiser); two conditional
entries of one key with disjoint conditions give it a range per parent value. Plain overrides are passed to
every trial, and fix a key of `params`. Up to `n_jobs` trials run at once, each launched as its own job (in
parallel with a launcher that runs jobs out of this process, such as submitit_local or a cluster's; one at a time
with Hydra's basic launcher, which runs them in this one), and each is told its job's return value when it ends,
when the next trial is asked at once: trials of one search differ in length (a crop length, a pruned trial), and
a batch that waited for its slowest left the other slots idle (a fifth to a quarter of the 4x-budget searches of
docs/recipes.md). A job that raises, or returns something that is not a finite number, is a failed trial (its error
is logged) and the study goes on. At the end the best trial is logged and written, with every trial, to
<sweep dir>/optimization_results.yaml.

With a `storage` (e.g. `sqlite:///<sweep dir>/optuna.db`) and a `study_name`, a sweep that was interrupted and is
started again with the same command (and the same `hydra.sweep.dir`) continues its study: the trials it finished
count towards `n_trials`, a trial it left running is run again in its own job dir (its training resumes from the
job's last checkpoint), and new trials get the job numbers after the last one. A seeded sampler is seeded again
with its seed + the number of trials the study holds, so that it does not propose its first trials once more.

With a `pruner` too (e.g. `hydra/sweeper/pruner=median`), each trial's job reports its objective so far (the lowest
validation EER of `optimized_trials`) at every validation before its last step, and stops training when the pruner
says so: the job ends `pruned` with its checkpoint, untested, and its trial is told PRUNED (Optuna then counts its last
reported value). Trials the pruner stops early leave their cores to the next ones: at a budget of 1000 steps, most
of a search's time goes to trials that are already behind by the first validations. A trial whose job was pruned
before an interruption is not run again.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, NamedTuple

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

_CONDITIONAL = re.compile(r"^(?P<key>[^\[\]=]+)\[(?P<parent>[^\[\]=]+)=(?P<values>[^\[\]]+)\]$")
JOB_ATTR = "job"  # a trial's user attribute: the number of its job (its dir under the sweep dir)
PRUNED_ATTR = "pruned_at"  # a trial's user attribute, set by its job: the step at which the pruner stopped it


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


def suggest(trial: Any, name: str, dist: Any) -> Any:
    """Optuna's suggestion of `name` from `dist`, through the trial's public suggest_* methods."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, log=dist.log, step=dist.step)
    return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)


class Parameter(NamedTuple):
    """A searched key: its Optuna name (the `params` key, condition included), the key it overrides, its
    distribution, and the values of a parent parameter it is searched under (None: always). (Not a dataclass:
    Hydra's plugin scan imports this module without registering it, where a dataclass cannot resolve its
    annotations.)"""

    name: str
    key: str
    override: Override
    dist: Any
    parent: str | None = None
    parent_values: tuple[str, ...] = ()

    def applies(self, chosen: Mapping[str, Any]) -> bool:
        return self.parent is None or str(chosen.get(self.parent)) in self.parent_values


def override_value(value: Any) -> str:
    """A trial's value as an override's value (None as Hydra's null)."""
    return "null" if value is None else str(value)


def objective_value(job_return: Any) -> float:
    """A job's return value as a number to minimise or maximise; a failed job raises its error."""
    value = job_return.return_value  # raises the job's exception
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"the job returned {value!r}, not a finite number (stklia.train returns its "
                         f"optimized_metric: is it set?)")
    return float(value)


class InlineLaunches:
    """Launches run at once in this thread, one at a time. Hydra's basic launcher runs a job in the sweeper's own
    process (changing its working dir and Hydra's global state), where the job's pre-emption handlers need the
    main thread; an error reaches the sweeper as raised."""

    def submit(self, launch: Callable[..., Any], *args: Any) -> Future:
        done: Future = Future()
        done.set_result(launch(*args))
        return done

    def __enter__(self) -> InlineLaunches:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class JobTrial:
    """A job's side of its trial in a study with a pruner: it reports the objective so far and learns whether to
    stop. It finds its trial through the sweeper's storage, by job number, when it first reports (it holds only
    plain data until then, so that it can go to the processes of a distributed run)."""

    def __init__(self, storage: str, study_name: str, job: int, pruner: Mapping[str, Any]) -> None:
        self.storage, self.study_name, self.job, self.pruner = storage, study_name, job, dict(pruner)
        self.trial: Any = None

    @classmethod
    def of_current_job(cls) -> JobTrial | None:
        """The trial of the running Hydra job, when it is a job of a study with a pruner; else None."""
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
        sweeper = hydra_cfg.sweeper
        if hydra_cfg.mode != RunMode.MULTIRUN or sweeper.get("_target_") != SWEEPER_TARGET \
                or sweeper.get("pruner") is None:
            return None
        return cls(sweeper.storage, sweeper.study_name, hydra_cfg.job.num,
                   OmegaConf.to_container(sweeper.pruner, resolve=True))

    def open(self) -> Any:
        import optuna
        from hydra.utils import instantiate

        study = optuna.load_study(study_name=self.study_name, storage=self.storage, pruner=instantiate(self.pruner))
        running = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
                   if t.user_attrs.get(JOB_ATTR) == self.job]
        if len(running) != 1:
            raise RuntimeError(f"study {self.study_name} in {self.storage}: {len(running)} running trials of job "
                               f"{self.job}, not one")
        # A FrozenTrial has no public way to its live Trial (Optuna's own integrations use _trial_id too).
        return optuna.trial.Trial(study, running[0]._trial_id)

    def report(self, step: int, value: float) -> bool:
        """Report the objective so far at training step `step`; whether the pruner stops the trial (then the
        study records the step)."""
        if self.trial is None:
            self.trial = self.open()
        self.trial.report(value, step)
        if not self.trial.should_prune():
            return False
        self.trial.set_user_attr(PRUNED_ATTR, step)
        return True


class OptunaSweeper(Sweeper):
    def __init__(self, sampler: Any, direction: str, study_name: str | None, storage: str | None, n_trials: int,
                 n_jobs: int, params: Mapping[str, str] | None, pruner: Any = None) -> None:
        self.sampler, self.direction, self.study_name, self.storage = sampler, direction, study_name, storage
        self.pruner = pruner
        self.n_trials, self.n_jobs = n_trials, n_jobs
        self.params = {str(key): str(value) for key, value in (params or {}).items()}

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    def search_space(self, arguments: Sequence[str]) -> tuple[list[Parameter], list[str]]:
        """The searched parameters (each after the parent it depends on) and the overrides every trial gets. A
        command-line override of a key replaces its entries of `params`; a conditional entry whose parent the
        command line fixes is searched when the fixed value is one of its values, else dropped."""
        parser = OverridesParser.create()
        entries: dict[str, tuple[str, str, str | None, tuple[str, ...]]] = {}  # name -> key, value, parent, values
        for name, value in self.params.items():
            match = _CONDITIONAL.match(name)
            if match:
                parent_values = tuple(v.strip() for v in match["values"].split("|"))
                entries[name] = (match["key"].strip(), value, match["parent"].strip(), parent_values)
            else:
                entries[name] = (name, value, None, ())
        fixed: dict[str, Override] = {}
        for override in parser.parse_overrides(list(arguments)):  # the command line's own searches and fixes
            key = override.key_or_group
            entries = {name: entry for name, entry in entries.items() if entry[0] != key}
            if override.is_sweep_override():
                entries[key] = (key, override.input_line.split("=", 1)[1], None, ())
            else:
                fixed[key] = override
        parameters: dict[str, Parameter] = {}
        for name, (key, value, parent, parent_values) in entries.items():
            if parent in fixed:  # the condition is decided: an unconditional parameter, or none
                if str(fixed[parent].value()) not in parent_values:
                    continue
                name, parent, parent_values = key, None, ()
            override = parser.parse_override(f"{key}={value}")
            if not override.is_sweep_override():
                fixed.setdefault(key, override)
                continue
            if parent is not None and (parent not in entries or entries[parent][2] is not None):
                raise ValueError(f"hydra.sweeper.params: {name} depends on {parent}, which is not searched "
                                 "unconditionally")
            parameters[name] = Parameter(name, key, override, distribution(override), parent, parent_values)
        ordered = [p for p in parameters.values() if p.parent is None]
        ordered += [p for p in parameters.values() if p.parent is not None]
        return ordered, [override.input_line for override in fixed.values()]

    def sweep(self, arguments: list[str]) -> Any:
        import optuna

        if self.n_trials < 1 or self.n_jobs < 1:
            raise ValueError(f"hydra.sweeper: n_trials ({self.n_trials}) and n_jobs ({self.n_jobs}) must be >= 1")
        if self.pruner is not None and (self.storage is None or self.study_name is None):
            raise ValueError("hydra.sweeper.pruner needs a storage and a study_name: the trials' jobs report to the "
                             "study there (e.g. storage=sqlite:///${hydra.sweep.dir}/optuna.db)")
        parameters, fixed = self.search_space(arguments)
        self.sweep_dir = Path(self.config.hydra.sweep.dir)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)  # (a storage may be a file in it)
        study = optuna.create_study(study_name=self.study_name, storage=self.storage, sampler=self.sampler,
                                    pruner=self.pruner, direction=self.direction,
                                    load_if_exists=self.study_name is not None)
        if study.trials:
            study.sampler = self.continued_sampler(len(study.trials))
        OmegaConf.save(self.config, self.sweep_dir / "multirun.yaml")
        self.errors: dict[int, str] = {}
        self.covered = False  # the sampler has covered its whole space (a grid, brute force)

        def ended() -> int:
            return sum(t.state.is_finished() for t in study.trials)

        stale = [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
        slots = 1 if isinstance(self.launcher, BasicLauncher) else self.n_jobs  # (InlineLaunches says why)
        log.info("Optuna study %s (%s, %s): %d trials, %d at a time (%d done before, %d to run again), searching %s",
                 study.study_name, type(study.sampler).__name__, self.direction, self.n_trials, slots,
                 ended(), len(stale), " ".join(f"{p.name}={p.override.input_line.split('=', 1)[1]}"
                                               for p in parameters) or "nothing")
        next_job = 1 + max((t.user_attrs.get(JOB_ATTR, -1) for t in study.trials), default=-1)
        for trial in [t for t in stale if PRUNED_ATTR in t.user_attrs]:  # its job was pruned: nothing to run
            self.tell_pruned(study, trial)
            stale.remove(trial)
        launches = InlineLaunches() if slots == 1 else ThreadPoolExecutor(slots, thread_name_prefix="launch")
        with launches:
            running: dict[Future, Any] = {}
            while True:
                while len(running) < slots and (stale or (ended() + len(running) < self.n_trials
                                                          and not self.covered)):
                    if stale:  # left running: run again in its own job dir (its training resumes)
                        trial = stale.pop(0)
                    else:
                        trial = self.ask(study, next_job, parameters)
                        next_job += 1
                    job = trial.user_attrs[JOB_ATTR]
                    overrides = self.job_overrides(job, trial, fixed, parameters)
                    running[launches.submit(self.launch, job, overrides)] = trial
                if not running:
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for launch in finished:
                    self.told(study, running.pop(launch), launch.result())
        return self.results(study)

    def ask(self, study: Any, job: int, parameters: list[Parameter]) -> Any:
        """A new trial of the study, as job `job`, with a value for each parameter that applies to it."""
        trial = study.ask()
        trial.set_user_attr(JOB_ATTR, job)
        chosen: dict[str, Any] = {}
        for parameter in parameters:
            if parameter.applies(chosen):
                chosen[parameter.name] = suggest(trial, parameter.name, parameter.dist)
        return trial

    def continued_sampler(self, trials: int) -> Any:
        """The sampler of a study that goes on from `trials` trials. A seeded one starts again from its seed, and
        would propose the trials it proposed first (every one, while it samples at random: TPE's first
        n_startup_trials); seeded with seed + `trials` instead, it goes on with others, as deterministically."""
        from hydra.utils import instantiate

        cfg = self.config.hydra.sweeper.sampler
        if cfg.get("seed") is None:
            return self.sampler
        log.info("the study goes on from %d trials: sampler seed %d + %d", trials, cfg.seed, trials)
        return instantiate(cfg, seed=cfg.seed + trials)

    def job_overrides(self, job: int, trial: Any, fixed: list[str], parameters: list[Parameter]) -> list[str]:
        """The overrides of a trial's job (asked here, in the sweeper's thread, where the study lives). A job whose
        dir holds checkpoints (an interrupted trial's) resumes from the last one."""
        from stklia.modeldir.checkpoints import list_checkpoints

        by_name = {p.name: p for p in parameters}
        trial_overrides = [f"{by_name[name].override.get_key_element()}={override_value(value)}"
                           for name, value in trial.params.items() if name in by_name]
        resume = ["checkpoint=last"] if list_checkpoints(self.sweep_dir / str(job)) else []
        return [*fixed, *trial_overrides, *resume]

    def launch(self, job: int, overrides: list[str]) -> Any:
        """Run one job (one launch each, so that the study goes on as soon as any one ends); its JobReturn."""
        self.validate_batch_is_legal([overrides])
        return self.launcher.launch([overrides], initial_job_idx=job)[0]

    def told(self, study: Any, trial: Any, job_return: Any) -> None:
        """Tell the study how a trial's job ended: pruned, its value, or (a failure) FAIL."""
        import optuna

        frozen = study.get_trials(deepcopy=False)[trial.number]  # as the job left it
        if PRUNED_ATTR in frozen.user_attrs:
            self.tell_pruned(study, frozen)
            return
        try:
            value = objective_value(job_return)
        except Exception as err:  # the study goes on without this trial
            self.errors[trial.number] = f"{type(err).__name__}: {err}"
            log.warning("trial %d (job %d) failed: %s", trial.number, trial.user_attrs[JOB_ATTR],
                        self.errors[trial.number])
            self.tell(study, trial.number, state=optuna.trial.TrialState.FAIL)
        else:
            self.tell(study, trial.number, value)

    def tell(self, study: Any, number: int, value: float | None = None, state: Any = None) -> None:
        """Tell the study a trial's end. A sampler that has covered its space (GridSampler, BruteForceSampler)
        calls Study.stop then, which Optuna allows only inside Study.optimize: the trial is told all the same
        (Optuna stores it first), and the sweep asks no more trials (those running end)."""
        try:
            study.tell(number, value, state=state)
        except RuntimeError as err:
            if "Study.stop" not in str(err):
                raise
            if not self.covered:
                log.info("%s has covered its search space: the study ends after %d trials",
                         type(study.sampler).__name__, len(study.trials))
            self.covered = True

    def tell_pruned(self, study: Any, trial: Any) -> None:
        import optuna

        self.tell(study, trial.number, state=optuna.trial.TrialState.PRUNED)
        log.info("trial %d (job %s) pruned at step %d", trial.number, trial.user_attrs.get(JOB_ATTR),
                 trial.user_attrs[PRUNED_ATTR])

    def results(self, study: Any) -> dict[str, Any]:
        """Write optimization_results.yaml (every trial of the study, the errors of this sweep's) and return it."""
        import optuna

        trials = []
        for trial in sorted(study.trials, key=lambda t: t.user_attrs.get(JOB_ATTR, t.number)):
            job = {"trial": trial.number, "job": trial.user_attrs.get(JOB_ATTR), "params": trial.params}
            if trial.state == optuna.trial.TrialState.COMPLETE:
                job["value"] = trial.value
            elif trial.state == optuna.trial.TrialState.PRUNED:
                job["pruned"] = {"step": trial.user_attrs.get(PRUNED_ATTR), "value": trial.value}
            elif trial.number in self.errors:
                job["error"] = self.errors[trial.number]
            trials.append(job)
        if not any("value" in job for job in trials):
            raise RuntimeError(f"no trial of the {len(trials)} completed: see the errors above")
        best = study.best_trial
        results = {"study": study.study_name, "direction": self.direction, "best_value": best.value,
                   "best_params": best.params, "best_job": best.user_attrs.get(JOB_ATTR), "trials": trials}
        OmegaConf.save(OmegaConf.create(results), self.sweep_dir / "optimization_results.yaml")
        log.info("Best trial %d (job %s): value %s, parameters %s", best.number, results["best_job"], best.value,
                 best.params)
        return results


SWEEPER_TARGET = f"{OptunaSweeper.__module__}.{OptunaSweeper.__name__}"
