"""The training loop: generator + classifier head on random crops, checkpoints, validation, logs.

`train` is one process of a run (see stklia.training.distributed) and reads top to bottom: check the config,
load the data, build the parts, initialise or restore them, loop over the batches, test. With several
processes each takes its share of every batch and DistributedDataParallel averages the gradients;
rank 0 alone validates and writes checkpoints, logs and TensorBoard. Everything the rest of a run
depends on is in its checkpoints, so a resumed run (`checkpoint=last`, or a requeued job) is the run
that would have happened; on a pre-emption signal the run stops after the current step with a
checkpoint.

Rank 0 also records the run for comparing runs (stklia.training.records): status.json when it starts or resumes,
at every checkpoint, at the end, on a signal and on a failure, and TensorBoard HParams at the end.

The loop does not wait for the device at every step: loss and accuracy are summed on the device and
read at log intervals, and processes agree on a pre-emption signal (one collective) every
`preempt_check_interval` steps and at checkpoints; a single process checks it at every step. Likewise a
non-finite loss or gradient is recorded on the device at the step it happens and read at log intervals and
before every checkpoint (NonFiniteGuard), and no checkpoint is written with non-finite weights.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import torch
import torch.nn.functional as F
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from stklia.core.config import build
from stklia.core.errors import InputError
from stklia.core.progress import progress_bar
from stklia.data.datasets import BatchSchedule, TrainingCrops, stop_workers, training_loader
from stklia.data.kaldi import DataSet
from stklia.data.splits import load_dirs, load_trial_split, prepare_data
from stklia.data.staging import is_packed, stage, staged_path
from stklia.data.trials import EvalData
from stklia.evaluation.embeddings import Embedder, Extraction
from stklia.evaluation.metrics import METRIC_DECIMALS
from stklia.evaluation.scoring import evaluate
from stklia.evaluation.testing import EvaluationRequest, log_results, test_model
from stklia.modeldir.checkpoints import (
    BestCheckpoint,
    last_checkpoint_note,
    load_checkpoint,
    prune_checkpoints,
    remove_partial_saves,
    resolve_checkpoint,
    save_checkpoint,
    write_best,
)
from stklia.modeldir.config import load_saved_config, save_config
from stklia.training.checkpointing import BestValidation, checkpoint_to_resume, restore, snapshot
from stklia.training.distributed import RandomStates, World, seed_everything
from stklia.training.heads import MarginHead
from stklia.training.preemption import Preemption, hand_over
from stklia.training.records import RunRecord, RunStatus, log_hparams

if TYPE_CHECKING:  # the Optuna sweeper's, an extra
    from hydra_plugins.stklia_optuna_sweeper.optuna_sweeper import JobTrial

log = logging.getLogger(__name__)

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
PIPES_WARNED = 1000  # training utterances read through pipes from which a run warns
# what `train` can return to a sweeper (`optimized_metric`): the split and the result key of each
OPTIMIZED_METRICS = {"eval_eer": ("eval", "eer"), "test_eer": ("test", "eer"),
                     "test_asnorm_eer": ("test", "asnorm_eer")}


class TrainingModel(nn.Module):
    """Generator and head as one module (what is trained), so that DistributedDataParallel synchronises both."""

    def __init__(self, generator: nn.Module, head: nn.Module):
        super().__init__()
        self.generator, self.head = generator, head

    def forward(self, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.head(self.generator(feats), labels)


def check_config(cfg: DictConfig, world: World) -> None:
    """Settings that cannot work stop the run before anything is loaded or written."""
    if cfg.amp is not None and cfg.amp not in AMP_DTYPES:
        raise InputError("config", f"amp must be null, {' or '.join(AMP_DTYPES)}, not '{cfg.amp}'")
    if cfg.batch_size % world.size:
        raise InputError("config", f"batch_size {cfg.batch_size} is not a multiple of the {world.size} processes")
    if cfg.keep_last is not None and cfg.keep_last < 1:
        raise InputError("config", f"keep_last must be null (keep all) or at least 1, not {cfg.keep_last}")
    if cfg.features_on_device not in ("auto", True, False):
        raise InputError("config", f"features_on_device must be auto, true or false, not '{cfg.features_on_device}'")
    if not isinstance(cfg.num_workers, int) or cfg.num_workers < 0:
        raise InputError("config", f"num_workers must be a whole number, 0 or more, not {cfg.num_workers!r}")
    if cfg.num_workers and (not isinstance(cfg.prefetch_factor, int) or cfg.prefetch_factor < 1):
        raise InputError("config", f"prefetch_factor must be a whole number, 1 or more, not {cfg.prefetch_factor!r}")
    if not 0 <= cfg.label_smoothing < 1:
        raise InputError("config", f"label_smoothing must be in [0, 1), not {cfg.label_smoothing}")
    if cfg.num_threads is not None and (not isinstance(cfg.num_threads, int) or cfg.num_threads < 1):
        raise InputError("config", f"num_threads must be null (torch's default) or at least 1, not {cfg.num_threads!r}")
    if cfg.preempt_check_interval < 1:
        raise InputError("config", f"preempt_check_interval must be at least 1, not {cfg.preempt_check_interval}")
    metric = cfg.optimized_metric
    if metric is not None:
        if metric not in OPTIMIZED_METRICS:
            raise InputError("config", f"optimized_metric must be null or one of {', '.join(OPTIMIZED_METRICS)}, "
                             f"not '{metric}'")
        split, key = OPTIMIZED_METRICS[metric]
        lists = len(cfg.data.get(f"{split}_trials") or []) if cfg.data.get(split) is not None else 0
        if not 0 <= cfg.optimized_trials < lists:
            raise InputError("config", f"optimized_metric={metric} on optimized_trials={cfg.optimized_trials} needs "
                             f"that trial list in data.{split}_trials ({lists} configured)")
        if key.startswith("asnorm") and (cfg.data.get("cohort") is None or not cfg.data.get("asnorm_top_n")):
            raise InputError("config", f"optimized_metric={metric} needs AS-norm (data.cohort and data.asnorm_top_n)")
    if cfg.get("stage") == "lmft" and not issubclass(get_class(cfg.head._target_), MarginHead):
        raise InputError("head", f"{cfg.head._target_} has no margin to enlarge: large-margin fine-tuning "
                         "(+stage=lmft) is for the margin heads amsoftmax, arcface and subcenter_arcface")


def set_deterministic(deterministic: bool) -> None:
    """Deterministic kernels only (CUDA needs them for bitwise repeatable runs; CPU kernels already are)."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(deterministic)


