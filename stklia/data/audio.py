"""Audio of a Kaldi wav.scp entry: a file path, a `command |` pipe, or a `file.ark:offset` wav-in-ark.

Samples are returned on the int16 scale (a 16-bit wav read as its integer values), which is
what Kaldi's compute-fbank-feats sees, so on-the-fly features equal Kaldi's offline ones.
`read_checked_audio` is the one reader the data sets, augmentation lists and the Python API use.
"""

from __future__ import annotations

import io
import os
import subprocess

import kaldiio
import numpy as np
import soundfile

from stklia.data.rxfilename import parse_rxfilename
from stklia.errors import InputError


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


def read_checked_audio(rxfilename: str, sample_rate: int, where: str | os.PathLike, line: int | None = None,
                       what: str = "audio") -> np.ndarray:
    """Int16-scaled samples of one entry at `sample_rate`; any problem is an InputError at `where`:`line`
    (the list or scp that names the entry), saying `what` could not be read."""
    try:
        samples, rate = read_audio(rxfilename)
    except Exception as err:  # soundfile, kaldiio and pipes raise many kinds for broken audio
        raise InputError(where, f"cannot read {what}: {err}", line) from err
    if rate != sample_rate:
        raise InputError(where, f"{what} has sample rate {rate}, expected {sample_rate}", line)
    if len(samples) == 0:
        raise InputError(where, f"{what} is empty", line)
    bad = first_non_finite(samples)  # float wav files can hold NaN or Inf
    if bad is not None:
        raise InputError(where, f"{what} holds non-finite samples (NaN or Inf), first at sample {bad}", line)
    return samples


def first_non_finite(x: np.ndarray) -> int | None:
    """The index of the first sample (or frame: row) of x holding NaN or Inf, or None. Always run on what is
    read: about 10 % of the time of reading it from the page cache (docs/benchmarks.md)."""
    finite = np.isfinite(x)
    if finite.all():
        return None
    return int(np.flatnonzero(~finite.reshape(len(x), -1).all(axis=1))[0])
