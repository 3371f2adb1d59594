"""Convert a tree of compressed audio (VoxCeleb2's m4a) once to 16 kHz mono FLAC or wav, in parallel.

    python local/convert_audio.py SRC_DIR OUT_DIR [--nj N] [--format flac|wav] [--sample-rate 16000]

Every SRC_DIR/<path>.m4a becomes OUT_DIR/<path>.flac (one ffmpeg process per file, N at a time, with a
progress bar). Training then reads windows of the converted files instead of running ffmpeg on the whole
recording for every training item (see docs/benchmarks.md: about 12 items/s per loader core through
`ffmpeg ... |` pipes, hundreds from FLAC or wav). Each file is written under a temporary name, its
duration checked against the source's, then renamed: an interrupted conversion resumes where it stopped,
skipping the files already converted (those that exist and read), and temporary files left behind by a
killed run are removed.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import soundfile
from tqdm import tqdm

from stklia.core.errors import InputError, exit_on_input_error

SOURCES = (".m4a",)
DURATION = re.compile(r"Duration: (\d+):(\d+):(\d+\.\d+)")
TOLERANCE_S = 0.1  # converted vs source duration (ffmpeg prints the source's to 10 ms; AAC frames are 64 ms)
TEMPORARY = ".tmp-"


def is_converted(path: Path) -> bool:
    try:
        return soundfile.info(str(path)).frames > 0
    except (OSError, RuntimeError, soundfile.LibsndfileError):
        return False


def convert(source: Path, out: Path, audio_format: str, sample_rate: int) -> str | None:
    """Convert one file; None when done, else what went wrong."""
    tmp = out.with_name(f".{out.name}{TEMPORARY}{os.getpid()}")
    codec = "flac" if audio_format == "flac" else "pcm_s16le"
    proc = subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-nostats", "-y", "-i", str(source), "-ar",
                           str(sample_rate), "-ac", "1", "-sample_fmt", "s16", "-c:a", codec, "-f", audio_format,
                           str(tmp)], capture_output=True, text=True)
    try:
        if proc.returncode != 0:
            lines = proc.stderr.strip().splitlines()
            return f"ffmpeg exited with status {proc.returncode}: {lines[-1] if lines else ''}"
        match = DURATION.search(proc.stderr)
        if match is None:
            return "ffmpeg printed no duration for it"
        expected = int(match[1]) * 3600 + int(match[2]) * 60 + float(match[3])
        converted = soundfile.info(str(tmp)).frames / sample_rate
        if abs(converted - expected) > TOLERANCE_S:
            return f"converted to {converted:.2f} s of audio, but it lasts {expected:.2f} s"
        tmp.rename(out)
        return None
    finally:
        tmp.unlink(missing_ok=True)


def convert_tree(src: Path, out: Path, nj: int, audio_format: str = "flac", sample_rate: int = 16000,
                 progress: bool = True) -> tuple[int, int]:
    """Convert every source file of `src` not yet converted into `out`; return (converted now, done before)."""
    sources = sorted(p for p in src.rglob("*") if p.suffix in SOURCES)
    if not sources:
        raise InputError(src, f"no {' or '.join(SOURCES)} files to convert")
    for stale in out.rglob(f".*{TEMPORARY}*") if out.is_dir() else []:
        stale.unlink()
    targets = {s: out / s.relative_to(src).with_suffix(f".{audio_format}") for s in sources}
    todo = [s for s in sources if not is_converted(targets[s])]
    failures = []
    with ThreadPoolExecutor(nj) as pool, tqdm(total=len(todo), unit="file", desc="convert",
                                                 disable=not progress) as bar:
        for s in todo:
            targets[s].parent.mkdir(parents=True, exist_ok=True)
        jobs = {pool.submit(convert, s, targets[s], audio_format, sample_rate): s for s in todo}
        for job in as_completed(jobs):
            if job.result() is not None:
                failures.append((jobs[job], job.result()))
            bar.update()
    if failures:
        source, problem = min(failures)
        others = f" ({len(failures) - 1} other files failed too)" if len(failures) > 1 else ""
        raise InputError(source, f"cannot convert: {problem}{others}")
    return len(todo), len(sources) - len(todo)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path, help="tree of m4a files")
    parser.add_argument("out", type=Path, help="where the converted tree goes")
    parser.add_argument("--nj", type=int, default=os.cpu_count(), help="files converted at once")
    parser.add_argument("--format", choices=("flac", "wav"), default="flac")
    parser.add_argument("--sample-rate", type=int, default=16000)
    args = parser.parse_args(argv)
    with exit_on_input_error():
        converted, before = convert_tree(args.src, args.out, args.nj, args.format, args.sample_rate)
    print(f"{args.out}: {converted} files converted, {before} already done")


if __name__ == "__main__":
    main()
