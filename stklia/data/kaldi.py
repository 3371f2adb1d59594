"""Kaldi data directories (feats.scp or wav.scp, optionally segments; utt2spk, spk2utt), read and cross-checked.

Every problem in a user's file is raised as an InputError naming the file and line, so a
run fails at start-up with one clear line instead of deep inside training. Nothing here imports torch: the
tables are read by tools that never touch a model.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import kaldiio
import numpy as np

from stklia.core.errors import InputError
from stklia.data.audio import Recording, Segment, first_non_finite
from stklia.data.rxfilename import parse_rxfilename
from stklia.data.tables import read_mapping, read_table

if TYPE_CHECKING:
    import torch

PathLike = str | os.PathLike


class Featurizer(Protocol):
    """Features of audio (stklia.data.features.Fbank): int16-scaled samples -> (frames, dims)."""

    sample_rate: int
    dim: int

    def __call__(self, samples: np.ndarray, dither_seed: int | None = None) -> np.ndarray: ...

    def batch(self, samples: torch.Tensor, dither_seeds: Sequence[int] | None = None) -> torch.Tensor:
        """(batch, frames, dims) features of a (batch, samples) tensor."""
        ...

    def num_samples(self, frames: int) -> int:
        """The number of samples that gives `frames` frames."""
        ...


@dataclass
class DataSet:
    """Utterances of one or several merged Kaldi data directories, sorted by utterance id.

    `feats` maps each utterance to its feats.scp entry, or to its wav.scp entry for the
    utterances in `audio` (directories without feats.scp), whose features `features` computes. An utterance of a
    dir with a `segments` file is a time span of its recording: `feats` maps it to the recording's wav.scp entry,
    `segments` to the span.
    """

    utts: list[str]
    utt2spk: dict[str, str]
    feats: dict[str, str]
    # where each utterance is declared: (feats.scp, wav.scp or segments path, line), for error messages
    origin: dict[str, tuple[Path, int]] = field(repr=False)
    audio: set[str] = field(default_factory=set, repr=False)
    features: Featurizer | None = field(default=None, repr=False)
    segments: dict[str, Segment] = field(default_factory=dict, repr=False)

    @property
    def speakers(self) -> list[str]:
        return sorted(set(self.utt2spk.values()))

    def speaker_labels(self) -> np.ndarray:
        """Index of each utterance's speaker in `speakers`, in `utts` order."""
        index = {spk: i for i, spk in enumerate(self.speakers)}
        return np.array([index[self.utt2spk[u]] for u in self.utts], dtype=np.int64)

    def source(self, utt: str) -> str:
        """What an utterance reads: its entry, and its segment's recording and times where it is one."""
        segment = self.segments.get(utt)
        return self.feats[utt] if segment is None else f"{self.feats[utt]} [{segment}]"

    def open_audio(self, utt: str) -> Recording:
        """An audio utterance opened to read windows of its int16-scaled samples, at the featurizer's sample rate."""
        path, line = self.origin[utt]
        return Recording(self.feats[utt], self.features.sample_rate, path, line, f"audio of '{utt}'",
                         self.segments.get(utt))

    def read_audio(self, utt: str) -> np.ndarray:
        """All the int16-scaled samples of an audio utterance."""
        with self.open_audio(utt) as recording:
            return recording.read()

    def num_pipes(self) -> int:
        """How many utterances are read through `command |` pipes (each read runs the command)."""
        return sum(parse_rxfilename(self.feats[utt]).kind == "pipe" for utt in self.audio)

    def load(self, utt: str) -> np.ndarray:
        """Features of one whole utterance as a float32 (frames, dims) matrix (from audio: not dithered)."""
        if utt in self.audio:
            mat = self.features(self.read_audio(utt))
        else:
            try:
                mat = kaldiio.load_mat(self.feats[utt])
            except Exception as err:  # kaldiio raises many kinds for a broken ark
                path, line = self.origin[utt]
                raise InputError(path, f"cannot read features of '{utt}': {err}", line) from err
        mat = np.asarray(mat, dtype=np.float32)
        if mat.ndim != 2 or mat.shape[0] == 0:
            path, line = self.origin[utt]
            raise InputError(path, f"features of '{utt}' have shape {mat.shape}, expected (frames, dims)", line)
        frame = first_non_finite(mat)
        if frame is not None:
            path, line = self.origin[utt]
            raise InputError(path, f"features of '{utt}' hold non-finite values (NaN or Inf), first at frame {frame}",
                             line)
        return mat


