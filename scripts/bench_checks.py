"""Benchmark what the always-on checks for non-finite numbers cost, against the work they guard.

* Reading: the check of every utterance read (`first_non_finite`, run by `DataSet.load` and
  `read_checked_audio` right after reading) against reading it (`kaldiio.load_mat` + float32; a 16-bit wav
  read), on the demo corpus's train set (40 dims), a VoxCeleb-like synthetic set (80 dims, 2-8 s) and the
  demo's train_wav.
* Training: `NonFiniteGuard.record` (after each backward: gradient norm and loss checked on the device)
  against a whole `training_step` (forward, backward, optimizer step), for the demo's default model
  (resnet_small, batch 64 x 150 frames x 40) and the seed's ResNet-34 (model=resnet, 80 dims, batch
  16 x 200 frames); `check_weights` (before each checkpoint) against writing the checkpoint.

Each time is the best of --repeats (the least disturbed by other load). Prints Markdown tables.
Example: python scripts/bench_checks.py [--root DEMO_ROOT] [--repeats 20]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import kaldiio
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's stklia, even where another one is installed

from bench_metrics import best_of  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from stklia.data.audio import first_non_finite, read_audio  # noqa: E402
from stklia.data.kaldi import DataSet, load_data  # noqa: E402
from stklia.demo.corpus import ensure_demo  # noqa: E402
from stklia.modeldir.checkpoints import save_checkpoint  # noqa: E402
from stklia.training.checkpointing import snapshot  # noqa: E402
from stklia.training.distributed import World  # noqa: E402
from stklia.training.loop import NonFiniteGuard, build_parts, training_step  # noqa: E402


def voxceleb_like(folder: Path, count: int = 500) -> DataSet:
    """`count` utterances of 200-800 frames of 80 dims in one ark, as a VoxCeleb feats.scp would hold."""
    rng = np.random.default_rng(0)
    mats = {f"spk{i % 50:03d}-{i:05d}": rng.standard_normal((int(rng.integers(200, 801)), 80), dtype=np.float32)
            for i in range(count)}
    kaldiio.save_ark(str(folder / "feats.ark"), mats, scp=str(folder / "feats.scp"))
    (folder / "utt2spk").write_text("".join(f"{u} {u.split('-')[0]}\n" for u in sorted(mats)))
    return load_data(folder)


def cost_row(name: str, read: Callable[[str], np.ndarray], rx: list[str], repeats: int) -> list[str]:
    """Reading each entry of `rx`, and checking what was read right after reading it (as the library does)."""
    def checking() -> float:
        spent = 0.0
        for r in rx:
            x = read(r)
            start = time.perf_counter()
            first_non_finite(x)
            spent += time.perf_counter() - start
        return spent

    read_time, _ = best_of(lambda: [read(r) for r in rx], repeats)
    check_time = min(checking() for _ in range(repeats))
    n = len(rx)
    return [name, str(n), f"{1e6 * read_time / n:.0f} us", f"{1e6 * check_time / n:.1f} us",
            f"{100 * check_time / read_time:.1f}%"]


def reading_rows(root: Path, repeats: int) -> list[list[str]]:
    def features(rx: str) -> np.ndarray:
        return np.asarray(kaldiio.load_mat(rx), dtype=np.float32)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in (("feats.scp, demo train (40 dims)", load_data(root / "train")),
                           ("feats.scp, VoxCeleb-like (80 dims, 2-8 s)", voxceleb_like(Path(tmp)))):
            rows.append(cost_row(name, features, [data.feats[u] for u in data.utts], repeats))
    rx = [line.split(maxsplit=1)[1] for line in (root / "train_wav" / "wav.scp").read_text().splitlines()]
    rows.append(cost_row("wav.scp (16-bit), demo train_wav", lambda r: read_audio(r)[0], rx, repeats))
    return rows


def training_rows(root: Path, label: str, overrides: list[str], batch: int, frames: int, repeats: int,
                  steps: int) -> list[list[str]]:
    world = World(torch.device("cpu"))
    with initialize_config_dir(str(REPO / "stklia" / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"data.root={root}", *overrides])
    torch.manual_seed(0)
    parts = build_parts(cfg, 200, world)
    feats, labels = torch.randn(batch, frames, cfg.model.features_per_frame), torch.randint(0, 200, (batch,))
    autocast = torch.autocast("cpu", enabled=False)
    with tempfile.TemporaryDirectory() as tmp:
        guard = NonFiniteGuard(world.device, True, Path(tmp), lambda step: [])
        loss, _ = training_step(parts, parts.model, feats, labels, 0, autocast, guard)  # warm-up; gradients
        step_time, _ = best_of(lambda: training_step(parts, parts.model, feats, labels, 1, autocast, guard), steps)
        record, _ = best_of(lambda: guard.record(1, loss, parts.model.parameters()), repeats)
        modules = {"generator": parts.generator, "head": parts.head}
        check, _ = best_of(lambda: guard.check_weights(modules, 1), repeats)
        save, _ = best_of(lambda: save_checkpoint(tmp, 1, snapshot(parts.recoverables)), repeats)
    params = sum(p.numel() for p in parts.model.parameters()) / 1e6
    return [[f"{label}, {params:.2f} M parameters", f"training step, batch {batch} x {frames}",
             f"{1000 * step_time:.0f} ms", f"{1000 * record:.2f} ms `record`", f"{100 * record / step_time:.2f}%"],
            [f"{label}, {params:.2f} M parameters", "writing a checkpoint", f"{1000 * save:.1f} ms",
             f"{1000 * check:.2f} ms `check_weights`", f"{100 * check / save:.1f}%"]]


def table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join("| " + " | ".join(row) + " |" for row in [header, ["---"] * len(header), *rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="demo corpus root (default: the cache)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--steps", type=int, default=5, help="training steps timed (best of)")
    args = parser.parse_args()
    root = ensure_demo(args.root)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d %H:%M')}\n")
    print(table(["read", "utterances", "reading", "checking", "cost"], reading_rows(root, args.repeats)))
    print()
    rows = [*training_rows(root, "resnet_small (demo default)", [], 64, 150, args.repeats, args.steps),
            *training_rows(root, "resnet (ResNet-34, 80 dims)", ["model=resnet", "data.features_per_frame=80"], 16,
                           200, args.repeats, args.steps)]
    print(table(["model", "guarded work", "its time", "the check", "cost"], rows))


if __name__ == "__main__":
    main()
