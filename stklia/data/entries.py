"""The audio a Kaldi dir or a list names: wav.scp entries, and the segments file that cuts its recordings into
utterances, read and checked line by line (the one reader of both: data dirs, augmentation lists, pack)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from stklia.core.errors import InputError
from stklia.data.audio import Segment
from stklia.data.rxfilename import parse_rxfilename
from stklia.data.tables import read_table

PathLike = str | os.PathLike


def check_files_exist(scp: Path, entries: dict[str, str], lines: dict[str, int], kind: str) -> None:
    """Every file an scp's entries read (not pipes) exists; each is checked once."""
    checked: set[Path] = set()
    for utt, rx in entries.items():
        path = parse_rxfilename(rx).path
        if path is None or path in checked:
            continue
        if not (Path.cwd() / path).is_file():  # a relative path is relative to where the command runs
            raise InputError(scp, f"{kind} file '{Path.cwd() / path}' does not exist", lines[utt])
        checked.add(path)


def _number(path: Path, line: int, text: str, what: str, kind: type = float) -> float:
    try:
        value = kind(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise InputError(path, f"{what} '{text}' is not a number", line)
    return value


def read_segments(path: Path, recordings: dict[str, str], wav_scp: Path) -> tuple[dict[str, Segment],
                                                                                   dict[str, int]]:
    """A Kaldi `segments` file (`<utt> <recording> <start> <end> [<channel>]`, seconds; an end of -1: the
    recording's end), checked as Kaldi's extract-segments checks it, each segment's recording in `recordings`
    (wav.scp). Segments may overlap. Whether a segment lies inside its recording is checked where it is read."""
    segments: dict[str, Segment] = {}
    lines: dict[str, int] = {}
    for lineno, fields in read_table(path, 4, 5):
        utt, recording = fields[:2]
        if utt in segments:
            raise InputError(path, f"duplicate key '{utt}' (first on line {lines[utt]})", lineno)
        if recording not in recordings:
            raise InputError(path, f"recording '{recording}' of segment '{utt}' is not in {wav_scp}", lineno)
        start = _number(path, lineno, fields[2], "start time")
        end = _number(path, lineno, fields[3], "end time")
        if start < 0:
            raise InputError(path, f"segment '{utt}' starts at {fields[2]} s, before its recording", lineno)
        if end != -1 and end <= start:
            raise InputError(path, f"segment '{utt}' ends at {fields[3]} s, not after its start ({fields[2]} s)",
                             lineno)
        channel = _number(path, lineno, fields[4], "channel", int) if len(fields) == 5 else None
        if channel is not None and channel < 0:
            raise InputError(path, f"channel '{fields[4]}' of segment '{utt}' is negative", lineno)
        segments[utt], lines[utt] = Segment(recording, start, end, channel), lineno
    return segments, lines


@dataclass
class AudioEntries:
    """The audio a Kaldi dir's wav.scp (with its segments file, when there is one) or a list file names, in its
    order: key -> wav.scp entry, -> segment (a time span of a recording: the key is the segment's), and where each
    key is declared (file, line), for error messages."""

    entries: dict[str, str]
    origin: dict[str, tuple[Path, int]]
    segments: dict[str, Segment]


def read_audio_entries(path: PathLike, bare_paths: bool = False) -> AudioEntries:
    """The audio of a Kaldi dir (wav.scp, segments) or of a list file of `key entry` lines (with `bare_paths`, also
    lines of a path alone, keyed `<list name>:<line>`), each file it reads checked to exist."""
    path = Path(path)
    scp = path / "wav.scp" if path.is_dir() else path
    entries: dict[str, str] = {}
    lines: dict[str, int] = {}
    for lineno, fields in read_table(scp, 1 if bare_paths else 2):
        key, entry = (f"{scp.name}:{lineno}", fields[0]) if len(fields) == 1 else (fields[0], " ".join(fields[1:]))
        if key in entries:
            raise InputError(scp, f"duplicate key '{key}' (first on line {lines[key]})", lineno)
        entries[key], lines[key] = entry, lineno
    check_files_exist(scp, entries, lines, "audio")
    if path.is_dir() and (path / "segments").exists():
        segments, segment_lines = read_segments(path / "segments", entries, scp)
        return AudioEntries({utt: entries[segment.recording] for utt, segment in segments.items()},
                            {utt: (path / "segments", line) for utt, line in segment_lines.items()}, segments)
    return AudioEntries(entries, {key: (scp, line) for key, line in lines.items()}, {})
