"""Audio of a Kaldi wav.scp entry: a file path, a `command |` pipe, or an `archive.ark:offset` member (a wav-in-ark,
or a FLAC one: stklia.data.archives), optionally a segment of it (a line of a Kaldi `segments` file).

Samples are returned on the int16 scale (a 16-bit wav read as its integer values), which is
what Kaldi's compute-fbank-feats sees, so on-the-fly features equal Kaldi's offline ones.
`Recording` is the one reader the data sets, augmentation lists and the Python API use: it reads
windows of a file or of an archive's member (wav, FLAC, ...) without decoding the rest, so a training crop costs
its own length, not its utterance's (nor its recording's, for a segment). Pipes are decoded whole.
"""

from __future__ import annotations

import functools
import io
import os
import subprocess
import wave
from dataclasses import dataclass

import numpy as np
import soundfile

from stklia.core.errors import InputError
from stklia.data.archives import Member, MemberFile, locate_member
from stklia.data.rxfilename import RxFilename, parse_rxfilename

# How far past its recording's end a segment may reach and be cut at the end, in seconds: Kaldi's extract-segments
# default (--max-overshoot), so that the times of segments rounded up to the recording's end stay valid.
MAX_OVERSHOOT_S = 0.5


@dataclass(frozen=True)
class Segment:
    """A line of a Kaldi `segments` file: samples of recording `recording` from `start` to `end` seconds (-1: its
    end), of channel `channel` (None: the first). A lhotse cut or supervision gives its `duration` too."""

    recording: str
    start: float
    end: float
    channel: int | None = None
    duration: float | None = None

    def samples(self, rate: int, num_samples: int) -> tuple[int, int]:
        """The recording's samples first..last-1 that the segment holds, as Kaldi's extract-segments computes them
        (seconds x rate, truncated; an end at most MAX_OVERSHOOT_S past the recording's is cut to it), or for
        lhotse's, as lhotse does (its compute_num_samples: the start and the duration x rate, rounded); a segment
        that lies outside its recording is a ValueError."""
        if self.duration is not None:
            first = round(self.start * rate)
            last = first + round(self.duration * rate)
        else:
            first = int(self.start * rate)
            last = num_samples if self.end == -1 else int(self.end * rate)
        length = f"{num_samples / rate:.3f} s"
        if first >= num_samples:
            raise ValueError(f"segment starts at {self.start} s, not before the end of recording '{self.recording}' "
                             f"({length})")
        if last > num_samples:
            if last >= num_samples + int(MAX_OVERSHOOT_S * rate):
                raise ValueError(f"segment ends at {self.end} s, {MAX_OVERSHOOT_S} s or more past the end of recording "
                                 f"'{self.recording}' ({length})")
            last = num_samples
        return first, last

    def __str__(self) -> str:
        channel = "" if self.channel is None else f" {self.channel}"
        return f"{self.recording} {self.start} {self.end}{channel}"


def int16_scale(samples: np.ndarray, channel: int = 0) -> np.ndarray:
    """One channel, as float32 on the int16 scale."""
    if samples.ndim == 2:
        samples = samples[:, _checked_channel(channel, samples.shape[1])]
    if samples.dtype.kind == "f":
        return (samples * 32768).astype(np.float32)
    if samples.dtype == np.int32:  # kaldiio and soundfile give 32-bit PCM as int32
        return (samples / 65536).astype(np.float32)
    return samples.astype(np.float32)


def _checked_channel(channel: int, channels: int) -> int:
    if channel >= channels:
        raise ValueError(f"has no channel {channel} (it has {channels})")
    return channel


def _decode_pipe(command: str, channel: int = 0) -> tuple[np.ndarray, int]:
    """(samples of a channel, sample rate) of the audio a `command |` entry writes."""
    proc = subprocess.run(command, shell=True, capture_output=True)
    if proc.returncode != 0:
        stderr = proc.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"command exited with status {proc.returncode}: {stderr[-1] if stderr else ''}")
    samples, rate = soundfile.read(io.BytesIO(proc.stdout), dtype="int16")
    return int16_scale(samples, channel), rate


