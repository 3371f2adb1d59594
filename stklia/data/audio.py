"""Audio of a Kaldi wav.scp entry: a file path, a `command |` pipe, or a `file.ark:offset` wav-in-ark.

Samples are returned on the int16 scale (a 16-bit wav read as its integer values), which is
what Kaldi's compute-fbank-feats sees, so on-the-fly features equal Kaldi's offline ones.
"""

from __future__ import annotations

import io
import subprocess

import kaldiio
import numpy as np
import soundfile


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
    rxfilename = rxfilename.strip()
    if rxfilename.endswith("|"):
        proc = subprocess.run(rxfilename[:-1], shell=True, capture_output=True)
        if proc.returncode != 0:
            stderr = proc.stderr.decode(errors="replace").strip().splitlines()
            raise RuntimeError(f"command exited with status {proc.returncode}: {stderr[-1] if stderr else ''}")
        samples, rate = soundfile.read(io.BytesIO(proc.stdout), dtype="int16")
        return _int16_scale(samples), rate
    path, _, offset = rxfilename.rpartition(":")
    if path and offset.isdigit():  # wav-in-ark (e.g. from Kaldi's wav-copy)
        rate, samples = kaldiio.load_mat(rxfilename)
        return _int16_scale(np.asarray(samples)), rate
    samples, rate = soundfile.read(rxfilename, dtype="float32", always_2d=False)
    return _int16_scale(samples), rate
