"""Benchmark training speed of each model preset on this machine, against its FLOP limit.

Each preset of conf/model/ at full size, at the demo's features (40 filterbanks) and crop (150 frames),
trains a few steps (stklia.training.loop's build_parts and training_step: generator + the demo's AdaCos head,
SGD and warm-up + cosine schedule, float32) on random features; the
table gives training samples/s (the best of `--repeats` timed windows, the least disturbed by
other load) and the fraction of the FLOP limit it reaches. The FLOP limit is this machine's float32
matrix-product rate, measured just before each model (best of a few 2048 x 2048 products), divided
by the model's FLOPs per training sample (forward + backward of the generator, counted by
torch.utils.flop_counter on the meta device; the head's are negligible).

Prints Markdown tables. Example: python scripts/bench_models.py [--batch 16] [--seconds 10] [--presets ...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's stklia, even where another one is installed

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from stklia.core.config import build  # noqa: E402
from stklia.models.complexity import count_parameters, forward_flops  # noqa: E402
from stklia.training.distributed import World  # noqa: E402
from stklia.training.loop import build_parts, training_step  # noqa: E402

PRESETS = ["resnet_small", "xvector", "ecapa_tdnn", "ecapa_tdnn_c1024", "campplus", "resnet18", "resnet34",
           "resnet50", "resnet101", "resnet221", "resnet293"]
SPEAKERS = 40  # the demo's training speakers


def config(preset: str) -> DictConfig:
    with initialize_config_dir(str(REPO / "stklia" / "conf"), version_base="1.3"):
        return compose("train", overrides=[f"model={preset}"])


def matmul_flops_per_second(size: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def training_flops_per_sample(cfg: DictConfig, batch: int) -> float:
    """Forward + backward FLOPs of the generator per crop, counted on the meta device."""
    with torch.device("meta"):
        generator = build(cfg.model).train()
        feats = torch.zeros(batch, cfg.max_seq_len, cfg.data.features_per_frame)
        with FlopCounterMode(display=False) as counter:
            generator(feats).sum().backward()
    return counter.get_total_flops() / batch


def training_samples_per_second(cfg: DictConfig, batch: int, seconds: float, repeats: int) -> float:
    """Samples/s of whole training steps after one warm-up step: the best of `repeats` windows of at least
    2 steps and `seconds`."""
    torch.manual_seed(0)
    parts = build_parts(cfg, SPEAKERS, World(torch.device("cpu")))
    parts.model.train()
    feats = torch.randn(batch, cfg.max_seq_len, cfg.data.features_per_frame)
    labels = torch.randint(SPEAKERS, (batch,))
    no_autocast = torch.autocast("cpu", enabled=False)
    step = 0
    training_step(parts, parts.model, feats, labels, step, no_autocast)
    best = 0.0
    for _ in range(repeats):
        steps, start = 0, time.perf_counter()
        while steps < 2 or time.perf_counter() - start < seconds:
            step += 1
            training_step(parts, parts.model, feats, labels, step, no_autocast)
            steps += 1
        best = max(best, steps * batch / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16, help="crops per training step (the demo trains with 64)")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds of a timed window (at least 2 steps)")
    parser.add_argument("--repeats", type=int, default=3, help="timed windows per model (the best counts)")
    parser.add_argument("--presets", nargs="+", default=PRESETS)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, best of {args.repeats} "
          f"windows of {args.seconds:g} s\n")
    print("| model | parameters | GFLOPs, 2 s x 80 dims | GFLOPs / training crop | samples/s | GFLOP/s "
          "| matmul GFLOP/s | FLOP limit (samples/s) | fraction of the limit |")
    print("|---|---|---|---|---|---|---|---|---|")
    for preset in args.presets:
        cfg = config(preset)
        with torch.device("meta"):
            full = build(cfg.model, features_per_frame=80)
        flops = training_flops_per_sample(cfg, args.batch)
        peak = matmul_flops_per_second()
        speed = training_samples_per_second(cfg, args.batch, args.seconds, args.repeats)
        limit = peak / flops
        print(f"| `{preset}` | {count_parameters(full) / 1e6:.2f} M | {forward_flops(full) / 1e9:.2f} "
              f"| {flops / 1e9:.2f} | {speed:.1f} | {speed * flops / 1e9:.1f} | {peak / 1e9:.0f} | {limit:.1f} "
              f"| {speed / limit:.2f} |", flush=True)


if __name__ == "__main__":
    main()
