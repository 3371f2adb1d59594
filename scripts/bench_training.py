"""Benchmark training throughput on CPU: the real training loop's samples/s against the compute-only step.

    python scripts/bench_training.py [--steps 40] [--stklia CHECKOUT]

Two training sets, each with its recipe's online augmentation: the demo's audio (`experiment=demo_aug`:
train_wav, 1.5-4 s utterances, 40 fbanks, 150-frame crops) and the VoxCeleb-shaped 8 s FLAC utterances of
scripts/bench_loader.py (80 fbanks, 200-frame crops, musan_rirs with the demo's noise and RIR sets). Model
`resnet_small` (the demo's), batch 64. The loop is `python -m stklia.train` with one loader worker and one
torch thread (OMP_NUM_THREADS=1): of the 2 cores, one feeds and one computes; its samples/s is read from
train.log, after the first log interval (worker start-up). The compute-only figure is training_step on one
fixed batch of features with the same model, head, optimizer and batch shape, in this process, one thread:
what the loop would reach if data cost nothing. Their ratio is what the data path and the loop leave of
the compute; with features_on_device=true the front end runs in the training process (here on the CPU).

`--stklia CHECKOUT` measures another checkout (e.g. `git archive main`: the "before" figures).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def compute_only(cfg: object, steps: int) -> float:
    """Samples/s of training_step on one fixed batch (no data path), one thread."""
    import torch

    from stklia.distributed import World
    from stklia.trainer import build_parts, training_step

    torch.manual_seed(0)
    parts = build_parts(cfg, 100, World(torch.device("cpu")))
    feats = torch.randn(cfg.batch_size, cfg.max_seq_len, cfg.data.features_per_frame)
    labels = torch.randint(0, 100, (cfg.batch_size,))
    autocast = torch.autocast("cpu", enabled=False)
    parts.model.train()
    for step in range(3):
        training_step(parts, parts.model, feats, labels, step, autocast)
    start = time.perf_counter()
    for step in range(steps):
        training_step(parts, parts.model, feats, labels, step, autocast)
    return steps * cfg.batch_size / (time.perf_counter() - start)


def training_loop(checkout: Path, overrides: list[str], steps: int, log_interval: int) -> float:
    """Samples/s that `python -m stklia.train` logs, after its first interval."""
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        env = {**os.environ, "PYTHONPATH": str(checkout), "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
        run = [*overrides, "num_workers=1", f"num_iterations={steps}", f"log_interval={log_interval}",
               "checkpoint_interval=100000", "data.eval=null", "data.test=null", "progress=false",
               f"model_dir={model_dir}"]
        subprocess.run([sys.executable, "-m", "stklia.train", *run], cwd=tmp, env=env, check=True, capture_output=True)
        speeds = [float(s) for s in re.findall(r"([\d.]+) samples/s", (model_dir / "train.log").read_text())]
    return sum(speeds[1:]) / len(speeds[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--log-interval", type=int, default=8)
    parser.add_argument("--work", type=Path, default=Path("/tmp/stklia-bench-loader"))
    parser.add_argument("--stklia", type=Path, default=HERE.parent, help="the stklia checkout to measure")
    args = parser.parse_args()
    checkout = args.stklia.resolve()
    sys.path.insert(0, str(checkout))
    import torch
    from bench_loader import build_dirs
    from hydra import compose, initialize_config_dir

    from stklia.data.demo import ensure_demo

    torch.set_num_threads(1)
    demo = ensure_demo()
    dirs = build_dirs(demo, args.work / ("after" if checkout == HERE.parent else "before"), checkout)
    sets = demo / "augment"
    common = [f"data.root={demo}", "data.prepare=null", "model=resnet_small", "batch_size=64"]
    setups = {
        "demo train_wav, `experiment=demo_aug`": ["experiment=demo_aug", "max_seq_len=150"],
        "VoxCeleb-shaped 8 s FLAC, musan_rirs": [
            f"data.train=[{dirs['8 s flac']}]", "data.features_per_frame=80", "data.features.num_mel_bins=80",
            "max_seq_len=200", "augment=musan_rirs", f"augment.reverb.rirs={sets / 'rirs'}",
            f"augment.noise.sources.noise.list={sets / 'noise'}", f"augment.noise.sources.music.list={sets / 'music'}",
            f"augment.noise.sources.babble.list={sets / 'babble'}"],
    }
    device_path = "features_on_device" in (checkout / "stklia" / "conf" / "train.yaml").read_text()
    print(f"stklia at {checkout}; load average {os.getloadavg()[0]:.1f}; {args.steps} steps, one loader worker, "
          f"one torch thread\n")
    print("| training data | features | loop samples/s | compute-only samples/s | ratio |")
    print("|---|---|---|---|---|")
    for name, overrides in setups.items():
        with initialize_config_dir(str(checkout / "stklia" / "conf"), version_base="1.3"):
            cfg = compose("train", overrides=[*common, *overrides])
        for on_device in (False, True) if device_path else (False,):
            extra = [f"features_on_device={str(on_device).lower()}"] if device_path else []
            loop = training_loop(checkout, [*common, *overrides, *extra], args.steps, args.log_interval)
            compute = compute_only(cfg, args.steps // 2)
            where = "on the training device (the CPU)" if on_device else "in the loader worker"
            print(f"| {name} | {where} | {loop:.0f} | {compute:.0f} | {loop / compute:.2f} |", flush=True)
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