def _check_spk2utt(path: Path, utt2spk: dict[str, str], utt2spk_path: Path) -> None:
    """spk2utt must list exactly the utterances of utt2spk, each under its speaker."""
    seen = set()
    for lineno, (spk, *utts) in read_table(path, 2):
        for utt in utts:
            if utt2spk.get(utt) != spk:
                raise InputError(path, f"utterance '{utt}' of speaker '{spk}' disagrees with {utt2spk_path}", lineno)
            seen.add(utt)
    if len(seen) != len(utt2spk):
        missing = sorted(set(utt2spk) - seen)[0]
        raise InputError(path, f"utterance '{missing}' of {utt2spk_path} is missing")


def _check_files_exist(scp: Path, entries: dict[str, str], lines: dict[str, int], kind: str) -> None:
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
    _check_files_exist(scp, entries, lines, "audio")
    if path.is_dir() and (path / "segments").exists():
        segments, segment_lines = read_segments(path / "segments", entries, scp)
        return AudioEntries({utt: entries[segment.recording] for utt, segment in segments.items()},
                            {utt: (path / "segments", line) for utt, line in segment_lines.items()}, segments)
    return AudioEntries(entries, {key: (scp, line) for key, line in lines.items()}, {})


def load_data_dir(path: PathLike, features: Featurizer | None = None) -> DataSet:
    """Read and cross-check one Kaldi data directory.

    Its feats.scp is read when present; otherwise its wav.scp is (with its segments file, when there is one:
    utterances are then time spans of wav.scp's recordings), and `features` computes the features of its audio.
    """
    path = Path(path)
    if not path.is_dir():
        raise InputError(path, "no such data directory")
    feats_scp, utt2spk_path, spk2utt_path = path / "feats.scp", path / "utt2spk", path / "spk2utt"
    is_audio = not feats_scp.exists() and (path / "wav.scp").exists()
    if is_audio:
        if features is None:
            raise InputError(path / "wav.scp", "audio input (no feats.scp) needs a features config (data.features)")
        audio = read_audio_entries(path)
        feats, origin, segments = audio.entries, audio.origin, audio.segments
        feats_scp = path / ("segments" if (path / "segments").exists() else "wav.scp")
    elif not feats_scp.exists():
        raise InputError(feats_scp, "no such file (nor a wav.scp for audio input)")
    else:
        feats, feat_lines = read_mapping(feats_scp, None)
        _check_files_exist(feats_scp, feats, feat_lines, "feature")
        origin, segments = {utt: (feats_scp, line) for utt, line in feat_lines.items()}, {}
    utt2spk, spk_lines = read_mapping(utt2spk_path, 2)
    if not feats:
        raise InputError(feats_scp, "empty: the data directory has no utterances")
    for utt, lineno in spk_lines.items():
        if utt not in feats:
            raise InputError(utt2spk_path, f"utterance '{utt}' is not in {feats_scp}", lineno)
    for utt, (_, lineno) in origin.items():
        if utt not in utt2spk:
            raise InputError(feats_scp, f"utterance '{utt}' is not in {utt2spk_path}", lineno)
    if spk2utt_path.exists():
        _check_spk2utt(spk2utt_path, utt2spk, utt2spk_path)
    return DataSet(sorted(feats), utt2spk, feats, origin, set(feats) if is_audio else set(), features, segments)


def load_data(paths: PathLike | Sequence[PathLike], features: Featurizer | None = None) -> DataSet:
    """Read one or several Kaldi data directories (features or audio) and merge them into one set."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if len(paths) == 0:
        raise InputError("data", "no data directory given")
    parts = [load_data_dir(p, features) for p in paths]
    merged = DataSet([], {}, {}, {}, set(), features)
    for part in parts:
        for utt in part.utts:
            if utt in merged.feats:
                path, line = part.origin[utt]
                raise InputError(path, f"utterance '{utt}' also appears in {merged.origin[utt][0]}", line)
        merged.utt2spk.update(part.utt2spk)
        merged.feats.update(part.feats)
        merged.origin.update(part.origin)
        merged.audio |= part.audio
        merged.segments.update(part.segments)
    merged.utts = sorted(merged.feats)
    return merged


def check_feature_dim(data: DataSet, features_per_frame: int) -> None:
    """Compare the first utterance of each source file with the configured dimension."""
    first: dict[Path, str] = {}
    for utt in data.utts:
        first.setdefault(data.origin[utt][0], utt)
    for path, utt in first.items():
        dims = data.load(utt).shape[1]
        if dims != features_per_frame:
            raise InputError(
                path,
                f"utterance '{utt}' has {dims} features per frame but the config says "
                f"features_per_frame={features_per_frame}",
                data.origin[utt][1],
            )


