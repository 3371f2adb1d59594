"""Benchmark the training data path of audio utterances: crop first (stklia) vs whole utterance (naive).

stklia's TrainingCrops crops an audio utterance's samples to the crop's length before augmenting
them and computing their features. The naive way, measured in the same run, augments the whole
utterance, computes all its features, then crops them. Both are timed on the demo corpus's
`train_wav` (audio) in one process, without augmentation and with `experiment=demo_aug`'s
(speed perturbation, RIRs, noise/music/babble, SpecAugment); the feats.scp path is the reference.

Prints a Markdown table. Example: python scripts/bench_training_crops.py [--items 400]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's stklia, even where another one is installed

from bench_metrics import best_of  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402

from stklia.data.augment import Augment  # noqa: E402
from stklia.data.datasets import TrainingCrops, normalise, random_crop  # noqa: E402
from stklia.data.demo import ensure_demo  # noqa: E402
from stklia.data.kaldi import load_data  # noqa: E402


def whole_utterance_item(crops: TrainingCrops, index: int, seed: int) -> np.ndarray:
    """The naive way: augment all the audio, compute all its features, then crop them."""
    rng = np.random.default_rng(seed)
    augment: Augment | None = crops.augment
    speed = augment.choose_speed(rng) if augment else 0
    samples = crops.data.read_audio(crops.data.utts[index])
    if augment:
        samples = augment.corrupt(augment.perturb_speed(samples, speed), rng)
    crop = random_crop(normalise(crops.data.features(samples, rng), crops.cmn), crops.max_seq_len, rng)
    return augment.spectral(crop, rng) if augment else crop


def items_per_second(get: Callable[[int, int], object], items: list[tuple[int, int]], repeats: int) -> float:
    seconds, _ = best_of(lambda: [get(index, seed) for index, seed in items], repeats)
    return len(items) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="demo corpus root (default: the cache)")
    parser.add_argument("--items", type=int, default=400, help="training items per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    root = ensure_demo(args.root)
    with initialize_config_dir(str(REPO / "stklia" / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=demo_aug", f"data.root={root}"])
    features = instantiate(cfg.data.features)
    audio = load_data(str(root / "train_wav"), features)
    rng = np.random.default_rng(0)
    items = list(zip(rng.integers(len(audio.utts), size=args.items).tolist(),
                     rng.integers(2**31, size=args.items).tolist()))
    seconds = [len(audio.read_audio(u)) / features.sample_rate for u in audio.utts]
    print(f"{len(audio.utts)} utterances of {min(seconds):.1f}-{max(seconds):.1f} s (mean {np.mean(seconds):.2f} s), "
          f"crops of {cfg.max_seq_len} frames ({features.num_samples(cfg.max_seq_len) / features.sample_rate:.2f} s), "
          f"{args.items} items, best of {args.repeats}\n")
    reference = TrainingCrops(load_data(str(root / "train")), cfg.max_seq_len, cfg.data.cmn)
    print("| input | augmentation | stklia (crop first) | naive (whole utterance) | speed-up |")
    print("|---|---|---|---|---|")
    print(f"| feats.scp | none | {items_per_second(lambda i, s: reference[i, s], items, args.repeats):.0f} items/s "
          "| | |")
    for name, augment in (("none", None), ("`augment=demo`", instantiate(cfg.augment))):
        crops = TrainingCrops(audio, cfg.max_seq_len, cfg.data.cmn, augment)
        fast = items_per_second(lambda i, s: crops[i, s], items, args.repeats)  # noqa: B023
        naive = items_per_second(lambda i, s: whole_utterance_item(crops, i, s), items, args.repeats)  # noqa: B023
        print(f"| wav.scp | {name} | {fast:.0f} items/s | {naive:.0f} items/s | {fast / naive:.1f}x |")


if __name__ == "__main__":
    main()
