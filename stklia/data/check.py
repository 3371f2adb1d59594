"""Checking a Kaldi data dir before a long run: its tables as Kaldi's utils/validate_data_dir.sh checks them,
then every utterance read once.

The cross-checks stklia needs anyway (every utterance in utt2spk and feats.scp / wav.scp / segments, spk2utt
agreeing, segments of recordings wav.scp has, files present) are kaldi.load_data_dir's; the reading checks
(shape, non-finite values, sample rate, empty audio, segments inside their recordings) are DataSet.load's and
Recording's. This adds what Kaldi's own tools need: spk2utt present
and exactly utt2spk inverted, every table sorted (C locale) with unique keys, utt2spk sorted by speaker too
(utterance ids prefixed by their speaker's), the optional tables naming the same utterances or speakers, and
utterances no shorter than `min_frames`. The first problem is an InputError naming the file and line.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from stklia.core.config import CONF_DIR, build
from stklia.core.errors import InputError
from stklia.core.progress import progress_bar
from stklia.data.kaldi import DataSet, Featurizer, load_data_dir
from stklia.data.manifests import is_manifest
from stklia.data.tables import read_table

# optional tables, keyed by utterance or by speaker, as utils/validate_data_dir.sh checks them
PER_UTTERANCE = ("wav.scp", "text", "utt2dur", "utt2num_frames", "utt2lang", "utt2uniq")
PER_SPEAKER = ("spk2gender",)
FEATURE_FRAME_SHIFT_S = 0.01  # what hours are counted in for feats.scp dirs (Kaldi's default 10 ms frames)


@dataclass
class Summary:
    """What a data dir holds."""

    utterances: int
    speakers: int
    frames: int
    seconds: float
    dims: int | None  # features per frame (None: audio)

    def __add__(self, other: Summary) -> Summary:
        return Summary(self.utterances + other.utterances, self.speakers + other.speakers,
                       self.frames + other.frames, self.seconds + other.seconds,
                       self.dims if self.dims == other.dims else None)

    def __str__(self) -> str:
        dims = f", {self.dims} features per frame" if self.dims else ""
        return (f"{self.utterances} utterances, {self.speakers} speakers, {self.seconds / 3600:.2f} hours, "
                f"{self.frames} frames{dims}")


def check_sorted_keys(path: Path) -> list[str]:
    """The first fields of a table, which must be sorted as `LC_ALL=C sort` sorts them, and unique."""
    keys: list[str] = []
    for lineno, (key, *_) in read_table(path, 1):
        if keys and key <= keys[-1]:
            problem = "duplicate key" if key == keys[-1] else f"not sorted: '{key}' after '{keys[-1]}'"
            raise InputError(path, f"{problem} (Kaldi's tools need tables sorted with LC_ALL=C and unique keys; "
                             "utils/fix_data_dir.sh sorts them)", lineno)
        keys.append(key)
    return keys


def check_same_keys(path: Path, keys: list[str], expected: Iterable[str], what: str) -> None:
    expected = set(expected)
    for key in keys:
        if key not in expected:
            raise InputError(path, f"'{key}' is not one of the dir's {what}")
    missing = sorted(expected - set(keys))
    if missing:
        raise InputError(path, f"{what[:-1]} '{missing[0]}' is missing")


def check_kaldi_tables(path: Path, data: DataSet, speaker_sort: bool = True) -> None:
    """What Kaldi's tools need beyond what stklia does (see the module docstring)."""
    utt2spk = path / "utt2spk"
    check_sorted_keys(utt2spk)
    if speaker_sort:
        previous = None
        for lineno, (utt, spk) in read_table(utt2spk, 2, 2):
            if previous is not None and (spk, utt) < previous:
                raise InputError(utt2spk, f"utterance '{utt}' of speaker '{spk}' comes after one of speaker "
                                 f"'{previous[0]}': Kaldi needs utterance ids that sort with their speaker's "
                                 "(prefix them with it)", lineno)
            previous = (spk, utt)
    spk2utt = path / "spk2utt"
    if not spk2utt.exists():
        raise InputError(spk2utt, "no such file (Kaldi's tools need it: utils/utt2spk_to_spk2utt.pl makes it)")
    check_sorted_keys(spk2utt)
    by_speaker: dict[str, list[str]] = {}
    for utt in data.utts:
        by_speaker.setdefault(data.utt2spk[utt], []).append(utt)
    for lineno, (spk, *utts) in read_table(spk2utt, 2):
        if utts != by_speaker.get(spk, []):
            raise InputError(spk2utt, f"the utterances of speaker '{spk}' are not those of utt2spk in its order "
                             "(utils/utt2spk_to_spk2utt.pl makes spk2utt)", lineno)
    per_utterance = ("feats.scp", *PER_UTTERANCE)
    if data.segments:  # wav.scp lists recordings, which segments cut into utterances
        check_sorted_keys(path / "wav.scp")
        per_utterance = ("segments", *(name for name in per_utterance if name != "wav.scp"))
    for name in per_utterance:
        if (path / name).exists():
            check_same_keys(path / name, check_sorted_keys(path / name), data.utts, "utterances")
    for name in PER_SPEAKER:
        if (path / name).exists():
            check_same_keys(path / name, check_sorted_keys(path / name), data.speakers, "speakers")


