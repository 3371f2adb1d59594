"""DistributedDataParallel on CPU: 2 processes with the gloo backend, started by torchrun or by multi_gpu."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from stklia.data.datasets import BatchSchedule
from stklia.modeldir.checkpoints import list_checkpoints, load_checkpoint

from conftest import ONE_THREAD, N, assert_same_run, checkpoint_path, hooked, run_stklia, short_run, torchrun


def test_both_ranks_hold_identical_weights(ddp_run: Path) -> None:
    state = load_checkpoint(checkpoint_path(ddp_run, 2 * N))
    cfg = OmegaConf.load(ddp_run / "config.yaml")
    generator = instantiate(cfg.model)
    head = instantiate(cfg.head, in_features=generator.emb_size, num_classes=len(state["speakers"]))
    names = [(part, name) for part, module in (("generator", generator), ("head", head))
             for name, _ in module.named_parameters()]
    rank0, rank1 = (torch.load(ddp_run / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert len(rank0) == len(rank1) == len(names)
    for (part, name), a, b in zip(names, rank0, rank1):
        assert torch.equal(a, b), f"ranks differ on {part}.{name}"
        assert torch.equal(a, state[part][name]), f"the checkpoint differs from rank 0 on {part}.{name}"
    assert len(state["rng"]["ranks"]) == 2  # every rank's random state is saved
    log = (ddp_run / "train.log").read_text()
    assert "distributed run: 2 processes (gloo)" in log
    assert log.count("validation EER") == 2  # rank 0 alone validates, at steps N and 2N


def test_preempted_rank_stops_all_and_multi_gpu_resumes_exactly(demo_root: Path, tmp_path: Path,
                                                                 ddp_run: Path) -> None:
    model_dir = tmp_path / "model"
    # the processes agree on a signal every preempt_check_interval steps (and at checkpoints), not at every step
    stopped = torchrun(*short_run(demo_root), f"model_dir={model_dir}", *hooked("SIGTERM", N + 1, rank=1),
                       "preempt_check_interval=2", cwd=tmp_path)
    assert stopped.returncode != 0  # torchrun reports the workers' status 143 as a failure
    assert list(list_checkpoints(model_dir)) == [N, N + 2]  # the signal reached rank 1 only: both stopped at the check
    run_stklia("train", *short_run(demo_root), f"model_dir={model_dir}", "checkpoint=last", "multi_gpu=2", cwd=tmp_path,
               env=ONE_THREAD)
    assert "multi_gpu: started 2 processes" in (model_dir / "train.log").read_text()
    reference = load_checkpoint(checkpoint_path(ddp_run, 2 * N))
    assert_same_run(load_checkpoint(checkpoint_path(model_dir, 2 * N)), reference)


def test_ranks_share_each_global_batch() -> None:
    labels = np.repeat(np.arange(5), 3)
    full = BatchSchedule(labels, 12, 3, seed=7)
    shards = [list(BatchSchedule(labels, 12, 3, seed=7, rank=r, world_size=4)) for r in range(4)]
    for step, batch in enumerate(full):
        assert all(len(shard[step]) == 3 for shard in shards)
        assert [shards[i % 4][step][i // 4] for i in range(12)] == batch