def read_audio(rxfilename: str) -> tuple[np.ndarray, int]:
    """(samples, sample rate) of one wav.scp entry, whole; raises OSError/ValueError/RuntimeError on bad audio."""
    rx = parse_rxfilename(rxfilename)
    if rx.kind == "pipe":
        return _decode_pipe(rx.command)
    file = _open_file(rx)
    try:
        return int16_scale(file.read(0, file.frames)), file.samplerate
    finally:
        file.close()


def _read_wav16_layout(file: io.RawIOBase, size: int) -> tuple[int, int, int, int] | None:
    """(sample rate, channels, offset of the samples, samples held) of a 16-bit PCM wav file of `size` bytes as the
    standard library's wave module reads its header, or None for anything else (float, 24-bit, broken; before
    Python 3.12, WAVE_FORMAT_EXTENSIBLE)."""
    try:
        with wave.open(file) as wav:
            if wav.getsampwidth() != 2:
                return None
            channels = wav.getnchannels()
            start = file.tell()  # wave.open stops at the start of the samples
            held = (size - start) // (2 * channels)  # a truncated file holds fewer than its header says
            return wav.getframerate(), channels, start, min(wav.getnframes(), held)
    except (wave.Error, EOFError):
        return None


@functools.lru_cache(maxsize=1 << 16)
def _wav16_layout(path: str, size: int, mtime_ns: int, inode: int) -> tuple[int, int, int, int] | None:
    """_read_wav16_layout of a file, remembered per file version: an item's noise and impulse-response files
    recur."""
    with open(path, "rb") as file:
        return _read_wav16_layout(file, size)


class _Wav16:
    """A 16-bit PCM wav file (or an archive's wav member), its header read by the standard library's wave module
    (once per file), its samples by os.pread, which costs less than libsndfile per open and read
    (docs/benchmarks.md); that counts when a training item reads its crop and up to 8 noise and impulse-response
    windows. `open` gives None for other files, which soundfile reads."""

    def __init__(self, fd: int, layout: tuple[int, int, int, int], base: int = 0, file: io.FileIO | None = None):
        self._fd, self._file, self._base = fd, file, base  # _file: the file to close (None: an archive's handle)
        self.samplerate, self.channels, self._start, self.frames = layout
        self.channel = 0

    @classmethod
    def open(cls, path: str) -> _Wav16 | None:
        file = open(path, "rb", buffering=0)  # noqa: SIM115 (closed by close())
        stat = os.fstat(file.fileno())
        layout = _wav16_layout(path, stat.st_size, stat.st_mtime_ns, stat.st_ino)
        if layout is None:
            file.close()
            return None
        return cls(file.fileno(), layout, file=file)

    @classmethod
    def of_member(cls, member: Member) -> _Wav16 | None:
        layout = _read_wav16_layout(MemberFile(member), member.end - member.start)
        return None if layout is None else cls(member.fd, layout, base=member.start)

    def read(self, first: int, last: int) -> np.ndarray:
        """Samples first..last-1 of the channel, int16."""
        frame = 2 * self.channels
        data = os.pread(self._fd, (last - first) * frame, self._base + self._start + first * frame)
        return np.frombuffer(data, dtype="<i2")[self.channel :: self.channels]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class _SoundFile:
    """Any file libsndfile reads (wav, FLAC, ...; a path or a file object), int16 when its samples are."""

    def __init__(self, file: str | io.RawIOBase):
        self._file = soundfile.SoundFile(file)
        self.samplerate, self.frames, self.channels = self._file.samplerate, self._file.frames, self._file.channels
        self._dtype = "int16" if self._file.subtype == "PCM_16" else "float32"
        self.channel = 0

    def read(self, first: int, last: int) -> np.ndarray:
        """Samples first..last-1 of the channel, int16 or float32 (-1..1)."""
        self._file.seek(first)
        samples = self._file.read(last - first, dtype=self._dtype)
        return samples if samples.ndim == 1 else samples[:, self.channel]

    def close(self) -> None:
        self._file.close()


def _open_file(rx: RxFilename) -> _Wav16 | _SoundFile:
    """A file entry or an archive's member, opened to read windows of it."""
    if rx.kind == "ark":
        if rx.sliced:
            raise ValueError("a `[...]` range selects rows of a matrix: an audio entry cannot have one")
        member = locate_member(str(rx.path), rx.offset)
        return (member.head[:4] == b"RIFF" and _Wav16.of_member(member)) or _SoundFile(MemberFile(member))
    if rx.kind == "stdin":
        raise ValueError("reading audio from stdin ('-') is not supported")
    path = str(rx.path)
    return (path.lower().endswith(".wav") and _Wav16.open(path)) or _SoundFile(path)


