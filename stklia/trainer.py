"""The training loop: generator + classifier head on random crops, checkpoints, validation, logs.

`train` is one process of a run (see stklia.distributed). With several processes each takes its
share of every batch and DistributedDataParallel averages the gradients; rank 0 alone validates
and writes checkpoints, logs and TensorBoard. Everything the rest of a run depends on is in its
checkpoints, so a resumed run (`checkpoint=last`, or a requeued job) is the run that would have
happened; on a pre-emption signal the run stops after the current step with a checkpoint.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from stklia.checkpoint import (
    checkpoint_to_resume,
    load_checkpoint,
    prune_checkpoints,
    remove_partial_saves,
    resolve_checkpoint,
    restore,
    save_best,
    save_checkpoint,
    snapshot,
)
from stklia.data.datasets import BatchSchedule, TrainingCrops
from stklia.distributed import RandomStates, World
from stklia.errors import InputError
from stklia.experiment import load_split, load_trial_split, prepare_data, save_config, test_model
from stklia.preemption import Preemption, hand_over
from stklia.scoring import evaluate

log = logging.getLogger(__name__)

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Classifier(nn.Module):
    """Generator and head as one module, so that DistributedDataParallel synchronises both."""

    def __init__(self, generator: nn.Module, head: nn.Module):
        super().__init__()
        self.generator, self.head = generator, head

    def forward(self, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.head(self.generator(feats), labels)


def set_deterministic(deterministic: bool) -> None:
    """Deterministic kernels only (CUDA needs them for bitwise repeatable runs; CPU kernels already are)."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(deterministic)


