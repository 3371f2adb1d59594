"""Benchmark the training data path at VoxCeleb scale: items/s per loader core, for every input kind.

    python scripts/bench_loader.py [--items 1024] [--repeats 2] [--inputs KIND ...] [--work DIR] [--stklia CHECKOUT]

Builds (once, in --work) VoxCeleb-shaped Kaldi dirs from the demo corpus's audio: 8 s utterances (a
demo speaker's recordings joined and cut) as wav, FLAC, m4a read through the `ffmpeg ... |` pipes of
recipes/voxceleb/local/prepare.py, and feats.scp (80 fbanks); 2 s and 20 s utterances as FLAC; and
musan_rirs-style augmentation lists (the demo's noise, music, babble and RIR sets). Then measures, with
200-frame crops in batches of 128, items per CPU second of a DataLoader's one worker process (and of the
ffmpeg it runs: the cost on one core, which other load on the machine barely changes), everything a worker
does in training: read, augment, collate, hand the batch over to the training process:

* the CPU path (features in the loader workers): without augmentation and with
  experiment=voxceleb_resnet34_aam's (speed, reverberation, noise/music/babble, SpecAugment);
* the device path (features_on_device=true): the workers' share, with the batch buffers handed back as the
  training step does, and with every batch in new shared memory (what a plain DataLoader does); the same
  items made and collated in this process (with one torch thread), without the handing over; and the
  device's share, the FrontEnd time of a batch, measured in this process on this CPU (a GPU's is far
  smaller);
* the front end on this CPU, per item: its waveform augmentation 8 items at a time against a batch at once
  (stklia's), its features by the number of rows computed together (1 to a batch; stklia computes
  stklia.data.frontend.CPU_ROWS at a time);
* the floor of FLAC input: decoding a crop's samples alone (soundfile: open, seek, read), no other work;
* the loader cores a GPU training at 3,000 samples/s needs on each path;
* 2 s against 20 s utterances (an item's cost must not depend on its utterance's length).

`--stklia CHECKOUT` measures another checkout of stklia (e.g. `git archive main`): the "before" figures;
what it lacks (the device path) is reported as n/a. Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

SECONDS = {"8 s": 8, "2 s": 2, "20 s": 20}
INPUTS = ("feats", "wav", "flac", "m4a")
GPU_RATE = 3000  # samples/s a current data-centre GPU trains a ResNet34 at (bf16)
BATCH = 128
CROP = 200


def musan_rirs_overrides(demo_root: Path) -> list[str]:
    """Hydra overrides of the recipe's augmentation (musan_rirs) with the demo's noise, music, babble and RIR sets."""
    sets = demo_root / "augment"
    return ["augment=musan_rirs", f"augment.reverb.rirs={sets / 'rirs'}",
            f"augment.noise.sources.noise.list={sets / 'noise'}", f"augment.noise.sources.music.list={sets / 'music'}",
            f"augment.noise.sources.babble.list={sets / 'babble'}"]


def recipe_module(stklia_root: Path, name: str) -> object:
    """recipes/voxceleb/local/<name>.py of a checkout, imported."""
    spec = importlib.util.spec_from_file_location(name, stklia_root / f"recipes/voxceleb/local/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_dirs(demo_root: Path, work: Path, stklia_root: Path, wanted: tuple[str, ...] | None = None
               ) -> dict[str, Path]:
    """Kaldi dirs of the demo's train audio joined into utterances of 2, 8 and 20 s, in each input kind; by name
    (e.g. "8 s wav"), all of them or the `wanted` ones."""
    import kaldiio
    import soundfile

    from stklia.data.features import Fbank

    prepare = recipe_module(stklia_root, "prepare")
    dirs = {}
    by_speaker: dict[str, list[str]] = {}
    for line in (demo_root / "train" / "wav.scp").read_text().splitlines():
        utt, path = line.split()
        by_speaker.setdefault(utt.split("-")[0], []).append(path)
    for name, seconds in SECONDS.items():
        utts = []
        for speaker, paths in sorted(by_speaker.items())[:10]:
            joined = np.concatenate([soundfile.read(p, dtype="int16")[0] for p in paths])
            n = seconds * 16000
            utts += [(f"{speaker}-{i:02d}", joined[i * n : (i + 1) * n]) for i in range(min(len(joined) // n, 4))]
        kinds = ("wav", "flac", "m4a", "feats") if name == "8 s" else ("flac",)
        for kind in kinds:
            if wanted is not None and f"{name} {kind}" not in wanted:
                continue
            d = work / f"{name.replace(' ', '')}_{kind}"
            dirs[f"{name} {kind}"] = d
            if (d / "utt2spk").exists():
                continue
            (d / "audio").mkdir(parents=True, exist_ok=True)
            scp = []
            for utt, samples in utts:
                path = d / "audio" / f"{utt}.{'wav' if kind == 'feats' else kind}"
                if kind == "m4a":
                    soundfile.write(path.with_suffix(".wav"), samples, 16000)
                    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", path.with_suffix(".wav"),
                                    "-c:a", "aac", "-b:a", "64k", path], check=True)
                    path.with_suffix(".wav").unlink()
                    scp.append(f"{utt} {prepare.wav_entry(path)}")
                else:
                    soundfile.write(path, samples, 16000)
                    scp.append(f"{utt} {path}")
            if kind == "feats":
                fbank = Fbank(num_mel_bins=80, dither=0)
                with kaldiio.WriteHelper(f"ark,scp:{d / 'feats.ark'},{d / 'feats.scp'}") as writer:
                    for utt, samples in utts:
                        writer(utt, fbank(samples.astype(np.float32)))
            else:
                (d / "wav.scp").write_text("".join(f"{line}\n" for line in scp))
            (d / "utt2spk").write_text("".join(f"{utt} {utt.split('-')[0]}\n" for utt, _ in utts))
    return dirs


def random_items(num_utts: int, count: int, seed: int) -> list[tuple[int, int]]:
    """`count` training items (utterance index, crop seed), as a batch schedule draws them."""
    rng = np.random.default_rng(seed)
    return list(zip(rng.integers(num_utts, size=count).tolist(), rng.integers(2**62, size=count).tolist()))


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the ffmpeg of pipes): what a loader core spends."""
    return sum(os.times()[:4])