def read_every_utterance(data: DataSet, min_frames: int, features_per_frame: int | None = None,
                         progress: bool = True, desc: str | None = None) -> Summary:
    """Read each utterance once (features, or audio: sample rate), checking it; what they hold."""
    frames, seconds, dims = 0, 0.0, features_per_frame
    for utt in progress_bar(data.utts, total=len(data.utts), desc=desc, unit="utt", enabled=progress):
        scp, line = data.origin[utt]
        if utt in data.audio:
            samples = len(data.read_audio(utt))
            count, seconds = data.features.num_frames(samples), seconds + samples / data.features.sample_rate
        else:
            mat = data.load(utt)
            count, seconds = len(mat), seconds + len(mat) * FEATURE_FRAME_SHIFT_S
            if dims is None:
                dims = mat.shape[1]
            if mat.shape[1] != dims:
                expected = "the config says" if features_per_frame else "the dir's first utterance has"
                raise InputError(scp, f"features of '{utt}' have {mat.shape[1]} dims per frame but {expected} {dims}",
                                 line)
        if count < min_frames:
            raise InputError(scp, f"'{utt}' is too short: {count} frames (fewer than min_frames={min_frames})", line)
        frames += count
    return Summary(len(data.utts), len(data.speakers), frames, seconds, None if data.audio else dims)


def check_data_dir(path: str | os.PathLike, features: Featurizer | None = None, *, min_frames: int = 10,
                   features_per_frame: int | None = None, speaker_sort: bool = True,
                   progress: bool = True) -> Summary:
    """Check one Kaldi data dir (its tables, then every utterance; a lhotse manifest: every utterance); what it
    holds."""
    path = Path(path)
    data = load_data_dir(path, features)
    if not is_manifest(path):
        check_kaldi_tables(path, data, speaker_sort)
    return read_every_utterance(data, min_frames, features_per_frame, progress, desc=path.name)


def check_data(cfg: DictConfig) -> None:
    """The command (stklia/conf/commands/check_data.yaml): each dir checked, what it holds printed, then the total."""
    features_yaml = CONF_DIR / "features" / f"{cfg.features}.yaml"
    if not features_yaml.is_file():
        raise InputError(features_yaml, "no such features config")
    features = build(OmegaConf.merge(OmegaConf.load(features_yaml),
                                     {"sample_rate": cfg.sample_rate} if cfg.sample_rate else {}))
    total = None
    for path in map(Path, cfg.dirs):
        summary = check_data_dir(path, features, min_frames=cfg.min_frames, features_per_frame=cfg.features_per_frame,
                                 speaker_sort=cfg.speaker_sort, progress=cfg.progress)
        print(f"{path}: {summary}", flush=True)
        total = summary if total is None else total + summary
    if len(cfg.dirs) > 1:
        print(f"total: {total}")