def train(cfg: DictConfig, model_dir: Path, world: World) -> float:
    """Train as configured, writing into model_dir; return the metric a sweeper should minimise.

    That metric is the best validation EER when the data has eval trials, otherwise the test
    EER of the final model, otherwise the last training loss (NaN on ranks other than 0).
    """
    device = world.device
    if cfg.amp is not None and cfg.amp not in AMP_DTYPES:
        raise InputError("config", f"amp must be null, {' or '.join(AMP_DTYPES)}, not '{cfg.amp}'")
    if cfg.batch_size % world.size:
        raise InputError("config", f"batch_size {cfg.batch_size} is not a multiple of the {world.size} processes")
    if cfg.keep_last is not None and cfg.keep_last < 1:
        raise InputError("config", f"keep_last must be null (keep all) or at least 1, not {cfg.keep_last}")
    preemption = Preemption(cfg.preempt_signals)
    set_deterministic(cfg.deterministic)
    torch.manual_seed(cfg.seed)
    if world.main:
        prepare_data(cfg.data)
    world.barrier()
    train_data = load_split(cfg.data, "train")
    validation = load_trial_split(cfg.data, "eval")
    test_set = load_trial_split(cfg.data, "test")  # read now: bad trials must not wait for the end
    speakers = train_data.speakers
    log.info("training data: %d utterances of %d speakers", len(train_data.utts), len(speakers))

    augment = instantiate(cfg.augment) if cfg.get("augment") else None
    crops = TrainingCrops(train_data, cfg.max_seq_len, cfg.data.cmn, augment)
    generator = instantiate(cfg.model)
    head = instantiate(cfg.head, in_features=generator.emb_size, num_classes=crops.num_classes)
    model = Classifier(generator, head).to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = instantiate(cfg.optim)(params=list(model.parameters()))
    scheduler = instantiate(cfg.scheduler)(optimizer=optimizer)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    recoverables = {"generator": generator, "head": head, "optimizer": optimizer, "scheduler": scheduler,
                    "scaler": scaler, "rng": RandomStates(world)}

    if cfg.init_from is not None:  # a fine-tuning stage: weights only, a fresh optimizer and schedule
        path = resolve_checkpoint(cfg.init_from, cfg.init_checkpoint)
        state = load_checkpoint(path)
        if state["speakers"] != speakers:
            raise InputError(path, "was trained on other speakers than the configured training data")
        generator.load_state_dict(state["generator"])
        head.load_state_dict(state["head"])
        log.info("initialised from %s", path)
    step, best = 0, {"step": None, "eer": math.inf}
    path = checkpoint_to_resume(model_dir, cfg.checkpoint)
    if path is not None:
        state = load_checkpoint(path)
        if state["speakers"] != speakers:
            raise InputError(path, "was trained on other speakers than the configured training data")
        restore(recoverables, state, path)
        step, best = state["step"], state["best"]
        log.info("resumed from %s at step %d", path, step)
    if world.main:
        remove_partial_saves(model_dir)
        save_config(cfg, model_dir)
    ddp = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None) \
        if world.size > 1 else model

    def checkpoint(step: int, validate: bool = True) -> None:
        if world.main and validate and validation is not None:
            with preemption.sheltering_children():
                results = evaluate(generator, validation, cfg.data.cmn, device, num_workers=cfg.num_workers,
                                   progress=False, extraction=cfg.extraction)
            eer = results[0].metrics["eer"]
            for r in results:
                writer.add_scalar(f"eval/eer/{r.trials.path.name}", r.metrics["eer"], step)
                writer.add_figure(f"eval/det/{r.trials.path.name}", r.figure(), step)
            log.info("step %d: validation EER %.2f%%", step, eer)
            if eer < best["eer"]:
                best.update(step=step, eer=eer)
        state = snapshot(recoverables)  # collective: every rank's random state
        if world.main:
            save_checkpoint(model_dir, step, {"step": step, "speakers": speakers, "best": best, **state})
            if best["step"] == step:
                save_best(model_dir, step, best["eer"])
            prune_checkpoints(model_dir, cfg.keep_last)

    schedule = BatchSchedule(crops.labels, cfg.batch_size, cfg.num_iterations, cfg.seed, cfg.sampling, step,
                             world.rank, world.size)
    # its own generator: drawing worker seeds from the global one would make it depend on where a run started
    loader = DataLoader(crops, batch_sampler=schedule, num_workers=cfg.num_workers,
                        pin_memory=device.type == "cuda", persistent_workers=False, generator=torch.Generator())
    writer = SummaryWriter(model_dir / "tensorboard", purge_step=step + 1) if world.main else None
    autocast = torch.autocast(device.type, dtype=AMP_DTYPES.get(cfg.amp), enabled=cfg.amp is not None)
    ddp.train()
    loss_sum, correct, seen, last_loss, since, stop = 0.0, 0, 0, math.nan, time.perf_counter(), 0
    with preemption.sheltering_children():
        batches = iter(loader)
    progress = tqdm(batches, total=len(schedule), initial=0, desc="train", dynamic_ncols=True,
                    disable=not (cfg.progress and world.main))
    preemption.install()
    try:
        for feats, labels in progress:
            feats = feats.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            head.set_step(step)  # margin warm-up / annealing are functions of the step
            with autocast:
                logits = ddp(feats, labels)
            loss = F.cross_entropy(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1

            loss_sum += loss.item() * len(labels)
            correct += (logits.argmax(dim=1) == labels).sum().item()
            seen += len(labels)
            if step % cfg.log_interval == 0 or step == cfg.num_iterations:
                loss_sum, correct, seen = world.sum([loss_sum, correct, seen])  # over all ranks
                lr = optimizer.param_groups[0]["lr"]
                speed = seen / (time.perf_counter() - since)
                if writer is not None:
                    writer.add_scalar("train/loss", loss_sum / seen, step)
                    writer.add_scalar("train/accuracy", correct / seen, step)
                    writer.add_scalar("train/lr", lr, step)
                    writer.add_scalar("train/samples_per_s", speed, step)
                progress.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", lr=f"{lr:.3g}")
                log.info("step %d: loss %.4f accuracy %.3f lr %.4g, %.0f samples/s", step, loss_sum / seen,
                         correct / seen, lr, speed)
                last_loss, loss_sum, correct, seen = loss_sum / seen, 0.0, 0, 0
                since = time.perf_counter()
            stop = world.max(preemption.received or 0)  # a signal to any rank stops all after this step
            if step % cfg.checkpoint_interval == 0 or step == cfg.num_iterations:
                paused = time.perf_counter()
                checkpoint(step)
                since += time.perf_counter() - paused  # samples/s measures training, not validation
            elif stop:
                checkpoint(step, validate=False)
            if stop:
                break
        tested = None
        if world.main and not stop and test_set is not None:
            tested = test_model(generator, test_set, cfg, model_dir, step, device, list(cfg.p_targets),
                                cfg.progress, writer)
    finally:
        preemption.restore()
        if writer is not None:
            writer.close()
    if stop:
        log.info("step %d: checkpoint written, stopping", step)
        hand_over(stop)

    if not world.main:
        return math.nan
    if best["step"] is not None:
        return best["eer"]
    return tested[0]["eer"] if tested else last_loss