@dataclass
class RunData:
    """The data of a run: training crops, and the validation and test trial lists (None when not configured)."""

    crops: TrainingCrops
    speakers: list[str]
    validation: EvalData | None
    test: EvalData | None


def load_run_data(cfg: DictConfig, world: World) -> RunData:
    """Prepare the data (rank 0, once), then read every split, test included: bad trials must not wait for the end."""
    if world.main:
        prepare_data(cfg.data, cfg.progress)
    world.barrier()
    train_dirs, augment_cfg = stage_run_data(cfg, world)
    train_data = load_dirs(train_dirs, cfg.data)
    speakers = train_data.speakers
    log.info("training data: %d utterances of %d speakers; %s, %d torch threads", len(train_data.utts), len(speakers),
             world.device, torch.get_num_threads())
    warn_about_pipes(train_data)
    augment = build(augment_cfg) if augment_cfg else None
    on_device = features_on_device(cfg.features_on_device, train_data, world)
    if train_data.audio:
        log.info("audio features and augmentation: %s", f"on the training device ({world.device})" if on_device
                 else "in the loader workers")
    crops = TrainingCrops(train_data, cfg.max_seq_len, cfg.data.cmn, augment, on_device)
    return RunData(crops, speakers, load_trial_split(cfg.data, "eval"), load_trial_split(cfg.data, "test"))


