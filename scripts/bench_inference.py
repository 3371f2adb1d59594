"""Benchmark the Python API on imported models: `embed_batch` against a loop of `embed`, and the import itself.

Models: WeSpeaker's ResNet34 (ResNet34, 256-dim embeddings) and ECAPA-TDNN (ECAPA_TDNN_GLOB_c512, 192) at their
published sizes, built by WeSpeaker's own code (tests/peers.py: `pip install --no-deps -r peers.txt`) with
random weights (speed does not depend on them), saved in WeSpeaker's layout and imported. Inputs: `--count`
waveforms of uniform random length in [--min-seconds, --max-seconds] (speech-like, 16 kHz). Ways: `loop`
(`model.embed(x, sample_rate=16000)` for each waveform: what a user writes first) and `embed_batch`
(`model.embed_batch(waveforms, sample_rate=16000)`: the same front end, length-sorted padded batches), in one
process with the same torch threads, taking turns round after round; each round embeds new waveforms (new
lengths, as new recordings have: oneDNN prepares its kernels for every new input shape, which a rerun on the
same lengths would find ready); the best round of each way counts, and the embeddings of the two are compared.

Then the time to import each architecture the import knows, by the command a user runs
(`python -m stklia.import_model`, a fresh process: Python, torch and Hydra start included) and in process
(`read_published` + `write_model_dir`: reading, converting, writing).

Prints two Markdown tables. Example: python scripts/bench_inference.py --count 200
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import stklia  # noqa: E402
from stklia.interop.importing import read_published, write_model_dir  # noqa: E402

from peers import randomised, require_peer, speech_like, wespeaker_module  # noqa: E402


def wespeaker_published(folder: Path, name: str, module: str, make: Callable, args: dict) -> Path:
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    model = randomised(make(wespeaker_module(module)))
    torch.save(model.state_dict(), folder / "avg_model.pt")
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": name, "model_args": {"feat_dim": 80, **args}}))
    return folder


def speechbrain_published(folder: Path) -> Path:
    """spkrec-ecapa-voxceleb's layout and sizes (C=1024, 3072 aggregation channels, 192-dim embeddings)."""
    require_peer("speechbrain")
    from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN

    folder.mkdir(parents=True)
    torch.manual_seed(0)
    model = randomised(ECAPA_TDNN(80, channels=[1024, 1024, 1024, 1024, 3072], lin_neurons=192))
    torch.save(model.state_dict(), folder / "embedding_model.ckpt")
    (folder / "hyperparams.yaml").write_text(
        "compute_features: !new:speechbrain.lobes.features.Fbank\n    n_mels: 80\n"
        "mean_var_norm: !new:speechbrain.processing.features.InputNormalization\n"
        "    norm_type: sentence\n    std_norm: False\n"
        "embedding_model: !new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN\n    input_size: 80\n"
        "    channels: [1024, 1024, 1024, 1024, 3072]\n    kernel_sizes: [5, 3, 3, 3, 1]\n"
        "    dilations: [1, 2, 3, 4, 1]\n    attention_channels: 128\n    lin_neurons: 192\n")
    return folder


def threedspeaker_published(folder: Path) -> Path:
    require_peer("modelscope")
    from modelscope.models.audio.sv.DTDNN import CAMPPlus

    folder.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(randomised(CAMPPlus(80, 512)).state_dict(), folder / "campplus_voxceleb.bin")
    (folder / "configuration.json").write_text(json.dumps({"model": {
        "model_config": {"fbank_dim": 80, "emb_size": 512, "sample_rate": 16000},
        "pretrained_model": "campplus_voxceleb.bin"}}))
    return folder


def resnet(block: str, layers: list[int]) -> Callable:
    return lambda m: m.ResNet(getattr(m, block), layers, feat_dim=80, embed_dim=256)


WESPEAKER = {  # name: (module, constructor, model_args), the published sizes
    "ResNet18": ("resnet", resnet("BasicBlock", [2, 2, 2, 2]), {"embed_dim": 256}),
    "ResNet34": ("resnet", resnet("BasicBlock", [3, 4, 6, 3]), {"embed_dim": 256}),
    "ResNet50": ("resnet", resnet("Bottleneck", [3, 4, 6, 3]), {"embed_dim": 256}),
    "ResNet101": ("resnet", resnet("Bottleneck", [3, 4, 23, 3]), {"embed_dim": 256}),
    "ResNet221": ("resnet", resnet("Bottleneck", [6, 16, 48, 3]), {"embed_dim": 256}),
    "ResNet293": ("resnet", resnet("Bottleneck", [10, 20, 64, 3]), {"embed_dim": 256}),
    "ECAPA_TDNN_GLOB_c512": ("ecapa_tdnn", lambda m: m.ECAPA_TDNN_GLOB_c512(80, 192), {"embed_dim": 192}),
    "ECAPA_TDNN_GLOB_c1024": ("ecapa_tdnn", lambda m: m.ECAPA_TDNN_GLOB_c1024(80, 192), {"embed_dim": 192}),
    "CAMPPlus": ("campplus", lambda m: m.CAMPPlus(feat_dim=80, embed_dim=512), {"embed_dim": 512}),
    "XVEC": ("tdnn", lambda m: m.XVEC(feat_dim=80, embed_dim=512), {"embed_dim": 512}),
}


