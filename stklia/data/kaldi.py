"""Kaldi data directories (feats.scp or wav.scp, optionally segments; utt2spk, spk2utt), read and cross-checked.

Every problem in a user's file is raised as an InputError naming the file and line, so a
run fails at start-up with one clear line instead of deep inside training. Nothing here imports torch: the
tables are read by tools that never touch a model.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import kaldiio
import numpy as np

from stklia.core.errors import InputError
from stklia.data.audio import Recording, Segment, first_non_finite
from stklia.data.entries import check_files_exist, read_audio_entries
from stklia.data.manifests import is_manifest, read_manifest
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


def load_data_dir(path: PathLike, features: Featurizer | None = None) -> DataSet:
    """Read and cross-check one Kaldi data directory.

    Its feats.scp is read when present; otherwise its wav.scp is (with its segments file, when there is one:
    utterances are then time spans of wav.scp's recordings), and `features` computes the features of its audio.
    `path` may also be a lhotse manifest (stklia.data.manifests), read as audio.
    """
    path = Path(path)
    if is_manifest(path):
        return _manifest_data(path, features)
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
        check_files_exist(feats_scp, feats, feat_lines, "feature")
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


def _manifest_data(path: Path, features: Featurizer | None) -> DataSet:
    if features is None:
        raise InputError(path, "a lhotse manifest is audio: it needs a features config (data.features)")
    audio, utt2spk = read_manifest(path)
    if not audio.entries:
        raise InputError(path, "empty: the manifest has no utterances")
    return DataSet(sorted(audio.entries), utt2spk, audio.entries, audio.origin, set(audio.entries), features,
                   audio.segments)


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