def items_per_second(make: object, items: list, repeats: int) -> float:
    """Items per CPU second (per core, whatever else runs on the machine), best of `repeats`."""
    best = np.inf
    for _ in range(repeats):
        start = cpu_seconds()
        make(items)
        best = min(best, cpu_seconds() - start)
    return len(items) / best


def worker_items_per_second(dataset: object, batches: list[list], repeats: int, release: bool = True) -> float:
    """Items per CPU second of a DataLoader's one worker process, as training runs it: reading, augmenting (on
    the CPU path: and computing the features of) each item, collating a batch and handing it over to the
    training process. Its CPU time (and that of the ffmpeg it runs) is read from /proc around each pass over
    `batches`, after a first pass that starts the worker; best of `repeats`. Without `release`, the batches'
    buffers (the device path's BatchSlots) are never handed back: every batch goes into new shared memory, as
    a plain DataLoader's do."""
    import torch
    from torch.utils.data import DataLoader, default_collate

    def cpu_ticks(pid: int) -> int:  # utime, stime, cutime, cstime: fields 14-17 of /proc/PID/stat
        return sum(int(f) for f in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[11:15])

    try:  # the training loader, where the checkout has one (stklia.data.datasets.training_loader)
        from stklia.data.datasets import training_loader
    except ImportError:
        training_loader = None
    if training_loader is not None and hasattr(dataset, "release"):
        loader = training_loader(dataset, batches, 1, 2, pin_memory=False, persistent_workers=True)
    else:
        loader = DataLoader(dataset, batch_sampler=batches, num_workers=1, persistent_workers=True,
                            collate_fn=getattr(dataset, "collate", default_collate), generator=torch.Generator())
    hand_back = getattr(dataset, "release", None) if release else None  # what training does after the front end
    best = np.inf
    for repeat in range(1 + repeats):
        batch_iterator = iter(loader)
        pid = batch_iterator._workers[0].pid
        start = cpu_ticks(pid)
        for batch in batch_iterator:
            if hand_back is not None and not isinstance(batch, (list, tuple)):
                hand_back(batch)
        if repeat:
            best = min(best, (cpu_ticks(pid) - start) / os.sysconf("SC_CLK_TCK"))
    return sum(map(len, batches)) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1024, help="items per measurement (m4a pipes: a tenth)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--inputs", nargs="+", choices=INPUTS, default=INPUTS,
                        help="input kinds to measure (the FLAC floor and lengths come with flac)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/stklia-bench-loader"))
    parser.add_argument("--demo", help="demo corpus root (default: the cache)")
    parser.add_argument("--stklia", type=Path, default=Path(__file__).resolve().parents[1],
                        help="the stklia checkout to measure (default: this one)")
    args = parser.parse_args()
    sys.path.insert(0, str(args.stklia))

    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from stklia.data.datasets import TrainingCrops
    from stklia.data.kaldi import load_data
    from stklia.demo.corpus import ensure_demo

    torch.set_num_threads(1)
    demo = ensure_demo(args.demo)
    work = args.work / ("before" if args.stklia.resolve() != Path(__file__).resolve().parents[1] else "after")
    dirs = build_dirs(demo, work, args.stklia)
    with initialize_config_dir(str(args.stklia / "stklia" / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=voxceleb_resnet34_aam", *musan_rirs_overrides(demo)])
    features = instantiate(cfg.data.features)
    augment = instantiate(cfg.augment)
    has_device_path = "on_device" in inspect.signature(TrainingCrops).parameters
    print(f"stklia at {args.stklia}; {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
          f"crops of {CROP} frames, one torch thread, items per CPU second, best of {args.repeats}\n")

    def measure(kind: str, augmented: bool) -> dict[str, float]:
        data = load_data(str(dirs[kind]), features)
        count = args.items // 10 if "m4a" in kind else args.items
        items = random_items(len(data.utts), count, seed=0)
        used = augment if augmented else None
        batches = [items[i : i + BATCH] for i in range(0, len(items), BATCH)]
        out = {"cpu": worker_items_per_second(TrainingCrops(data, CROP, True, used), batches, args.repeats)}
        if has_device_path and "feats" not in kind:
            device = TrainingCrops(data, CROP, True, used, on_device=True)
            out["workers"] = worker_items_per_second(device, batches, args.repeats)
            if hasattr(device, "release"):
                device = TrainingCrops(data, CROP, True, used, on_device=True)
                out["workers_new_memory"] = worker_items_per_second(device, batches, args.repeats, release=False)
            out["in_process"] = items_per_second(lambda its: [device.collate([device[i] for i in b]) for b in batches],
                                                 items, args.repeats)
            batch = device.collate([device[i] for i in batches[0]])
            seconds = 1 / items_per_second(lambda its: device.frontend(batch), [0], args.repeats)
            out["device_ms"] = seconds * 1000
            out["device_items"] = len(batches[0]) / seconds
        return out

    def cell(value: float | None, unit: str = "") -> str:
        return "n/a" if value is None else f"{value:,.0f}{unit}"

    print("| input (8 s utterances) | augmentation | CPU path: items/s/core | cores per GPU at 3,000/s "
          "| device path: workers' items/s/core | cores per GPU at 3,000/s | ... each batch in new shared memory "
          "| device path: items + collate alone | device's batch of 128 on this CPU |")
    print("|---|---|---|---|---|---|---|---|---|")
    results = {}
    for kind in (f"8 s {name}" for name in args.inputs):
        for augmented in (False, True):
            r = results[kind, augmented] = measure(kind, augmented)
            workers = r.get("workers")
            device = f"{r['device_ms']:.0f} ms ({r['device_items']:,.0f} items/s)" if "device_ms" in r else "n/a"
            label = "SpecAugment" if augmented and "feats" in kind else "musan_rirs" if augmented else "none"
            print(f"| {kind.split()[-1].replace('feats', 'feats.scp').replace('m4a', 'm4a (ffmpeg pipes)')} "
                  f"| {label} | {cell(r['cpu'])} | {GPU_RATE / r['cpu']:.1f} | {cell(workers)} "
                  f"| {'n/a' if workers is None else f'{GPU_RATE / workers:.1f}'} "
                  f"| {cell(r.get('workers_new_memory'))} | {cell(r.get('in_process'))} "
                  f"| {device} |", flush=True)

    def flac_tables() -> None:
        """FLAC's decoding floor, and items/s against the utterances' length."""
        import soundfile

        flac_files = sorted((dirs["8 s flac"] / "audio").glob("*.flac"))
        length = features.num_samples(CROP)
        starts = np.random.default_rng(0).integers(0, 8 * 16000 - length, args.items).tolist()

        # the same files as the VoxCeleb recipe's stage 0 writes them (ffmpeg's FLAC encoder, not libsndfile's)
        convert = recipe_module(Path(__file__).resolve().parents[1], "convert_audio").convert
        (work / "8s_flac_recipe").mkdir(exist_ok=True)
        recipe_files = [work / "8s_flac_recipe" / f.name for f in flac_files]
        for source, converted in zip(flac_files, recipe_files):
            if not converted.exists() and (problem := convert(source, converted, "flac", 16000)):
                raise SystemExit(f"{source}: {problem}")

        def decoder(files: list[Path]) -> object:
            def decode(starts: list[int]) -> None:
                for i, start in enumerate(starts):
                    with soundfile.SoundFile(files[i % len(files)]) as f:
                        f.seek(start)
                        f.read(length, dtype="int16")
            return decode

        print(f"\nThe floor of FLAC input, decoding the crop's {length:,} samples alone (soundfile: open, seek, read): "
              f"{items_per_second(decoder(flac_files), starts, args.repeats):,.0f} items/s/core; files written by "
              f"the recipe's stage 0 (ffmpeg): {items_per_second(decoder(recipe_files), starts, args.repeats):,.0f}")
        print("\n| FLAC utterances | augmentation | CPU path: items/s/core | device path: workers' items/s/core |")
        print("|---|---|---|---|")
        for augmented in (False, True):
            for name in ("2 s", "8 s", "20 s"):
                r = results.get((f"{name} flac", augmented)) or measure(f"{name} flac", augmented)
                results[f"{name} flac", augmented] = r
                label = "musan_rirs" if augmented else "none"
                print(f"| {name} | {label} | {cell(r['cpu'])} | {cell(r.get('workers'))} |", flush=True)
        for augmented in (False, True):
            short, long = results["2 s flac", augmented], results["20 s flac", augmented]
            ratios = [f"{path} {long[path] / short[path]:.2f}" for path in ("cpu", "workers") if path in short]
            print(f"\n20 s / 2 s items/s, {'musan_rirs' if augmented else 'no augmentation'}: {', '.join(ratios)}")
    def rows_table() -> None:
        """The front end on this CPU per item: its waveform augmentation by the number of items changed together,
        its features (fbank, normalisation, SpecAugment) of a batch by the number of rows computed together."""
        from stklia.data.frontend import CPU_ROWS, AudioBatch

        data = load_data(str(dirs["8 s wav"]), features)
        device = TrainingCrops(data, CROP, True, augment, on_device=True)
        count = args.items // BATCH * BATCH
        crops = [device[item] for item in random_items(len(data.utts), count, seed=1)]
        frontend = device.frontend
        print("\n| 8 s wav items, musan_rirs, on one core | ms per item |")
        print("|---|---|")
        for rows in (8, BATCH):
            batches = [AudioBatch.collate(crops[i : i + rows]) for i in range(0, count, rows)]
            rate = items_per_second(lambda its, batches=batches: [frontend.waveforms(b) for b in batches], crops,
                                    args.repeats)
            print(f"| waveforms (speed, reverberation, noise), {rows} items together | {1000 / rate:.2f} |")
        batches = [AudioBatch.collate(crops[i : i + BATCH]) for i in range(0, count, BATCH)]
        waveforms = [(frontend.waveforms(b), b.dither_seeds, b.zeroed) for b in batches]
        for rows in (1, 2, 4, 8, 16, 32, BATCH):
            def compute(its: list, rows: int = rows) -> None:
                for x, seeds, zeroed in waveforms:
                    for first in range(0, len(x), rows):
                        frontend.features_of(x[first : first + rows], seeds[first : first + rows],
                                             zeroed[first : first + rows])
            rate = items_per_second(compute, crops, args.repeats)
            chosen = " (stklia's CPU_ROWS)" if rows == CPU_ROWS else ""
            print(f"| features (fbank, normalisation, SpecAugment), {rows} rows together{chosen} "
                  f"| {1000 / rate:.2f} |", flush=True)
    try:  # checkouts before the front end's two parts (waveforms, features) have no such table
        from stklia.data.frontend import FrontEnd
    except ImportError:
        FrontEnd = None
    if "wav" in args.inputs and hasattr(FrontEnd, "waveforms"):
        rows_table()
    if "flac" in args.inputs:
        flac_tables()
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