class Recording:
    """One entry opened for reading (or a segment of it): its length, and windows of its int16-scaled samples.

    Every problem is an InputError at `where`:`line` (the list, scp or segments file that names the entry),
    saying `what` could not be read.
    """

    def __init__(self, rxfilename: str, sample_rate: int, where: str | os.PathLike, line: int | None = None,
                 what: str = "audio", segment: Segment | None = None):
        self.where, self.line, self.what = where, line, what
        self._file: _Wav16 | _SoundFile | None = None
        self._samples: np.ndarray | None = None
        self._first = 0  # the first sample of the segment in the recording
        channel = 0 if segment is None or segment.channel is None else segment.channel
        try:
            rx = parse_rxfilename(rxfilename)
            if rx.kind == "pipe":
                self._samples, rate = _decode_pipe(rx.command, channel)
                self.num_samples = len(self._samples)
            else:
                self._file = _open_file(rx)
                self._file.channel = _checked_channel(channel, self._file.channels)
                rate, self.num_samples = self._file.samplerate, self._file.frames
            if segment is not None:
                self._first, last = segment.samples(rate, self.num_samples)
                self.num_samples = last - self._first
        except Exception as err:  # soundfile, archives, segments and pipes raise many kinds for broken audio
            self.close()
            raise self._error(err) from err
        if rate != sample_rate or self.num_samples == 0:
            self.close()
            problem = f"has sample rate {rate}, expected {sample_rate}" if rate != sample_rate else "is empty"
            raise InputError(where, f"{what} {problem}", line)

    def _error(self, err: Exception) -> InputError:
        return InputError(self.where, f"cannot read {self.what}: {err}", self.line)

    def read(self, start: int = 0, stop: int | None = None, keep_int16: bool = False) -> np.ndarray:
        """Float32 samples start..stop-1 (default: to the end); zeros where the window is outside the recording.
        With `keep_int16`, the samples of 16-bit files stay int16 (exact, and half the bytes for a loader worker
        to hand over). Samples that are NaN or Inf (float wav files can hold them) are an InputError."""
        stop = self.num_samples if stop is None else stop
        first, last = max(start, 0), min(stop, self.num_samples)
        if first == start and last == stop:
            samples = self._read(first, last)
        else:
            inside = self._read(first, last) if last > first else np.zeros(0, np.int16)
            samples = np.zeros(stop - start, dtype=inside.dtype)
            samples[first - start : first - start + len(inside)] = inside
        return samples.astype(np.float32) if samples.dtype == np.int16 and not keep_int16 else samples

    def _read(self, first: int, last: int) -> np.ndarray:
        """Samples first..last-1, int16 if the file's are, else float32 on the int16 scale."""
        first, last = first + self._first, last + self._first
        if self._samples is not None:
            samples = self._samples[first:last]
        else:
            try:
                samples = self._file.read(first, last)
            except Exception as err:
                raise self._error(err) from err
            if samples.dtype == np.int16:  # integers: nothing to check
                return samples
            samples = int16_scale(samples)
        bad = first_non_finite(samples)
        if bad is not None:
            raise InputError(self.where, f"{self.what} holds non-finite samples (NaN or Inf), first at sample "
                             f"{first - self._first + bad}", self.line)
        return samples

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> Recording:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_checked_audio(rxfilename: str, sample_rate: int, where: str | os.PathLike, line: int | None = None,
                       what: str = "audio", segment: Segment | None = None) -> np.ndarray:
    """All the int16-scaled samples of one entry (or segment) at `sample_rate` (see Recording)."""
    with Recording(rxfilename, sample_rate, where, line, what, segment) as recording:
        return recording.read()


def first_non_finite(x: np.ndarray) -> int | None:
    """The index of the first sample (or frame: row) of x holding NaN or Inf, or None. Always run on what is
    read, for little next to reading it (docs/benchmarks.md)."""
    finite = np.isfinite(x)
    if finite.all():
        return None
    return int(np.flatnonzero(~finite.reshape(len(x), -1).all(axis=1))[0])
