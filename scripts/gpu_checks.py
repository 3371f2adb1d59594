"""The checks only a CUDA GPU can run, in one command (results: docs/benchmarks.md, "On a GPU").

    python scripts/gpu_checks.py [--out DIR] [--skip-benchmarks]

1. Front end: the device path on the GPU against the CPU path of a loader worker, for the same items and
   draws (the VoxCeleb recipe's augmentation on the demo's audio), without and with dither (both devices cut
   it from the same table): they must agree within tests/test_frontend.py's tolerance.
2. Repeatability: `deterministic=true` training with the device path and bf16 autocast, run twice, and run
   as two halves with a resume between them: the three final checkpoints must be bitwise equal.
3. The demo end to end on the GPU: `python -m stklia.train amp=fp16 channels_last=true` (grad scaling,
   channels-last convolutions), with its test EER.
4. Benchmarks: scripts/bench_training.py on the VoxCeleb-shaped sets with experiment=voxceleb_resnet34_aam's
   model, batch, loader and bf16 (features in the workers and on the GPU; the GPU's utilisation), and
   scripts/bench_extraction.py --device cuda with a ResNet34.

Exits non-zero when a check fails. Each command's output is saved in --out.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from bench_loader import musan_rirs_overrides  # this script's folder

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def front_end(demo: Path, dither: float, device: torch.device) -> float:
    """Largest |difference| of the GPU's features from the CPU path's, over 3 batches of 64 200-frame crops."""
    from hydra import compose, initialize_config_dir

    from stklia.data.datasets import BatchSchedule
    from stklia.training.distributed import World
    from stklia.training.loop import load_run_data

    gpu = World(device)
    crops = {}
    for on_device in (False, True):
        with initialize_config_dir(str(REPO / "stklia" / "conf"), version_base="1.3"):
            cfg = compose("train", overrides=[
                f"data.root={demo}", "data.prepare=null", "experiment=demo_aug", "data.eval=null", "data.test=null",
                *musan_rirs_overrides(demo), "augment.reverb.prob=0.5", "augment.speed.new_speakers=true",
                f"data.features.dither={dither}", "max_seq_len=200", f"features_on_device={on_device}"])
        crops[on_device] = load_run_data(cfg, gpu).crops
    schedule = BatchSchedule(crops[False].labels, batch_size=64, num_steps=3, seed=7)
    worst = 0.0
    for step in range(3):
        items = schedule.batch(step)
        expected = torch.stack([crops[False][item][0] for item in items])
        batch = crops[True].collate([crops[True][item] for item in items])
        feats, _ = crops[True].to_device(batch, gpu.device)
        worst = max(worst, float((feats.cpu() - expected).abs().max()))
    return worst


def run(command: list[str], log: Path, cwd: Path) -> str:
    """Run a command, its output saved in `log`; stop the checks if it fails."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "HYDRA_FULL_ERROR": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(command)}\n{proc.stderr[-3000:]}")
    return proc.stdout


def train(overrides: list[str], log: Path, cwd: Path) -> str:
    return run([sys.executable, "-m", "stklia.train", *overrides], log, cwd)


def repeatability(demo: Path, out: Path, tmp: Path, device: torch.device) -> list[str]:
    """Final checkpoints of two whole runs and of one resumed run: the names of the tensors that differ."""
    from stklia.modeldir.checkpoints import list_checkpoints, load_checkpoint

    common = [f"data.root={demo}", "data.prepare=null", "experiment=demo_aug", *musan_rirs_overrides(demo),
              "features_on_device=true", "deterministic=true", "amp=bf16", "num_iterations=40",
              "checkpoint_interval=20", "data.eval=null", "data.test=null", "progress=false", f"device={device}"]
    for name in ("first", "second", "resumed"):
        steps = ["num_iterations=20"] if name == "resumed" else []
        train([*common, *steps, f"model_dir={tmp / name}"], out / f"repeat_{name}.log", tmp)
    train([*common, "checkpoint=last", f"model_dir={tmp / 'resumed'}"], out / "repeat_resumed2.log", tmp)
    runs = ("first", "second", "resumed")
    final = {name: flatten(load_checkpoint(list_checkpoints(tmp / name)[40])) for name in runs}
    return [f"{name}: {key}" for name in runs[1:] for key, tensor in final["first"].items()
            if not torch.equal(tensor, final[name][key])]


def flatten(state: object, prefix: str = "") -> dict[str, torch.Tensor]:
    """The tensors of a nested state dict, by dotted name."""
    if isinstance(state, torch.Tensor):
        return {prefix: state}
    if isinstance(state, dict):
        return {k: v for key, value in state.items() for k, v in flatten(value, f"{prefix}{key}.").items()}
    if isinstance(state, (list, tuple)):
        return {k: v for i, value in enumerate(state) for k, v in flatten(value, f"{prefix}{i}.").items()}
    return {}


def front_end_checks(demo: Path, device: torch.device, out: Path) -> bool:
    """Without and with dither, within tests/test_frontend.py's tolerance (2e-3)."""
    ok = True
    for dither in (0.0, 1.0):
        worst = front_end(demo, dither, device)
        ok &= worst < 2e-3
        print(f"front end on the GPU vs the CPU path, dither {dither}: max |difference| {worst:.2e} "
              f"({'ok' if worst < 2e-3 else 'FAILED'})", flush=True)
    return ok


def repeatability_check(demo: Path, device: torch.device, out: Path) -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        differ = repeatability(demo, out, Path(tmp), device)
    print(f"deterministic=true, device path, bf16, 40 steps: two runs and a run resumed at step 20 "
          f"{'are bitwise equal' if not differ else 'DIFFER: ' + ', '.join(differ[:5])}", flush=True)
    return not differ


def demo_check(demo: Path, device: torch.device, out: Path) -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        stdout = train([f"model_dir={Path(tmp) / 'demo'}", "amp=fp16", "channels_last=true", "progress=false",
                        f"device={device}"], out / "demo_fp16.log", Path(tmp))
    print("demo, amp=fp16 channels_last=true:\n" + stdout[stdout.find("Test results"):].strip(), flush=True)
    return True


def benchmarks(demo: Path, device: torch.device, out: Path) -> bool:
    scripts = REPO / "scripts"
    print(run([sys.executable, str(scripts / "bench_training.py"), "--setups", "flac", "wav", "--steps", "120",
               "--log-interval", "20", f"device={device}", "amp=bf16", "model=resnet34", "batch_size=128",
               "num_workers=8", "prefetch_factor=4", "head=arcface"], out / "bench_training.log", REPO), flush=True)
    print(run([sys.executable, str(scripts / "bench_extraction.py"), "--device", str(device), "--model", "resnet34",
               "--rounds", "2", "--ways", "loop", "stklia"], out / "bench_extraction.log", REPO), flush=True)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-checks"))
    parser.add_argument("--skip-benchmarks", action="store_true")
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # cpu: a dry run of the script
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: these checks need one")
    from stklia.demo.corpus import ensure_demo

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "no GPU"
    print(f"{name}, torch {torch.__version__}, CUDA {torch.version.cuda}, {os.cpu_count()} CPUs", flush=True)
    demo = ensure_demo(progress=False)
    checks = [front_end_checks, repeatability_check, demo_check] + ([] if args.skip_benchmarks else [benchmarks])
    failed = []
    for check in checks:  # each runs whatever another's outcome: a lease is too short to run them again
        try:
            passed = check(demo, device, out)
        except (Exception, SystemExit) as err:
            print(f"{check.__name__}: {err}", flush=True)
            passed = False
        failed += [] if passed else [check.__name__]
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
