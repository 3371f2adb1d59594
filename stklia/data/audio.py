"""Audio of a Kaldi wav.scp entry: a file path, a `command |` pipe, or a `file.ark:offset` wav-in-ark.

Samples are returned on the int16 scale (a 16-bit wav read as its integer values), which is
what Kaldi's compute-fbank-feats sees, so on-the-fly features equal Kaldi's offline ones.
`Recording` is the one reader the data sets, augmentation lists and the Python API use: it reads
windows of a file (wav, FLAC, ...) without decoding the rest, so a training crop costs its own
length, not its utterance's. Pipes and wav-in-ark entries are decoded whole.
"""

from __future__ import annotations

import functools
import io
import os
import subprocess
import wave

import kaldiio
import numpy as np
import soundfile

from stklia.core.errors import InputError
from stklia.data.rxfilename import parse_rxfilename


def _int16_scale(samples: np.ndarray) -> np.ndarray:
    """The first channel, as float32 on the int16 scale."""
    if samples.ndim == 2:
        samples = samples[:, 0]
    if samples.dtype.kind == "f":
        return (samples * 32768).astype(np.float32)
    if samples.dtype == np.int32:  # kaldiio and soundfile give 32-bit PCM as int32
        return (samples / 65536).astype(np.float32)
    return samples.astype(np.float32)


def read_audio(rxfilename: str) -> tuple[np.ndarray, int]:
    """(samples, sample rate) of one wav.scp entry; raises OSError/ValueError/RuntimeError on bad audio."""
    rx = parse_rxfilename(rxfilename)
    if rx.kind == "pipe":
        proc = subprocess.run(rx.command, shell=True, capture_output=True)
        if proc.returncode != 0:
            stderr = proc.stderr.decode(errors="replace").strip().splitlines()
            raise RuntimeError(f"command exited with status {proc.returncode}: {stderr[-1] if stderr else ''}")
        samples, rate = soundfile.read(io.BytesIO(proc.stdout), dtype="int16")
        return _int16_scale(samples), rate
    if rx.kind == "ark":  # wav-in-ark (e.g. from Kaldi's wav-copy)
        rate, samples = kaldiio.load_mat(rxfilename.strip())
        return _int16_scale(np.asarray(samples)), rate
    if rx.kind == "stdin":
        raise ValueError("reading audio from stdin ('-') is not supported")
    samples, rate = soundfile.read(rx.path, dtype="float32", always_2d=False)
    return _int16_scale(samples), rate


@functools.lru_cache(maxsize=1 << 16)
def _wav16_layout(path: str, size: int, mtime_ns: int, inode: int) -> tuple[int, int, int, int] | None:
    """(sample rate, channels, offset of the samples, samples held) of a 16-bit PCM wav file as the standard
    library's wave module reads its header, or None for anything else (float, 24-bit, broken; before Python
    3.12, WAVE_FORMAT_EXTENSIBLE). Remembered per file version: an item's noise and impulse-response files recur."""
    try:
        with open(path, "rb") as file, wave.open(file) as wav:
            if wav.getsampwidth() != 2:
                return None
            channels = wav.getnchannels()
            start = file.tell()  # wave.open stops at the start of the samples
            held = (size - start) // (2 * channels)  # a truncated file holds fewer than its header says
            return wav.getframerate(), channels, start, min(wav.getnframes(), held)
    except (wave.Error, EOFError):
        return None


class _Wav16:
    """A 16-bit PCM wav file, its header read by the standard library's wave module (once per file), its samples
    by os.pread, which costs less than libsndfile per open and read (docs/benchmarks.md); that counts when a
    training item reads its crop and up to 8 noise and impulse-response windows. `open` gives None for other
    files, which soundfile reads."""

    def __init__(self, file: io.FileIO, layout: tuple[int, int, int, int]):
        self._file = file
        self.samplerate, self.channels, self._start, self.frames = layout

    @classmethod
    def open(cls, path: str) -> _Wav16 | None:
        file = open(path, "rb", buffering=0)  # noqa: SIM115 (closed by close())
        stat = os.fstat(file.fileno())
        layout = _wav16_layout(path, stat.st_size, stat.st_mtime_ns, stat.st_ino)
        if layout is None:
            file.close()
            return None
        return cls(file, layout)

    def read(self, first: int, last: int) -> np.ndarray:
        """Samples first..last-1 of the first channel, int16."""
        frame = 2 * self.channels
        data = os.pread(self._file.fileno(), (last - first) * frame, self._start + first * frame)
        return np.frombuffer(data, dtype="<i2")[:: self.channels]

    def close(self) -> None:
        self._file.close()


class _SoundFile:
    """Any file libsndfile reads (wav, FLAC, ...), int16 when its samples are."""

    def __init__(self, path: str):
        self._file = soundfile.SoundFile(path)
        self.samplerate, self.frames = self._file.samplerate, self._file.frames
        self._dtype = "int16" if self._file.subtype == "PCM_16" else "float32"

    def read(self, first: int, last: int) -> np.ndarray:
        """Samples first..last-1 of the first channel, int16 or float32 (-1..1)."""
        self._file.seek(first)
        samples = self._file.read(last - first, dtype=self._dtype)
        return samples if samples.ndim == 1 else samples[:, 0]

    def close(self) -> None:
        self._file.close()


def _open_file(path: str) -> _Wav16 | _SoundFile:
    return (path.lower().endswith(".wav") and _Wav16.open(path)) or _SoundFile(path)


class Recording:
    """One entry opened for reading: its length, and windows of its int16-scaled samples.

    Every problem is an InputError at `where`:`line` (the list or scp that names the entry), saying
    `what` could not be read.
    """

    def __init__(self, rxfilename: str, sample_rate: int, where: str | os.PathLike, line: int | None = None,
                 what: str = "audio"):
        self.where, self.line, self.what = where, line, what
        self._file: _Wav16 | _SoundFile | None = None
        self._samples: np.ndarray | None = None
        try:
            rx = parse_rxfilename(rxfilename)
            if rx.kind == "file":
                self._file = _open_file(str(rx.path))
                rate, self.num_samples = self._file.samplerate, self._file.frames
            else:
                self._samples, rate = read_audio(rxfilename)
                self.num_samples = len(self._samples)
        except Exception as err:  # soundfile, kaldiio and pipes raise many kinds for broken audio
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
        if self._samples is not None:
            samples = self._samples[first:last]
        else:
            try:
                samples = self._file.read(first, last)
            except Exception as err:
                raise self._error(err) from err
            if samples.dtype == np.int16:  # integers: nothing to check
                return samples
            samples = _int16_scale(samples)
        bad = first_non_finite(samples)
        if bad is not None:
            raise InputError(self.where, f"{self.what} holds non-finite samples (NaN or Inf), first at sample "
                             f"{first + bad}", self.line)
        return samples

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> Recording:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_checked_audio(rxfilename: str, sample_rate: int, where: str | os.PathLike, line: int | None = None,
                       what: str = "audio") -> np.ndarray:
    """All the int16-scaled samples of one entry at `sample_rate` (see Recording)."""
    with Recording(rxfilename, sample_rate, where, line, what) as recording:
        return recording.read()


def first_non_finite(x: np.ndarray) -> int | None:
    """The index of the first sample (or frame: row) of x holding NaN or Inf, or None. Always run on what is
    read, for little next to reading it (docs/benchmarks.md)."""
    finite = np.isfinite(x)
    if finite.all():
        return None
    return int(np.flatnonzero(~finite.reshape(len(x), -1).all(axis=1))[0])
