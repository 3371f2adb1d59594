"""lhotse manifests as data: a CutSet, or a RecordingSet with its SupervisionSet, read as the audio entries and
speakers of a Kaldi dir with a segments file (each cut or supervision a time span of a recording), so that the
corpus recipes of lhotse (`lhotse prepare voxceleb`, `cnceleb`, `librispeech`, ...) feed stklia without a Kaldi
dir. Reading them needs lhotse (the optional extra `stklia[lhotse]`); without it, one line says so.

A manifest names a data set where a Kaldi dir would (`data.train=[cuts.jsonl.gz]`, `python -m stklia.pack`):

* a CutSet: each cut an utterance, its id the cut's, its speaker that of its supervisions (one speaker);
* a SupervisionSet (or a RecordingSet): each supervision an utterance, with the RecordingSet (SupervisionSet)
  beside it, named as lhotse's recipes name them (`..._supervisions_...` <-> `..._recordings_...`).
"""

from __future__ import annotations

import os
from pathlib import Path

from stklia.core.errors import InputError, require_extra
from stklia.data.audio import Segment
from stklia.data.entries import AudioEntries, check_files_exist

SUFFIXES = (".jsonl.gz", ".jsonl", ".json.gz", ".json")
PARTNERS = {"SupervisionSet": ("supervisions", "recordings"), "RecordingSet": ("recordings", "supervisions")}


def is_manifest(path: str | os.PathLike) -> bool:
    """Whether a data path names a lhotse manifest (a file named *.jsonl.gz, *.jsonl, *.json.gz or *.json)."""
    return Path(path).name.endswith(SUFFIXES) and not Path(path).is_dir()


def _load(path: Path) -> object:
    from lhotse import load_manifest

    if not path.is_file():
        raise InputError(path, "no such file")
    try:
        return load_manifest(path)
    except Exception as err:  # lhotse raises many kinds for a file that is not a manifest
        raise InputError(path, f"cannot read it as a lhotse manifest: {type(err).__name__}: {err}") from None


def _partner(path: Path, kind: str) -> object:
    """The RecordingSet or SupervisionSet beside a manifest of the other kind."""
    mine, theirs = PARTNERS[kind]
    if mine not in path.name:
        raise InputError(path, f"a {kind} needs its {theirs} manifest beside it, named with '{theirs}' in place of "
                         f"'{mine}' (or give a CutSet)")
    return _load(path.with_name(path.name.replace(mine, theirs)))


def _entry(path: Path, recording: object, channel: int | None) -> tuple[str, int | None]:
    """The wav.scp entry of a lhotse Recording's source that holds `channel`, and the channel in it (None: the
    recording has one)."""
    wanted = recording.channel_ids[0] if channel is None else channel
    for source in recording.sources:
        if wanted in source.channels:
            if source.type not in ("file", "command"):
                raise InputError(path, f"recording '{recording.id}' has a '{source.type}' source: stklia reads "
                                 "'file' and 'command' sources")
            entry = source.source if source.type == "file" else f"{source.source} |"
            return entry, None if recording.num_channels == 1 else source.channels.index(wanted)
    raise InputError(path, f"recording '{recording.id}' has no source for channel {wanted}")


def read_manifest(path: str | os.PathLike) -> tuple[AudioEntries, dict[str, str]]:
    """The audio entries (segments of recordings) and utt2spk of a lhotse manifest (see the module docstring)."""
    path = Path(path)
    require_extra("lhotse", f"{path}: a lhotse manifest", "lhotse")
    manifest = _load(path)
    kind = type(manifest).__name__
    if kind == "CutSet":
        spans = []
        for cut in manifest:
            speakers = {s.speaker for s in getattr(cut, "supervisions", [])}
            if len(speakers) != 1 or None in speakers:
                raise InputError(path, f"cut '{cut.id}' has speakers {sorted(map(str, speakers))}: a cut of stklia's "
                                 "data has the supervisions of one speaker")
            if not getattr(cut, "has_recording", False):
                raise InputError(path, f"cut '{cut.id}' has no recording")
            spans.append((cut.id, cut.recording, cut.start, cut.duration, cut.channel, speakers.pop()))
    elif kind in PARTNERS:
        supervisions, recordings = (manifest, _partner(path, kind)) if kind == "SupervisionSet" else \
            (_partner(path, kind), manifest)
        spans = []
        for s in supervisions:
            if s.recording_id not in recordings:
                raise InputError(path, f"recording '{s.recording_id}' of supervision '{s.id}' is not in the "
                                 "RecordingSet")
            if s.speaker is None:
                raise InputError(path, f"supervision '{s.id}' has no speaker")
            spans.append((s.id, recordings[s.recording_id], s.start, s.duration, s.channel, s.speaker))
    else:
        raise InputError(path, f"a {kind}: stklia reads a CutSet, or a RecordingSet with its SupervisionSet")
    entries, origin, segments, utt2spk = {}, {}, {}, {}
    line = path.name.endswith((".jsonl", ".jsonl.gz"))  # a jsonl manifest holds one item a line
    for index, (utt, recording, start, duration, channel, speaker) in enumerate(spans):
        if utt in entries:
            raise InputError(path, f"duplicate id '{utt}'", index + 1 if line else None)
        if getattr(recording, "transforms", None):
            raise InputError(path, f"recording '{recording.id}' has transforms (speed, resampling, ...): stklia reads "
                             "recordings as they are", index + 1 if line else None)
        channel = channel[0] if isinstance(channel, list) else channel
        entries[utt], channel = _entry(path, recording, channel)
        segments[utt] = Segment(recording.id, start, start + duration, channel, duration)
        origin[utt] = path, index + 1 if line else None
        utt2spk[utt] = speaker
    check_files_exist(path, entries, {utt: where[1] for utt, where in origin.items()}, "audio")
    return AudioEntries(entries, origin, segments), utt2spk
