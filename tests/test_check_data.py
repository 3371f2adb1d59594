"""`python -m stklia.check_data`: Kaldi's validate_data_dir.sh checks, every utterance read, a summary."""

from __future__ import annotations

import math
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile

from stklia.check_data import main
from stklia.data.kaldi import load_data_dir

from conftest import poison_features, run_stklia, segmented_copy


def test_check_data_summarises_feature_and_audio_dirs(demo_root: Path, tmp_path: Path) -> None:
    dirs = [demo_root / name for name in ("train", "train_wav", "test")]
    proc = run_stklia("check_data", *map(str, dirs), cwd=tmp_path)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 4 and "train: 100%" in proc.stderr  # a progress bar per dir
    wav_seconds = sum(soundfile.info(line.split()[1]).duration
                      for line in (demo_root / "train_wav" / "wav.scp").read_text().splitlines())
    feats = load_data_dir(demo_root / "train")
    frames = sum(len(feats.load(utt)) for utt in feats.utts)  # kaldi-native-fbank's frames of the same audio
    assert lines[0] == (f"{dirs[0]}: 24 utterances, 6 speakers, {frames / 100 / 3600:.2f} hours, {frames} frames, "
                        "40 features per frame")
    assert lines[1] == f"{dirs[1]}: 24 utterances, 6 speakers, {wav_seconds / 3600:.2f} hours, {frames} frames"
    assert lines[3].startswith("total: 64 utterances, 16 speakers, ")

    segmented = segmented_copy(demo_root / "train_wav", tmp_path / "segmented")  # the same audio, as segments
    proc = run_stklia("check_data", str(segmented), "progress=false", cwd=tmp_path)
    assert proc.stdout.strip() == f"{segmented}: {lines[1].split(': ', 1)[1]}"


def _rewrite(path: Path, change: Callable[[list[str]], list[str]]) -> None:
    path.write_text("".join(f"{line}\n" for line in change(path.read_text().splitlines())))


def _write_wav(d: Path, samples: np.ndarray, rate: int = 16000, subtype: str = "PCM_16") -> None:
    """Replace the audio of the dir's first utterance."""
    soundfile.write(d / "first.wav", samples, rate, subtype=subtype)
    _rewrite(d / "wav.scp", lambda ls: [f"{ls[0].split()[0]} {d / 'first.wav'}", *ls[1:]])


def _prefix_an_utterance_of_the_last_speaker(d: Path) -> None:
    """Rename it "a<utt>", so that it sorts first, before the utterances of the other speakers."""
    spk, utt, *_ = (d / "spk2utt").read_text().splitlines()[-1].split()
    for name in ("utt2spk", "feats.scp"):
        _rewrite(d / name, lambda ls: sorted(f"a{line}" if line.split()[0] == utt else line for line in ls))
    _rewrite(d / "spk2utt", lambda ls: [line.replace(f" {utt}", f" a{utt}") for line in ls])


def _change_field(ls: list[str], line: int, field: int, change: Callable[[str], str]) -> list[str]:
    """The lines with field `field` of line `line` (1-based) changed."""
    fields = ls[line - 1].split()
    fields[field] = change(fields[field])
    return [*ls[: line - 1], " ".join(fields), *ls[line:]]


def _segments(line: int, field: int, change: Callable[[str], str]) -> Callable[[Path], None]:
    return lambda d: _rewrite(d / "segments", lambda ls: _change_field(ls, line, field, change))


def _swap(ls: list[str], i: int, j: int) -> list[str]:
    ls = list(ls)
    ls[i], ls[j] = ls[j], ls[i]
    return ls


# name -> (source dir, how to break it, file named, its line (None: no line), words of the error, extra arguments)
BREAKAGES = {
    "unsorted utt2spk": ("test", lambda d: _rewrite(d / "utt2spk", lambda ls: _swap(ls, 1, 2)), "utt2spk", 3,
                         "not sorted", []),
    "utterances not sorted by speaker": ("test", lambda d: _prefix_an_utterance_of_the_last_speaker(d), "utt2spk", 2,
                                         "sort with their speaker's", []),
    "no spk2utt": ("test", lambda d: (d / "spk2utt").unlink(), "spk2utt", None, "utt2spk_to_spk2utt.pl", []),
    "spk2utt order": ("test", lambda d: _rewrite(d / "spk2utt", lambda ls: [
        " ".join([ls[0].split()[0], *reversed(ls[0].split()[1:])]), *ls[1:]]), "spk2utt", 1, "in its order", []),
    "unknown utterance in text": ("test", lambda d: (d / "text").write_text("zzz hello\n"), "text", None,
                                  "'zzz' is not one of the dir's utterances", []),
    "no segments": ("segmented", lambda d: (d / "segments").write_text(""), "segments", None, "empty", []),
    "segment of an unknown recording": ("segmented", _segments(3, 1, lambda _: "nosuch"), "segments", 3,
                                        "recording 'nosuch' of segment", []),
    "segment ending before its start": ("segmented", _segments(2, 3, lambda _: "0.01"), "segments", 2,
                                        "ends at 0.01 s, not after its start", []),
    "segment time not a number": ("segmented", _segments(1, 2, lambda _: "1,5"), "segments", 1,
                                  "start time '1,5' is not a number", []),
    "segment past its recording": ("segmented", _segments(4, 3, lambda end: f"{float(end) + 0.6:.7f}"), "segments",
                                   4, "0.5 s or more past the end of recording", []),
    "segment after its recording": ("segmented", lambda d: (_segments(4, 2, lambda _: "100")(d),
                                                            _segments(4, 3, lambda _: "-1")(d)), "segments", 4,
                                    "starts at 100.0 s, not before the end of recording", []),
    "NaN features": ("test", lambda d: poison_features(d, load_data_dir(d).utts[2]), "feats.scp", 3,
                     "hold non-finite values (NaN or Inf), first at frame 3", []),
    "dimension": ("test", None, "feats.scp", 1, "have 40 dims per frame but the config says 30",
                  ["features_per_frame=30"]),
    "too short": ("test", None, "feats.scp", 1, "is too short", ["min_frames=100000"]),
    "NaN audio": ("train_wav", lambda d: _write_wav(d, np.array([0.1, math.nan] * 800, np.float32), subtype="FLOAT"),
                  "wav.scp", 1, "holds non-finite samples (NaN or Inf), first at sample 1", []),
    "sample rate": ("train_wav", lambda d: _write_wav(d, np.zeros(8000, np.int16), rate=8000), "wav.scp", 1,
                    "has sample rate 8000, expected 16000", []),
    "empty audio": ("train_wav", lambda d: _write_wav(d, np.zeros(0, np.int16)), "wav.scp", 1, "is empty", []),
}


@pytest.mark.parametrize("case", BREAKAGES)
def test_check_data_stops_at_the_first_problem_in_one_line(case: str, demo_root: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    source, breaks, filename, line, words, args = BREAKAGES[case]
    if source == "segmented":  # train_wav as segments of recordings that join two utterances each
        d = segmented_copy(demo_root / "train_wav", tmp_path / source)
    else:
        d = Path(shutil.copytree(demo_root / source, tmp_path / source))
    if breaks:
        breaks(d)
    monkeypatch.setattr(sys, "argv", ["check_data", str(d), "progress=false", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith(f"stklia: error: {d / filename}{f':{line}' if line else ''}: ")
    assert words in error, error
