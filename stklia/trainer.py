"""The training loop: generator + classifier head on random crops, checkpoints, validation, logs."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from stklia.checkpoint import list_checkpoints, load_checkpoint, resolve_checkpoint, save_best, save_checkpoint
from stklia.data.datasets import BatchSchedule, TrainingCrops
from stklia.errors import InputError
from stklia.experiment import (
    check_complete,
    load_split,
    load_trial_split,
    prepare_data,
    resolve_device,
    save_config,
    test_model,
)
from stklia.scoring import evaluate

log = logging.getLogger(__name__)


def train(cfg: DictConfig, model_dir: Path) -> float:
    """Train as configured, writing into model_dir; return the metric a sweeper should minimise.

    That metric is the best validation EER when the data has eval trials, otherwise the test
    EER of the final model, otherwise the last training loss.
    """
    check_complete(cfg)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    prepare_data(cfg.data)
    train_data = load_split(cfg.data, "train")
    validation = load_trial_split(cfg.data, "eval")
    test_set = load_trial_split(cfg.data, "test")  # read now: bad trials must not wait for the end
    speakers = train_data.speakers
    log.info("training data: %d utterances of %d speakers", len(train_data.utts), len(speakers))

    generator = instantiate(cfg.model).to(device)
    head = instantiate(cfg.head, in_features=generator.emb_size, num_classes=len(speakers)).to(device)
    optimizer = instantiate(cfg.optim)(params=[*generator.parameters(), *head.parameters()])
    scheduler = instantiate(cfg.scheduler)(optimizer=optimizer)

    step, best = 0, {"step": None, "eer": math.inf}
    if cfg.checkpoint is not None:
        path = resolve_checkpoint(model_dir, cfg.checkpoint)
        state = load_checkpoint(path)
        if state["speakers"] != speakers:
            raise InputError(path, "was trained on other speakers than the configured training data")
        generator.load_state_dict(state["generator"])
        head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        step, best = state["step"], state["best"]
        log.info("resumed from %s at step %d", path, step)
    elif list_checkpoints(model_dir):
        raise InputError(model_dir, "already holds checkpoints: resume with checkpoint=last, or set another model_dir")
    save_config(cfg, model_dir)

    def checkpoint(step: int) -> None:
        if validation is not None:
            results = evaluate(generator, *validation, cfg.data.cmn, device, num_workers=cfg.num_workers,
                               progress=False)
            eer = results[0]["eer"]
            for r in results:
                writer.add_scalar(f"eval/eer/{Path(r['trials']).name}", r["eer"], step)
            log.info("step %d: validation EER %.2f%%", step, eer)
            if eer < best["eer"]:
                best.update(step=step, eer=eer)
        save_checkpoint(model_dir, step, {
            "step": step, "speakers": speakers, "best": best, "torch_rng": torch.get_rng_state(),
            "generator": generator.state_dict(), "head": head.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        })
        if best["step"] == step:
            save_best(model_dir, step, best["eer"])

    crops = TrainingCrops(train_data, cfg.max_seq_len, cfg.data.cmn)
    schedule = BatchSchedule(crops.labels, cfg.batch_size, cfg.num_iterations, cfg.seed, cfg.sampling, step)
    loader = DataLoader(crops, batch_sampler=schedule, num_workers=cfg.num_workers,
                        pin_memory=device.type == "cuda", persistent_workers=False)
    writer = SummaryWriter(model_dir / "tensorboard", purge_step=step + 1)
    generator.train()
    head.train()
    loss_sum, correct, seen, last_loss = 0.0, 0, 0, math.nan
    progress = tqdm(loader, total=len(schedule), initial=0, desc="train", dynamic_ncols=True,
                    disable=not cfg.progress)
    try:
        for feats, labels in progress:
            feats = feats.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            head.set_step(step)  # margin warm-up / annealing are functions of the step
            logits = head(generator(feats), labels)
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1

            loss_sum += loss.item() * len(labels)
            correct += (logits.argmax(dim=1) == labels).sum().item()
            seen += len(labels)
            if step % cfg.log_interval == 0 or step == cfg.num_iterations:
                lr = optimizer.param_groups[0]["lr"]
                writer.add_scalar("train/loss", loss_sum / seen, step)
                writer.add_scalar("train/accuracy", correct / seen, step)
                writer.add_scalar("train/lr", lr, step)
                progress.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", lr=f"{lr:.3g}")
                log.info("step %d: loss %.4f accuracy %.3f lr %.4g", step, loss_sum / seen, correct / seen, lr)
                last_loss, loss_sum, correct, seen = loss_sum / seen, 0.0, 0, 0
            if step % cfg.checkpoint_interval == 0 or step == cfg.num_iterations:
                checkpoint(step)
    finally:
        writer.close()

    tested = None
    if test_set is not None:
        tested = test_model(generator, test_set, cfg, model_dir, step, device, list(cfg.p_targets), cfg.progress)
    if best["step"] is not None:
        return best["eer"]
    return tested[0]["eer"] if tested else last_loss