def stage_run_data(cfg: DictConfig, world: World) -> tuple[list[str], DictConfig | None]:
    """The training dirs and the augmentation config, with `data.stage_to`: the packed ones (stklia.pack) staged
    to that node-local dir (data.staging) by one process per node, the others waiting for it, and the copies
    used; a dir that is not packed is read where it is (said once)."""
    train = list(cfg.data.train) if OmegaConf.is_list(cfg.data.train) else [cfg.data.train]
    stage_to = cfg.data.get("stage_to")
    if not stage_to:
        return train, cfg.get("augment")
    augment = OmegaConf.to_container(cfg.augment, resolve=True) if cfg.get("augment") else None
    lists = [] if augment is None else [(augment["reverb"], "rirs")] if augment.get("reverb") else []
    if augment is not None and augment.get("noise"):
        lists += [(source, "list") for source in augment["noise"]["sources"].values()]
    staged = []
    for path in [*train, *(node[key] for node, key in lists)]:
        if not is_packed(path):
            log.warning("data.stage_to: %s is not packed (python -m stklia.pack): it is read where it is", path)
            staged.append(path)
            continue
        if world.node_main:
            stage(path, stage_to)
        staged.append(str(staged_path(path, stage_to)))
    world.barrier()  # the other processes of each node wait for its copies
    for path in staged:
        if not Path(path, "wav.scp").is_file():
            raise InputError("data.stage_to", f"{path} was not staged on this node: is {stage_to} node-local to all "
                             "the processes of a node?")
    for (node, key), path in zip(lists, staged[len(train) :]):
        node[key] = path
    return staged[: len(train)], OmegaConf.create(augment) if augment is not None else None


def features_on_device(setting: str | bool, data: DataSet, world: World) -> bool:
    """Whether the training device computes the features of audio crops: `auto` does on a GPU, for audio data."""
    if setting == "auto":
        return world.device.type == "cuda" and len(data.audio) == len(data.utts)
    return setting


def warn_about_pipes(data: DataSet) -> None:
    """One line when many training utterances are `command |` pipes: every item of them decodes a whole file."""
    pipes = data.num_pipes()
    if pipes >= PIPES_WARNED:
        log.warning("%d training utterances are read through `command |` pipes in wav.scp: each training item runs "
                    "its command and decodes the whole recording (an 8 s m4a through ffmpeg costs a loader core about "
                    "30 times a FLAC crop, docs/benchmarks.md); convert them once to FLAC "
                    "(recipes/voxceleb/local/convert_audio.py, stage 0 of recipes/voxceleb/run.sh) and train on the "
                    "converted data dir", pipes)


@dataclass
class Parts:
    """What a run trains and what its checkpoints save and restore."""

    generator: nn.Module
    head: nn.Module
    model: TrainingModel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    best: BestValidation
    recoverables: dict = field(default_factory=dict)


