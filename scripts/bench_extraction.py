"""Benchmark extraction: stklia's batched, masked embed_utterances against the plain loop.

The plain loop is the seed's extract loop, the way one extracts with any PyTorch generator: for each
utterance, read its features, mean-normalise them and call `generator(feats[None])`. stklia runs
`embed_utterances` as test and extract do, with the settings of `stklia/conf/commands/embedding.yaml`
(batch_frames, max_frames, num_workers). Every way embeds the same utterances with the same model
(`--model`, random weights from one seed: speed does not depend on them) on the same `--device` (the
CPU by default; on a GPU the plain loop copies each utterance there and its embedding back) and the same
torch threads, each pass in a fresh process; the ways take turns, round after round (so they see the same
machine load), and the best round of each counts. Each way's embeddings are compared with the plain loop's.

The utterances are real-length: the demo corpus's recordings, concatenated per speaker and cut into
`--utterances` pieces of uniform random length in [--min-seconds, --max-seconds], with the demo's
40-bin fbanks in a feats.scp (precomputed, as Kaldi recipes do: this times the model and the
batching), or with `--audio` as wav files whose fbanks every way computes while extracting.

Ways: `loop` (the plain loop), `loop_nhwc` (the plain loop on a channels-last copy of the generator:
the best one utterance at a time does here, to tell the layout's share of the gain from the batching's),
`stklia` (this checkout) and, with `--before REV`, `before` (stklia at that git revision, extracted
with `git archive`).

Prints the length distribution and a Markdown table.
Example: python scripts/bench_extraction.py --before 071215a
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WAYS = ("loop", "loop_nhwc", "before", "stklia")
DESCRIPTIONS = {
    "loop": "plain loop, `generator(feats[None])` per utterance",
    "loop_nhwc": "plain loop, generator in channels-last (NHWC)",
    "before": "stklia `embed_utterances` at {before}",
    "stklia": "stklia `embed_utterances` (this checkout)",
}


def make_utterances(out: Path, count: int, seconds: tuple[float, float], seed: int, audio: bool) -> list[int]:
    """A Kaldi dir of `count` utterances cut from the demo's recordings, with their fbanks in a feats.scp
    or (`audio`) their samples in wav files; returns their frame counts."""
    sys.path.insert(0, str(REPO))
    import kaldiio
    from scipy.io import wavfile

    from stklia.data.features import Fbank
    from stklia.data.kaldi import load_data
    from stklia.demo.corpus import ensure_demo

    features = Fbank(num_mel_bins=40)
    source = load_data(ensure_demo() / "train_wav", features)
    by_speaker: dict[str, list[str]] = {}
    for utt in source.utts:
        by_speaker.setdefault(source.utt2spk[utt], []).append(utt)
    rng = np.random.default_rng(seed)
    cuts: dict[str, np.ndarray] = {}
    utt2spk = []
    for speaker, utts in sorted(by_speaker.items()):
        recordings = np.concatenate([source.read_audio(u) for u in utts])
        start = 0
        while len(cuts) < count:
            size = int(rng.uniform(*seconds) * features.sample_rate)
            if start + size > len(recordings):
                break
            name = f"{speaker}-cut{len(cuts):05d}"
            cuts[name], start = recordings[start : start + size], start + size
            utt2spk.append(f"{name} {speaker}\n")
    if len(cuts) < count:
        raise SystemExit(f"the demo's recordings give only {len(cuts)} utterances of this length")
    out.mkdir(parents=True)
    (out / "utt2spk").write_text("".join(sorted(utt2spk)))
    feats = {name: features(samples) for name, samples in cuts.items()}
    if audio:
        (out / "wav").mkdir()
        for name, samples in cuts.items():
            wavfile.write(out / "wav" / f"{name}.wav", features.sample_rate, samples.astype(np.int16))
        (out / "wav.scp").write_text("".join(f"{name} {out / 'wav' / name}.wav\n" for name in sorted(cuts)))
    else:
        kaldiio.save_ark(str(out / "feats.ark"), feats, scp=str(out / "feats.scp"))
    return [len(f) for f in feats.values()]


def measure(way: str, src: Path, data_dir: Path, model: str, threads: int | None, num_workers: int | None,
            profile: bool, out: Path, device_name: str) -> None:
    """One timed pass of `way` with the stklia under `src`; prints its seconds as JSON, saves the embeddings."""
    sys.path.insert(0, str(src))
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from stklia.data.features import subtract_mean
    from stklia.data.kaldi import load_data
    from stklia.evaluation.embeddings import Extraction, embed_utterances

    if threads:
        torch.set_num_threads(threads)
    conf = src / "stklia" / "conf"
    with initialize_config_dir(str(conf), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model}", "data.prepare=null"])
    embedding = OmegaConf.load(conf / "commands" / "embedding.yaml")
    workers = embedding.num_workers if num_workers is None else num_workers
    torch.manual_seed(0)
    device = torch.device(device_name)
    generator = instantiate(cfg.model).eval().to(device)
    data = load_data(data_dir, instantiate(cfg.data.features))  # the features are used by wav.scp dirs only
    cmn = bool(cfg.data.cmn)

    if way.startswith("loop"):
        if way == "loop_nhwc":
            generator = generator.to(memory_format=torch.channels_last)

        @torch.inference_mode()
        def run(utts: list[str]) -> np.ndarray:
            out = []
            for utt in utts:
                feats = data.load(utt)
                feats = torch.from_numpy(subtract_mean(feats) if cmn else feats).to(device)
                out.append(generator(feats[None])[0].cpu().numpy())
            return np.stack(out)
    else:
        def run(utts: list[str]) -> np.ndarray:
            return embed_utterances(generator, data, utts,
                                    Extraction(device, cmn, workers, progress=False, **embedding.extraction))

    run(data.utts[:8])  # warm-up
    if profile:  # an untimed pass under the profiler: where the time goes, by operator
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
            run(data.utts)
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=12), file=sys.stderr)
    start = time.perf_counter()
    emb = run(data.utts)
    seconds = time.perf_counter() - start
    np.save(out, emb)
    print(json.dumps({"seconds": seconds, "threads": torch.get_num_threads(), "num_workers": workers,
                      "extraction": dict(embedding.extraction)}))


def length_summary(frames: list[int]) -> str:
    """Utterance lengths in seconds (100 frames a second): range, mean, quartiles and a 1-s histogram."""
    secs = np.array(frames) / 100
    q1, q2, q3 = np.percentile(secs, [25, 50, 75])
    edges = np.arange(np.floor(secs.min()), np.ceil(secs.max()) + 1)
    counts, _ = np.histogram(secs, edges)
    histogram = ", ".join(f"{a:.0f}-{b:.0f} s: {n}" for a, b, n in zip(edges, edges[1:], counts))
    return (f"{len(secs)} utterances of {secs.min():.2f}-{secs.max():.2f} s ({min(frames)}-{max(frames)} frames), "
            f"mean {secs.mean():.2f} s, quartiles {q1:.2f} / {q2:.2f} / {q3:.2f} s, {secs.sum() / 60:.1f} min in all;"
            f" per second of length: {histogram}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--utterances", type=int, default=400)
    parser.add_argument("--min-seconds", type=float, default=2.0)
    parser.add_argument("--max-seconds", type=float, default=10.0)
    parser.add_argument("--model", default="resnet_small", help="model config (stklia/conf/model)")
    parser.add_argument("--audio", action="store_true", help="wav files, features computed while extracting")
    parser.add_argument("--before", help="git revision of stklia to measure too (e.g. the commit before a change)")
    parser.add_argument("--ways", nargs="+", choices=WAYS, help="ways to measure (default: all available)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch threads of every way (default: torch's, one per core)")
    parser.add_argument("--num-workers", type=int, help="stklia's loader workers (default: embedding.yaml's)")
    parser.add_argument("--device", default="cpu", help="where every way runs the model: cpu, cuda, ...")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="print each way's operators by time (first round)")
    parser.add_argument("--measure", choices=WAYS, help=argparse.SUPPRESS)  # internal: one timed pass
    parser.add_argument("--src", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args.measure, args.src, args.data, args.model, args.threads, args.num_workers, args.profile, args.out,
                args.device)
        return

    ways = args.ways or [w for w in WAYS if w != "before" or args.before]
    if "before" in ways and not args.before:
        parser.error("the way 'before' needs --before REV")
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        frames = make_utterances(tmp / "data", args.utterances, (args.min_seconds, args.max_seconds), args.seed,
                                 args.audio)
        sources = {way: REPO for way in ways}
        if "before" in ways:
            (tmp / "before").mkdir()
            archive = subprocess.run(["git", "-C", str(REPO), "archive", args.before, "stklia"],
                                     check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(tmp / "before")], input=archive, check=True)
            sources["before"] = tmp / "before"
        load_start = os.getloadavg()[0]
        seconds: dict[str, list[float]] = {way: [] for way in ways}
        info: dict[str, dict] = {}
        for round_ in range(args.rounds):
            for way in ways[round_ % len(ways):] + ways[: round_ % len(ways)]:  # rotated: no way always first
                command = [sys.executable, __file__, "--measure", way, "--src", str(sources[way]),
                           "--data", str(tmp / "data"), "--model", args.model, "--out", str(tmp / f"{way}.npy"),
                           "--device", args.device]
                command += ["--threads", str(args.threads)] if args.threads else []
                command += ["--num-workers", str(args.num_workers)] if args.num_workers is not None else []
                command += ["--profile"] if args.profile and round_ == 0 else []
                result = subprocess.run(command, check=True, capture_output=True, text=True)
                if args.profile and round_ == 0:
                    print(f"{way}:\n{result.stderr}", file=sys.stderr)
                info[way] = json.loads(result.stdout.strip().splitlines()[-1])
                seconds[way].append(info[way]["seconds"])
                print(f"round {round_ + 1}, {way}: {args.utterances / seconds[way][-1]:.1f} utt/s", file=sys.stderr)
        load_end = os.getloadavg()[0]
        embeddings = {way: np.load(tmp / f"{way}.npy") for way in ways}

    reference = embeddings.get("loop")
    baseline = args.utterances / min(seconds["loop"]) if "loop" in ways else None
    print(f"{os.cpu_count()} CPUs, {info[ways[0]]['threads']} torch threads in every way, model={args.model} on "
          f"{args.device}, "
          f"{'wav files (fbank computed while extracting)' if args.audio else 'feats.scp'}; "
          f"load average {load_start:.2f} at the start, {load_end:.2f} at the end; best of {args.rounds} rounds\n")
    print(length_summary(frames) + "\n")
    print("| way | utt/s (best round) | every round | speed-up over the plain loop | max diff. from the plain loop |")
    print("|---|---|---|---|---|")
    for way in ways:
        rate = args.utterances / min(seconds[way])
        rounds = ", ".join(f"{args.utterances / s:.1f}" for s in seconds[way])
        name = DESCRIPTIONS[way].format(before=args.before)
        if "num_workers" in info[way] and not way.startswith("loop"):
            extraction = ", ".join(f"{k}={v}" for k, v in info[way]["extraction"].items())
            name += f" ({extraction}, num_workers={info[way]['num_workers']})"
        ratio = f"{rate / baseline:.2f}x" if baseline else ""
        diff = ""
        if reference is not None:
            diff = f"{np.abs(embeddings[way] - reference).max() / np.abs(reference).max():.1e}"
        print(f"| {name} | {rate:.1f} | {rounds} | {ratio} | {diff} |")


if __name__ == "__main__":
    main()