def import_times(root: Path) -> list[tuple[str, int, float, float]]:
    """(architecture, parameters, seconds by the command, seconds in process) of each importable model."""
    published = [(f"WeSpeaker {name}", "wespeaker",
                  lambda folder, name=name: wespeaker_published(folder, name, *WESPEAKER[name]))
                 for name in WESPEAKER]
    published += [("SpeechBrain spkrec-ecapa-voxceleb", "speechbrain", speechbrain_published),
                  ("3D-Speaker CAM++ (ModelScope)", "3dspeaker", threedspeaker_published)]
    rows = []
    for label, source, make in published:
        files = make(root / f"{len(rows)}-published")
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "stklia.import_model", f"source={source}", f"path={files}",
                        f"model_dir={root / f'{len(rows)}-command'}"], check=True, capture_output=True, cwd=root,
                       env={**os.environ, "PYTHONPATH": str(REPO)})  # this checkout's stklia
        command = time.perf_counter() - start
        start = time.perf_counter()
        imported = read_published(source, files)
        write_model_dir(imported, root / f"{len(rows)}-in-process")
        in_process = time.perf_counter() - start
        rows.append((label, sum(t.numel() for t in imported.generator.values() if t.is_floating_point()), command,
                     in_process))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--min-seconds", type=float, default=2.0)
    parser.add_argument("--max-seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", choices=("embeddings", "imports"), help="one of the two tables")
    args = parser.parse_args()

    if args.only == "imports":
        with tempfile.TemporaryDirectory() as tmp:
            print_import_times(Path(tmp))
        return
    rounds = []
    for r in range(args.rounds):
        seconds = np.random.default_rng(r).uniform(args.min_seconds, args.max_seconds, args.count)
        rounds.append([speech_like(s, seed=r * args.count + i) for i, s in enumerate(seconds)])
    print(f"{args.rounds} rounds of {args.count} waveforms of {args.min_seconds}-{args.max_seconds} s "
          f"({sum(len(x) for x in rounds[0]) / 16000 / 60:.1f} min in the first), device {args.device}, "
          f"{torch.get_num_threads()} torch threads, load average {os.getloadavg()[0]:.1f}\n")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print("| model | parameters | loop of `embed` (emb/s) | `embed_batch` (emb/s) | ratio | max difference |")
        print("|---|---|---|---|---|---|")
        for name in ("ResNet34", "ECAPA_TDNN_GLOB_c512"):
            files = wespeaker_published(root / name, name, *WESPEAKER[name])
            model_dir = write_model_dir(read_published("wespeaker", files), root / f"{name}-model")
            model = stklia.load(model_dir, device=args.device)
            best = {"loop": np.inf, "batch": np.inf}
            for waveforms in rounds:
                start = time.perf_counter()
                looped = np.stack([model.embed(x, sample_rate=16000) for x in waveforms])
                best["loop"] = min(best["loop"], time.perf_counter() - start)
                start = time.perf_counter()
                batched = model.embed_batch(waveforms, sample_rate=16000)
                best["batch"] = min(best["batch"], time.perf_counter() - start)
            difference = np.abs(looped - batched).max() / np.linalg.norm(looped, axis=1).min()
            parameters = sum(p.numel() for p in model.network.generator.parameters())
            print(f"(load average {os.getloadavg()[0]:.1f})", file=sys.stderr)
            print(f"| WeSpeaker {name} | {parameters / 1e6:.2f} M | {args.count / best['loop']:.2f} | "
                  f"{args.count / best['batch']:.2f} | {best['loop'] / best['batch']:.2f} | {difference:.1e} |",
                  flush=True)
        if args.only != "embeddings":
            print()
            print_import_times(root)


def print_import_times(root: Path) -> None:
    print("| published model | values in its state | `python -m stklia.import_model` (s) | in process (s) |")
    print("|---|---|---|---|")
    for label, parameters, command, in_process in import_times(root):
        print(f"| {label} | {parameters / 1e6:.2f} M | {command:.1f} | {in_process:.2f} |", flush=True)


if __name__ == "__main__":
    main()