def build_parts(cfg: DictConfig, num_classes: int, world: World) -> Parts:
    generator = build(cfg.model)
    head = build(cfg.head, in_features=generator.emb_size, num_classes=num_classes)
    model = TrainingModel(generator, head).to(world.device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build(cfg.optim)(params=list(model.parameters()))
    scheduler = build(cfg.scheduler)(optimizer=optimizer)
    scaler = torch.amp.GradScaler(world.device.type, enabled=cfg.amp == "fp16")
    best = BestValidation()
    recoverables = {"generator": generator, "head": head, "optimizer": optimizer, "scheduler": scheduler,
                    "scaler": scaler, "rng": RandomStates(world), "best": best}
    return Parts(generator, head, model, optimizer, scheduler, scaler, best, recoverables)


def load_trained_on(path: Path, speakers: list[str]) -> dict:
    """A checkpoint's state, which must come from training on the same speakers."""
    state = load_checkpoint(path)
    if state["speakers"] != speakers:
        raise InputError(path, "was trained on other speakers than the configured training data")
    return state


def inherit_from_init(cfg: DictConfig) -> None:
    """A run that starts from another model dir's weights (`init_from`) takes its model and front end (the
    generator those weights fit, the features they were trained on): config.yaml's `model`, `data.features`,
    `data.features_per_frame` and `data.cmn`, which the run's own config.yaml then records."""
    saved = load_saved_config(cfg.init_from)
    with open_dict(cfg):
        cfg.model = saved.model
        for key in ("features", "features_per_frame", "cmn"):
            cfg.data[key] = saved.data.get(key)
    log.info("model and front end from %s (%s)", cfg.init_from, cfg.model._target_)


def initialise_from(parts: Parts, model_dir: str, checkpoint: str | int, speakers: list[str]) -> None:
    """A fine-tuning stage starts from another run's weights only, with a fresh optimizer and schedule: the
    generator's, and the head's when it was trained on the same speakers; otherwise (another domain's speakers,
    or an imported model, which has no head) the head starts afresh."""
    path = resolve_checkpoint(model_dir, checkpoint)
    state = load_checkpoint(path)
    parts.generator.load_state_dict(state["generator"])
    if "head" in state and state.get("speakers") == speakers:
        parts.head.load_state_dict(state["head"])
        log.info("initialised from %s", path)
    else:
        log.info("initialised the generator from %s; the head (%d speakers) starts afresh", path, len(speakers))


def restore_run(parts: Parts, model_dir: Path, checkpoint: str | int | None, speakers: list[str]) -> int:
    """The step to continue from: that of the checkpoint resumed (with every recoverable restored), or 0."""
    path = checkpoint_to_resume(model_dir, checkpoint)
    if path is None:
        return 0
    state = load_trained_on(path, speakers)
    restore(parts.recoverables, state, path)
    log.info("resumed from %s at step %d", path, state["step"])
    return state["step"]


class TrainingMeter:
    """Loss, accuracy and speed since the last log line. Sums stay on the device: reading them (`read`)
    is the only host synchronisation, done at log intervals; time spent elsewhere is `excluded`."""

    def __init__(self, device: torch.device):
        self.device = device
        self.logged_samples, self.logged_seconds = 0, 0.0  # over all reads: the run's mean speed
        self.reset()

    def reset(self) -> None:
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.correct = torch.zeros((), dtype=torch.int64, device=self.device)
        self.seen = 0
        self.since = time.perf_counter()

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.loss_sum += loss.detach() * len(labels)
        self.correct += (logits.detach().argmax(dim=1) == labels).sum()
        self.seen += len(labels)

    def exclude(self, seconds: float) -> None:
        self.since += seconds

    def read(self, world: World) -> tuple[float, float, float]:
        """Mean loss, accuracy and samples/s over all processes since the last read; then start again."""
        loss_sum, correct, seen = world.sum([self.loss_sum.item(), self.correct.item(), self.seen])
        seconds = time.perf_counter() - self.since
        self.logged_samples += int(seen)
        self.logged_seconds += seconds
        self.reset()
        return loss_sum / seen, correct / seen, seen / seconds


NEVER = 2**62  # NonFiniteGuard's "no such step yet"


class NonFiniteGuard:
    """Stops a run whose loss, gradients or weights are no longer finite, without a host synchronisation per step.

    `record` keeps on the device the first step whose loss, or gradient norm, was NaN or Inf; `check` reads it,
    at log intervals and before every checkpoint, and stops the run naming that step and its batch's
    utterances; `check_weights` stops it before a checkpoint that would hold non-finite weights. Under
    amp=fp16, non-finite gradients are the grad scaler's business (it skips the step and lowers its scale).
    """

    def __init__(self, device: torch.device, check_gradients: bool, model_dir: Path,
                 batch_utts: Callable[[int], list[str]]):
        self.first = torch.full((2,), NEVER, dtype=torch.int64, device=device)  # (loss, gradients)
        self.check_gradients, self.model_dir, self.batch_utts = check_gradients, model_dir, batch_utts

    def record(self, step: int, loss: torch.Tensor, parameters: Iterable[torch.Tensor]) -> None:
        gradients = [p.grad for p in parameters if p.grad is not None] if self.check_gradients else []
        norm = torch.nn.utils.get_total_norm(gradients) if gradients else torch.zeros((), device=loss.device)
        bad = ~torch.isfinite(torch.stack([loss.detach().float(), norm.float()]))
        self.first = torch.minimum(self.first, torch.where(bad, step, NEVER))

    def _stop(self, step: int, what: str) -> NoReturn:
        raise InputError(self.model_dir, f"{what}; stopped at step {step} without a checkpoint, "
                         f"{last_checkpoint_note(self.model_dir)}")

    def check(self, world: World, step: int) -> None:
        first_loss, first_gradient = world.min(self.first.tolist())
        if min(first_loss, first_gradient) == NEVER:
            return
        bad = min(first_loss, first_gradient)
        utts = self.batch_utts(bad)
        shown = ", ".join(utts[:8]) + (f" and {len(utts) - 8} more" if len(utts) > 8 else "")
        what = "training loss" if first_loss <= first_gradient else "gradient norm"
        self._stop(step, f"step {bad}: the {what} is not finite (NaN or Inf); its batch held {shown}")

    def check_weights(self, modules: dict[str, nn.Module], step: int) -> None:
        """Every floating-point weight and buffer of `modules` is finite: their norm is (one fused reduction,
        one host synchronisation), or else each is looked at."""
        tensors = {f"{name}.{key}": t for name, module in modules.items()
                   for key, t in module.state_dict().items() if t.is_floating_point()}
        if torch.isfinite(torch.nn.utils.get_total_norm(list(tensors.values()))):
            return
        bad = [name for name, t in tensors.items() if not torch.isfinite(t).all()]
        if bad:  # (else the norm overflowed)
            self._stop(step, f"step {step}: the weights are not finite ({bad[0]})")


@dataclass
class Run:
    """One process's training run: its settings and place, data and parts, and (rank 0) its records."""

    cfg: DictConfig
    model_dir: Path
    world: World
    data: RunData
    parts: Parts
    preemption: Preemption
    writer: SummaryWriter | None = None
    status: RunStatus | None = None
    trial: JobTrial | None = None  # (rank 0) the run's trial in a study with a pruner
    pruned: bool = False

    def validate(self, step: int) -> bool:
        """Score the validation lists (rank 0); whether this step is the best so far."""
        extraction = Extraction.of(self.cfg, self.world.device, self.cfg.data.cmn, progress=False)
        with self.preemption.sheltering_children():
            results = evaluate(Embedder(self.parts.generator, extraction), self.data.validation)
        log_results(self.writer, "eval", results, step)
        log.info("step %d: validation EER %.2f%%", step, results[0].metrics["eer"])
        return self.parts.best.update(step, [r.metrics["eer"] for r in results])

    def checkpoint(self, step: int, meter: TrainingMeter, validate: bool = True) -> None:
        """At a checkpoint step: validate (rank 0), save every recoverable, remember the best (once its checkpoint
        is on disk), prune old checkpoints, record the run's status."""
        best = self.world.main and validate and self.data.validation is not None and self.validate(step)
        state = snapshot(self.parts.recoverables)  # collective: every rank's random state
        if self.world.main:
            save_checkpoint(self.model_dir, step, {"step": step, "speakers": self.data.speakers, **state})
            if best:
                write_best(self.model_dir, BestCheckpoint(step, round(self.parts.best.eer, METRIC_DECIMALS)))
            prune_checkpoints(self.model_dir, self.cfg.keep_last)
            self.status.checkpoint(step, meter.logged_samples, meter.logged_seconds)
            if self.trial is not None and validate and step < self.cfg.num_iterations:  # at the end: nothing to save
                so_far = self.parts.best.lowest_eers[self.cfg.optimized_trials]
                self.pruned = self.trial.report(step, so_far)
                if self.pruned:
                    log.info("step %d: pruned by the study (lowest validation EER so far %.2f%%)", step, so_far)


def make_loader(cfg: DictConfig, crops: TrainingCrops, start_step: int, world: World) -> DataLoader:
    """Batches of steps start_step.. of this process's share; they depend on (seed, step) only."""
    schedule = BatchSchedule(crops.labels, cfg.batch_size, cfg.num_iterations, cfg.seed, cfg.sampling, start_step,
                             world.rank, world.size)
    # One pass over every step: the workers live for the whole run (persistent_workers would change nothing).
    return training_loader(crops, schedule, cfg.num_workers, cfg.prefetch_factor, world.device.type == "cuda")


def training_step(parts: Parts, model: nn.Module, feats: torch.Tensor, labels: torch.Tensor, step: int,
                  autocast: torch.autocast, guard: NonFiniteGuard | None = None, label_smoothing: float = 0.0
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Optimizer step `step + 1`, on a batch; returns the loss and logits (still on the device). `guard` records
    a non-finite loss or gradient; `label_smoothing` is cross-entropy's (0: none)."""
    parts.head.set_step(step)  # margin warm-up / annealing are functions of the step
    with autocast:
        logits = model(feats, labels)
    loss = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
    parts.optimizer.zero_grad(set_to_none=True)
    parts.scaler.scale(loss).backward()
    if guard is not None:
        guard.record(step + 1, loss, parts.model.parameters())
    parts.scaler.step(parts.optimizer)
    parts.scaler.update()
    parts.scheduler.step()
    return loss, logits


def stop_signal(preemption: Preemption, world: World, step: int, cfg: DictConfig) -> int:
    """The signal that stops the run after this step (0: none). All processes agree on it, at the steps where
    they all check: every `preempt_check_interval` steps and at checkpoint steps (every step in one process)."""
    if world.size == 1:
        return preemption.received or 0
    if step % cfg.preempt_check_interval and step % cfg.checkpoint_interval and step != cfg.num_iterations:
        return 0
    return world.max(preemption.received or 0)  # a signal to any process stops all


def log_progress(meter: TrainingMeter, parts: Parts, world: World, step: int, writer: SummaryWriter | None,
                 progress: tqdm) -> None:
    loss, accuracy, speed = meter.read(world)
    lr = parts.optimizer.param_groups[0]["lr"]
    if writer is not None:
        for name, value in (("loss", loss), ("accuracy", accuracy), ("lr", lr), ("samples_per_s", speed)):
            writer.add_scalar(f"train/{name}", value, step)
    progress.set_postfix(loss=f"{loss:.3f}", acc=f"{accuracy:.3f}", lr=f"{lr:.3g}")
    log.info("step %d: loss %.4f accuracy %.3f lr %.4g, %.0f samples/s", step, loss, accuracy, lr, speed)


def fit(run: Run, step: int) -> tuple[int, int]:
    """Train from `step` to the last step, or until a pre-emption signal or the study's pruner stops it
    (`run.pruned`); return the step reached and the signal (0: none). Checkpoints are written at their interval, at
    the end and on a signal."""
    cfg, parts, world, crops = run.cfg, run.parts, run.world, run.data.crops
    model = DistributedDataParallel(parts.model, device_ids=[world.device] if world.device.type == "cuda" else None) \
        if world.size > 1 else parts.model
    autocast = torch.autocast(world.device.type, dtype=AMP_DTYPES.get(cfg.amp), enabled=cfg.amp is not None)
    meter = TrainingMeter(world.device)
    model.train()
    loader = make_loader(cfg, crops, step, world)
    schedule = loader.batch_sampler

    def batch_utts(at_step: int) -> list[str]:  # the batch of a step is a function of (seed, step)
        return sorted({crops.data.utts[index] for index, _ in schedule.batch(at_step - 1)})

    guard = NonFiniteGuard(world.device, cfg.amp != "fp16", run.model_dir, batch_utts)
    with run.preemption.sheltering_children():
        batches = iter(loader)
    progress = progress_bar(batches, total=len(loader), desc="train", enabled=cfg.progress and world.main)
    try:
        for batch in progress:
            feats, labels = crops.to_device(batch, world.device)
            loss, logits = training_step(parts, model, feats, labels, step, autocast, guard, cfg.label_smoothing)
            meter.add(loss, logits, labels)
            step += 1
            periodic, last = step % cfg.checkpoint_interval == 0, step == cfg.num_iterations
            logged = step % cfg.log_interval == 0 or last
            stop = stop_signal(run.preemption, world, step, cfg)
            if logged or periodic or stop:
                guard.check(world, step)
            if logged:
                log_progress(meter, parts, world, step, run.writer, progress)
            if periodic or last or stop:
                guard.check_weights({"generator": parts.generator, "head": parts.head}, step)
                paused = time.perf_counter()
                run.checkpoint(step, meter, validate=periodic or last)
                meter.exclude(time.perf_counter() - paused)  # samples/s measures training, not validation
                if world.size > 1 and periodic:  # rank 0 decides, every rank stops
                    run.pruned = bool(world.max(int(run.pruned)))
            if stop:
                return step, stop
            if run.pruned:
                return step, 0
    finally:
        progress.close()
        stop_workers(batches)
    return step, 0


def optimized_value(cfg: DictConfig, best: BestValidation, tested: list[dict] | None, model_dir: Path
                    ) -> float | None:
    """The `optimized_metric` of a finished run (None when it is null): an EER in %, on trial list
    `optimized_trials` of its split. A value that is not a finite number fails the run, so that a sweeper gets a
    failure, never a NaN to minimise."""
    if cfg.optimized_metric is None:
        return None
    split, key = OPTIMIZED_METRICS[cfg.optimized_metric]
    index = cfg.optimized_trials
    if split == "eval":
        value = best.lowest_eers[index] if index < len(best.lowest_eers) else math.nan
    else:
        value = tested[index][key]
    if not math.isfinite(value):
        raise RuntimeError(f"{model_dir}: optimized_metric={cfg.optimized_metric} (optimized_trials={index}) is "
                           f"{value}: nothing to return to the sweeper")
    return value


def test_after_training(run: Run, step: int) -> list[dict] | None:
    """The test of the finished run on the experiment's test lists (rank 0), or None when it has none."""
    if run.data.test is None:
        return None
    extraction = Extraction.of(run.cfg, run.world.device, run.cfg.data.cmn)
    request = EvaluationRequest(run.data.test, list(run.cfg.p_targets))
    return test_model(Embedder(run.parts.generator, extraction), request, run.model_dir, step, run.writer)


def train(cfg: DictConfig, model_dir: Path, world: World, record: RunRecord | None = None,
          trial: JobTrial | None = None) -> float | None:
    """Train as configured, writing into model_dir; return the `optimized_metric` (None when it is null,
    and on processes other than rank 0). Nothing is written before the start-up checks have passed (the
    config, the data, the model dir and what it resumes from); then `record` (.hydra/, train.log) is.
    A job of a study with a pruner reports to its `trial` and may stop early, untested (state `pruned`)."""
    started = time.perf_counter()
    check_config(cfg, world)
    if trial is not None and (cfg.optimized_metric != "eval_eer" or not cfg.data.eval_trials):
        raise InputError("config", "hydra.sweeper.pruner stops trials on their validation EER so far: it needs "
                                   f"optimized_metric=eval_eer (not {cfg.optimized_metric}) and data.eval_trials")
    if cfg.init_from is not None:
        inherit_from_init(cfg)
    preemption = Preemption(cfg.preempt_signals, interrupt=True)
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    set_deterministic(cfg.deterministic)
    seed_everything(cfg.seed)
    data = load_run_data(cfg, world)
    parts = build_parts(cfg, data.crops.num_classes, world)
    if cfg.init_from is not None:
        initialise_from(parts, cfg.init_from, cfg.init_checkpoint, data.speakers)
    start = restore_run(parts, model_dir, cfg.checkpoint, data.speakers)
    run = Run(cfg, model_dir, world, data, parts, preemption, trial=trial if world.main else None)
    if record is not None:
        record.commit(model_dir, write_hydra=world.main)
    if world.main:
        remove_partial_saves(model_dir)
        save_config(cfg, model_dir)
        run.status = RunStatus(model_dir, start, cfg.num_iterations, started)
        run.writer = SummaryWriter(model_dir / "tensorboard", purge_step=start + 1)
    value = None
    run.preemption.install()
    try:
        step, stop = fit(run, start)
        if world.main and not stop:
            tested = None if run.pruned else test_after_training(run, step)  # (a pruned run's HParams too)
            log_hparams(run.writer, cfg, model_dir, step, parts.best.eer if parts.best.step is not None else None,
                        tested)
            value = optimized_value(cfg, parts.best, tested, model_dir)
    except BaseException as err:
        if run.status is not None:
            run.status.end("failed", f"{type(err).__name__}: {err}")
        raise
    finally:
        run.preemption.restore()
        if run.writer is not None:
            run.writer.close()
    if stop:
        log.warning("step %d: checkpoint written, stopping; to resume, run the same command with checkpoint=last",
                    step)
        if run.status is not None:
            run.status.end("pre-empted")
        hand_over(stop)
    if run.status is not None:
        run.status.end("pruned" if run.pruned else "finished")
    return value
