"""Benchmark training throughput: the real training loop's samples/s against the compute-only step.

    python scripts/bench_training.py [--steps 40] [--setups ...] [--stklia CHECKOUT] [OVERRIDE ...]

Three training sets, each with its recipe's online augmentation: the demo's audio (`experiment=demo_aug`:
train_wav, 1.5-4 s utterances, 40 fbanks, 150-frame crops) and the VoxCeleb-shaped 8 s FLAC and wav
utterances of scripts/bench_loader.py (80 fbanks, 200-frame crops, musan_rirs with the demo's noise and RIR
sets). By default: model `resnet_small` (the demo's), batch 64, on the CPU with one loader worker and one
torch thread (OMP_NUM_THREADS=1): of the 2 cores, one feeds and one computes. Hydra overrides after the
options apply to every run, e.g. on a GPU node `device=cuda amp=bf16 model=resnet34 batch_size=128
num_workers=8` (then the GPU's utilisation is sampled through NVML while the loop runs).

The loop is `python -m stklia.train`; its samples/s is read from train.log, after the first log interval
(worker start-up). The compute-only figure is training_step on one fixed batch of features with the same
model, head, optimizer, precision and batch shape, in this process: what the loop would reach if data cost
nothing. Their ratio is what the data path and the loop leave of the compute; each set runs with the
features in the loader workers and with features_on_device=true (the front end in the training process).

`--stklia CHECKOUT` measures another checkout (e.g. `git archive main`: the "before" figures).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SAMPLES_PER_S = re.compile(r"([\d.]+) samples/s")


def compute_only(cfg: object, steps: int) -> float:
    """Samples/s of training_step on one fixed batch (no data path)."""
    import torch

    from stklia.core.devices import resolve_device
    from stklia.training.distributed import World
    from stklia.training.loop import AMP_DTYPES, build_parts, training_step

    torch.manual_seed(0)
    device = resolve_device(cfg.device)
    parts = build_parts(cfg, 100, World(device))
    feats = torch.randn(cfg.batch_size, cfg.max_seq_len, cfg.data.features_per_frame, device=device)
    labels = torch.randint(0, 100, (cfg.batch_size,), device=device)
    autocast = torch.autocast(device.type, dtype=AMP_DTYPES.get(cfg.amp), enabled=cfg.amp is not None)
    parts.model.train()
    for step in range(3):
        training_step(parts, parts.model, feats, labels, step, autocast)
    synchronize = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    synchronize()
    start = time.perf_counter()
    for step in range(steps):
        training_step(parts, parts.model, feats, labels, step, autocast)
    synchronize()
    return steps * cfg.batch_size / (time.perf_counter() - start)


class GpuUtilisation:
    """The GPU's utilisation (NVML, every 0.1 s) while a training run logs: from its first samples/s line to its
    last, i.e. over the same steps as the samples/s it reports."""

    def __init__(self, log: Path, lines: int):
        import pynvml

        pynvml.nvmlInit()
        self.nvml, self.handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)
        self.log, self.lines, self.samples = log, lines, []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while not self.done.wait(0.1):
            logged = len(SAMPLES_PER_S.findall(self.log.read_text())) if self.log.exists() else 0
            if 1 <= logged < self.lines:
                self.samples.append(self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu)

    def mean(self) -> float:
        self.done.set()
        self.thread.join()
        return sum(self.samples) / max(len(self.samples), 1)


def training_loop(checkout: Path, overrides: list[str], steps: int, log_interval: int, gpu: bool
                  ) -> tuple[float, float | None]:
    """Samples/s that `python -m stklia.train` logs, after its first interval, and the GPU's mean utilisation
    meanwhile (None on the CPU)."""
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        path = os.pathsep.join(filter(None, [str(checkout), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
        run = [f"num_iterations={steps}", f"log_interval={log_interval}", "checkpoint_interval=100000",
               "data.eval=null", "data.test=null", "progress=false", f"model_dir={model_dir}", *overrides]
        utilisation = GpuUtilisation(model_dir / "train.log", steps // log_interval) if gpu else None
        proc = subprocess.run([sys.executable, "-m", "stklia.train", *run], cwd=tmp, env=env, capture_output=True,
                              text=True)
        busy = utilisation.mean() if utilisation else None
        if proc.returncode:
            raise SystemExit(f"stklia.train {' '.join(run)} failed:\n{proc.stderr[-3000:]}")
        speeds = [float(s) for s in SAMPLES_PER_S.findall((model_dir / "train.log").read_text())]
    return sum(speeds[1:]) / len(speeds[1:]), busy


def setups(demo: Path, dirs: dict[str, Path]) -> dict[str, list[str]]:
    """The training sets measured, by name: their overrides."""
    from bench_loader import musan_rirs_overrides

    voxceleb_shaped = ["data.features_per_frame=80", "data.features.num_mel_bins=80", "max_seq_len=200",
                       *musan_rirs_overrides(demo)]
    return {
        "demo train_wav, `experiment=demo_aug`": ["experiment=demo_aug", "max_seq_len=150"],
        "VoxCeleb-shaped 8 s FLAC, musan_rirs": [f"data.train=[{dirs['8 s flac']}]", *voxceleb_shaped],
        "VoxCeleb-shaped 8 s wav, musan_rirs": [f"data.train=[{dirs['8 s wav']}]", *voxceleb_shaped],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of every run (e.g. device=cuda amp=bf16)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--log-interval", type=int, default=8)
    parser.add_argument("--setups", nargs="+", choices=("demo", "flac", "wav"), default=("demo", "flac", "wav"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/stklia-bench-loader"))
    parser.add_argument("--stklia", type=Path, default=HERE.parent, help="the stklia checkout to measure")
    args = parser.parse_args()
    checkout = args.stklia.resolve()
    sys.path.insert(0, str(checkout))
    import torch
    from bench_loader import build_dirs
    from hydra import compose, initialize_config_dir

    from stklia.demo.corpus import ensure_demo

    torch.set_num_threads(1)
    demo = ensure_demo()
    dirs = build_dirs(demo, args.work / ("after" if checkout == HERE.parent else "before"), checkout,
                      wanted=("8 s wav", "8 s flac"))
    common = [f"data.root={demo}", "data.prepare=null", "model=resnet_small", "batch_size=64", "num_workers=1"]
    chosen = {name: overrides for (name, overrides), key in zip(setups(demo, dirs).items(), ("demo", "flac", "wav"))
              if key in args.setups}
    device_path = "features_on_device" in (checkout / "stklia" / "conf" / "train.yaml").read_text()
    print(f"stklia at {checkout}; load average {os.getloadavg()[0]:.1f}; {args.steps} steps; OMP_NUM_THREADS=1; "
          f"overrides: {' '.join(['model=resnet_small', 'batch_size=64', 'num_workers=1', *args.overrides])}\n")
    print("| training data | features | loop samples/s | compute-only samples/s | ratio | GPU utilisation |")
    print("|---|---|---|---|---|---|")
    for name, overrides in chosen.items():
        with initialize_config_dir(str(checkout / "stklia" / "conf"), version_base="1.3"):
            cfg = compose("train", overrides=[*common, *overrides, *args.overrides])
        gpu = cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
        compute = compute_only(cfg, args.steps // 2)
        for on_device in (False, True) if device_path else (False,):
            extra = [f"features_on_device={str(on_device).lower()}"] if device_path else []
            loop, busy = training_loop(checkout, [*common, *overrides, *extra, *args.overrides], args.steps,
                                       args.log_interval, gpu)
            where = f"on the training device ({'GPU' if gpu else 'CPU'})" if on_device else "in the loader workers"
            busy_text = f"{busy:.0f} %" if busy is not None else "n/a"
            print(f"| {name} | {where} | {loop:.0f} | {compute:.0f} | {loop / compute:.2f} | {busy_text} |",
                  flush=True)
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
