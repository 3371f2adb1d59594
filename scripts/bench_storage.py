"""Benchmark training's reading of loose files against Kaldi archives (python -m stklia.pack), per 1,000 items.

    python scripts/bench_storage.py [--utts 1000] [--items 1000] [--work DIR] [--demo DIR]

Builds (once, in --work) a VoxCeleb-shaped corpus of --utts 8 s utterances (the demo corpus's train audio
joined and cut, 10 per speaker directory) as loose wav and loose FLAC files, packs each (and the demo's noise,
music, babble and RIR sets, the musan_rirs augmentation's lists, as wav members) with stklia.pack, and measures,
for each of loose and packed, wav and FLAC, without augmentation and with musan_rirs, what one loader process does
for --items training items (TrainingCrops on the device path: every random draw and every read of a 200-frame
crop, its noise windows and impulse response; the features are the device's, whatever the storage), in a fresh
process each time:

* `open` calls per 1,000 items, after the process's start and WARM_UP items (counted by `strace -f -e
  trace=open,openat` between two marker opens);
* bytes read per item (the kernel's count, /proc/self/io rchar: every read and pread, from the page cache or not)
  and as a multiple of the crop's own samples (2 bytes x 32,240); with a cold cache, the bytes fetched from the
  storage (read_bytes: the crop's pages and the kernel's read-ahead);
* items/s on one core (wall clock, one torch thread) with a warm page cache and a cold one. Dropping the page
  cache needs root and a writable /proc/sys/vm/drop_caches (`echo 3 > ...`); where that is refused, every data
  file's pages are still evicted with posix_fadvise(POSIX_FADV_DONTNEED), and `fincore` shows how much of them
  stayed;
* the time to pack the utterances (nj=1, and nj=2), to stage a packed dir (stklia.data.staging: copy + SHA-256),
  and to copy the loose files one by one (shutil.copyfile each), from a cold cache.

Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(SCRIPTS))
from bench_loader import musan_rirs_overrides, random_items  # noqa: E402

SR = 16000
CROP = 200
WARM_UP = 20  # items made before the measured ones (their files are not evicted: counted from the next)
MARK = "stklia-bench-storage-mark"  # opened before and after the measured items: strace's markers


def build_corpus(demo: Path, work: Path, utts: int) -> dict[str, Path]:
    """Loose wav and FLAC dirs of `utts` 8 s utterances cut from the demo's train audio joined (different offsets
    into it for each utterance)."""
    import soundfile

    dirs = {fmt: work / f"loose_{fmt}" for fmt in ("wav", "flac")}
    if all((d / "utt2spk").exists() for d in dirs.values()):
        return dirs
    paths = [line.split()[1] for line in (demo / "train_wav" / "wav.scp").read_text().splitlines()]
    joined = np.concatenate([soundfile.read(p, dtype="int16")[0] for p in paths])
    rng = np.random.default_rng(0)
    length = 8 * SR
    for fmt, d in dirs.items():
        scp, utt2spk = [], []
        for i in range(utts):
            speaker, utt = f"id{i // 10:05d}", f"id{i // 10:05d}-{i % 10:05d}"
            start = int(rng.integers(0, len(joined) - length))
            path = d / "audio" / speaker / f"{i % 10:05d}.{fmt}"
            path.parent.mkdir(parents=True, exist_ok=True)
            soundfile.write(path, joined[start : start + length], SR)
            scp.append(f"{utt} {path}\n")
            utt2spk.append(f"{utt} {speaker}\n")
        (d / "wav.scp").write_text("".join(scp))
        (d / "utt2spk").write_text("".join(utt2spk))
    return dirs


def pack_dir(src: Path, out: Path, fmt: str, nj: int = 1) -> float:
    """Seconds to pack src into out (stklia.pack's library function), from a fresh out."""
    from omegaconf import OmegaConf

    from stklia.data.pack import pack

    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    pack(OmegaConf.create({"src": str(src), "out": str(out), "format": fmt, "archive_size": "1G", "sample_rate": SR,
                           "nj": nj, "progress": False}))
    return time.perf_counter() - started


def data_files(*roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob("*") if p.is_file()]


def evict(files: list[Path]) -> tuple[bool, str]:
    """Drop the page cache (as root, where /proc/sys/vm/drop_caches is writable), else evict every file's pages
    with posix_fadvise(DONTNEED). (whether drop_caches worked, what fincore says of the files now)."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        dropped = True
    except OSError:
        dropped = False
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    resident = "fincore not found"
    if shutil.which("fincore"):
        out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES,SIZE", *map(str, files[:2000])],
                             capture_output=True, text=True).stdout.split()
        res, size = sum(map(int, out[0::2])), sum(map(int, out[1::2]))
        resident = f"{res / max(size, 1):.2%} of {size / 2**20:.0f} MiB resident"
    return dropped, resident


def measure(spec: dict) -> dict:
    """One measurement, in this (fresh) process: spec = {dir, sets (augmentation lists' root or None), items}."""
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from stklia.data.datasets import TrainingCrops
    from stklia.data.kaldi import load_data

    torch.set_num_threads(1)
    overrides = ["experiment=voxceleb_resnet34_aam", *musan_rirs_overrides(Path(spec["sets"] or "/unused"))]
    with initialize_config_dir(str(REPO / "stklia" / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    features = instantiate(cfg.data.features)
    augment = instantiate(cfg.augment) if spec["sets"] else None
    crops = TrainingCrops(load_data(spec["dir"], features), CROP, True, augment, on_device=True)
    for item in random_items(len(crops), WARM_UP, seed=0):  # modules imported, archives opened: the warm-up
        crops[item]
    items = random_items(len(crops), spec["items"], seed=1)

    def io() -> dict[str, int]:
        return {k: int(v) for k, v in (line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())}

    before, started, cpu = io(), time.perf_counter(), time.process_time()
    with open(Path(tempfile.gettempdir()) / MARK, "w"):  # the opens between the markers are the items' alone
        pass
    for item in items:
        crops[item]
    with open(Path(tempfile.gettempdir()) / MARK, "w"):
        pass
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    after = io()
    return {"wall": wall, "cpu": cpu, "rchar": after["rchar"] - before["rchar"],
            "read_bytes": after["read_bytes"] - before["read_bytes"], "crop_bytes": 2 * crops.crop_samples}


def run_measure(spec: dict, strace: bool = False) -> dict:
    """measure(spec) in a fresh process; with strace, also the open calls between the markers."""
    command = [sys.executable, __file__, "--measure", json.dumps(spec)]
    with tempfile.NamedTemporaryFile(suffix=".strace") as trace:
        if strace:
            command = ["strace", "-f", "-qq", "-e", "trace=open,openat", "-o", trace.name, *command]
        proc = subprocess.run(command, capture_output=True, text=True, check=True)
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        if strace:
            lines = Path(trace.name).read_text().splitlines()
            marks = [i for i, line in enumerate(lines) if MARK in line]
            between = lines[marks[0] + 1 : marks[-1]]
            result["opens"] = sum(1 for line in between if "open" in line)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--utts", type=int, default=1000)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/stklia-bench-storage"))
    parser.add_argument("--demo", help="demo corpus root (default: the cache)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(json.loads(args.measure))))
        return

    from stklia.data.staging import stage
    from stklia.demo.corpus import ensure_demo

    demo = Path(ensure_demo(args.demo))
    args.work.mkdir(parents=True, exist_ok=True)
    loose = build_corpus(demo, args.work, args.utts)
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; {args.utts} utterances of 8 s; "
          f"{args.items} items of {CROP} frames per figure, one process, one torch thread\n")

    timings = {}
    packed, sets = {}, {}
    for fmt, d in loose.items():
        evict(data_files(d))
        timings[f"pack {fmt}, nj=1"] = pack_dir(d, args.work / f"packed_{fmt}", fmt)
        evict(data_files(d))
        timings[f"pack {fmt}, nj=2"] = pack_dir(d, args.work / f"packed_{fmt}", fmt, nj=2)
        packed[fmt] = args.work / f"packed_{fmt}"
        sets[fmt] = args.work / "sets"  # as wav members (as the loose sets are): an item reads up to 8 windows
        for name in ("noise", "music", "babble", "rirs"):
            if not (sets[fmt] / "augment" / name / "wav.scp").exists():
                pack_dir(demo / "augment" / name, sets[fmt] / "augment" / name, "wav")
    for fmt, d in loose.items():
        copy = args.work / f"copied_{fmt}"
        shutil.rmtree(copy, ignore_errors=True)
        files = sorted((d / "audio").rglob(f"*.{fmt}"))
        evict(files)
        started = time.perf_counter()
        for path in files:
            target = copy / path.relative_to(d)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
        timings[f"copy {len(files)} loose {fmt} files one by one"] = time.perf_counter() - started
        scratch = args.work / f"scratch_{fmt}"
        shutil.rmtree(scratch, ignore_errors=True)
        evict(data_files(packed[fmt]))
        started = time.perf_counter()
        stage(packed[fmt], scratch)
        timings[f"stage the packed {fmt} dir (copy + SHA-256)"] = time.perf_counter() - started
        started = time.perf_counter()
        stage(packed[fmt], scratch)
        timings["stage it again (checked, reused)"] = time.perf_counter() - started

    rows = []
    dropped, resident = None, None
    for fmt in ("wav", "flac"):
        for storage, d, set_root in (("loose", loose[fmt], demo), ("packed", packed[fmt], sets[fmt])):
            for augmented in (False, True):
                spec = {"dir": str(d), "sets": str(set_root) if augmented else None, "items": args.items}
                files = data_files(d, *(([set_root / "augment"]) if augmented else []))
                traced = run_measure(spec, strace=True)
                run_measure(spec)  # the page cache warm
                warm = run_measure(spec)
                dropped, resident = evict(files)
                cold = run_measure(spec)
                rows.append((fmt, storage, augmented, traced["opens"], warm, cold))
    per = args.items / 1000
    print(f"Page cache: drop_caches {'worked' if dropped else 'refused (no root or read-only /proc/sys)'}; after "
          f"posix_fadvise eviction of the data files: {resident}\n")
    print("| members | storage | augmentation | `open` calls per 1,000 items | bytes read per item (x the crop's) "
          "| from storage per item, cold | items/s/core, warm cache | items/s/core, cold cache | CPU s per 1,000 "
          "items, warm |")
    print("|---|---|---|---|---|---|---|---|---|")
    for fmt, storage, augmented, opens, warm, cold in rows:
        items = args.items
        print(f"| {fmt} | {storage} | {'musan_rirs' if augmented else 'none'} | {opens / per:,.0f} "
              f"| {warm['rchar'] / items / 1024:,.1f} KiB ({warm['rchar'] / items / warm['crop_bytes']:.2f}x) "
              f"| {cold['read_bytes'] / items / 1024:,.1f} KiB | {items / warm['wall']:,.0f} "
              f"| {items / cold['wall']:,.0f} | {warm['cpu'] / per:.2f} |", flush=True)
    print("\n| task | seconds |\n|---|---|")
    for task, seconds in timings.items():
        print(f"| {task} | {seconds:.2f} |")
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
