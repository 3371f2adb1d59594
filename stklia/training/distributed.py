"""The processes of a training run: one, or one per GPU with DistributedDataParallel.

A run is distributed when it is started by `torchrun` (RANK / WORLD_SIZE / LOCAL_RANK in the
environment), as several Slurm tasks of a submitit job (`hydra.launcher.tasks_per_node`), or by
`multi_gpu` (true: one process per visible GPU; N: N processes, gloo on CPU), which spawns the
processes itself. Backend: nccl on CUDA, gloo on CPU.
"""

from __future__ import annotations

import logging
import logging.config
import os
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from omegaconf import DictConfig

from stklia.core.devices import resolve_device
from stklia.core.errors import InputError, exit_on_input_error
from stklia.training.preemption import Preemption, hand_over

log = logging.getLogger(__name__)

# Ranks wait at a barrier while rank 0 validates, which takes minutes on a large eval set.
GROUP_TIMEOUT = timedelta(hours=1)


@dataclass(frozen=True)
class World:
    """This process's place in the run, and the few collectives the trainer needs."""

    device: torch.device
    rank: int = 0
    size: int = 1
    local_rank: int = 0  # the rank among the processes of this node

    @property
    def main(self) -> bool:
        """Rank 0 alone writes logs, checkpoints and TensorBoard, and validates."""
        return self.rank == 0

    @property
    def node_main(self) -> bool:
        """Local rank 0 does what is done once per node (staging data to its disk)."""
        return self.local_rank == 0

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def max(self, value: int) -> int:
        if self.size == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return int(tensor.item())

    def min(self, values: list[int]) -> list[int]:
        if self.size == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.int64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
        return tensor.tolist()

    def sum(self, values: list[float]) -> list[float]:
        if self.size == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def gather(self, obj: object) -> list:
        """Every rank's `obj`, in rank order, on every rank."""
        if self.size == 1:
            return [obj]
        out = [None] * self.size
        dist.all_gather_object(out, obj)
        return out


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's (CUDA's too) global generators: two runs with one seed start from the
    same random states, which their checkpoints record (RandomStates)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class RandomStates:
    """The random generators (python, numpy, torch, CUDA) of every rank, as one recoverable.

    state_dict() is collective in a distributed run; load_state_dict() gives each rank its own.
    The training batches do not draw from these (they are a function of (seed, step)), but any
    future draw (dropout, augmentation in the main process) then repeats exactly after a resume.
    """

    def __init__(self, world: World):
        self.world = world

    def state_dict(self) -> dict:
        np_state = np.random.get_state()
        local = {
            "python": random.getstate(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None,
        }
        return {"ranks": self.world.gather(local)}

    def load_state_dict(self, state: dict) -> None:
        ranks = state["ranks"]
        if len(ranks) != self.world.size:
            log.warning("the checkpoint has the random states of %d processes, this run has %d: not an exact resume",
                        len(ranks), self.world.size)
        local = ranks[self.world.rank % len(ranks)]
        random.setstate(local["python"])
        name, key, *rest = local["numpy"]
        np.random.set_state((name, key.numpy().astype(np.uint32), *rest))
        torch.set_rng_state(local["torch"])
        if local["cuda"] is not None and self.world.device.type == "cuda":
            torch.cuda.set_rng_state(local["cuda"], self.world.device)


def launch(cfg: DictConfig, fn: Callable[[World], float | None], logging_config: dict | None = None
           ) -> float | None:
    """Run `fn` in every process of the run and return rank 0's result.

    `logging_config` (a logging.config.dictConfig dict, e.g. Hydra's job logging) configures the
    processes that `multi_gpu` spawns.
    """
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:  # torchrun
        return _in_group(fn, cfg.device)
    if os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and int(os.environ.get("SLURM_NTASKS", 1)) > 1:
        import submitit  # installed where submitit launched us

        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        return _in_group(fn, cfg.device)
    processes = _processes(cfg.multi_gpu)
    if processes > 1:
        return _spawn(cfg, fn, processes, logging_config)
    return fn(World(resolve_device(cfg.device)))


def _processes(multi_gpu: bool | int) -> int:
    if isinstance(multi_gpu, bool):
        count = torch.cuda.device_count() if multi_gpu else 1
        if multi_gpu and count == 0:
            raise InputError("config", "multi_gpu=true needs CUDA GPUs (multi_gpu=N runs N processes, gloo on CPU)")
        return max(count, 1)
    if not isinstance(multi_gpu, int) or multi_gpu < 1:
        raise InputError("config", f"multi_gpu must be true, false or a number of processes, not {multi_gpu!r}")
    return multi_gpu


def _in_group(fn: Callable[[World], float | None], device_setting: str) -> float | None:
    """Join the process group described by the environment (env://), run fn, leave the group."""
    rank, size, local_rank = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    device = resolve_device(device_setting)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=GROUP_TIMEOUT,
                            device_id=device if device.type == "cuda" else None)
    if rank != 0:
        logging.getLogger().setLevel(logging.WARNING)
    log.info("distributed run: %d processes (%s), rank 0 on %s", size, dist.get_backend(), device)
    try:
        result = fn(World(device, rank, size, local_rank))
        # Leave together: the other ranks would otherwise tear their group down while rank 0 still tests, and a
        # gloo process whose peers went away can abort at exit (seen once in a 2-process CPU run).
        dist.barrier()
        return result
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(cfg: DictConfig, fn: Callable[[World], float | None], processes: int,
           logging_config: dict | None) -> float | None:
    """Start `processes` local ranks and wait for them; signals are passed on to them."""
    results = mp.get_context("spawn").SimpleQueue()
    port = _free_port()
    context, status = None, 0
    with Preemption(cfg.preempt_signals, forward=lambda: context.pids() if context else (),
                    interrupt=True) as preemption:
        context = mp.start_processes(_spawned, args=(processes, port, cfg.device, fn, logging_config, results),
                                     nprocs=processes, join=False, start_method="spawn")
        try:
            while not context.join():
                pass
        except mp.ProcessExitedException as err:  # a process killed by signal N has exit code -N
            status = err.exit_code if err.exit_code > 0 else 128 - err.exit_code
    if status:
        if preemption.received is not None:
            hand_over(preemption.received)
        raise SystemExit(status)  # the process has reported its error
    return results.get()


def _spawned(rank: int, size: int, port: int, device_setting: str, fn: Callable[[World], float | None],
             logging_config: dict | None, results: mp.SimpleQueue) -> None:
    """Entry point of a process spawned by `multi_gpu` (module level, so that spawn can import it)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(size), LOCAL_WORLD_SIZE=str(size))
    if "OMP_NUM_THREADS" not in os.environ:  # as torchrun does
        torch.set_num_threads(1)
    if logging_config:
        logging.config.dictConfig(logging_config)
    if rank == 0:  # logged here, not by the parent: the log file is this process's (stklia.training.records)
        log.info("multi_gpu: started %d processes", size)
    with exit_on_input_error():
        result = _in_group(fn, device_setting)
    if rank == 0:
        results.put(result)
