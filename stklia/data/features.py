"""Acoustic features computed on the fly from audio: Kaldi-compatible log-mel filterbanks.

Dithering is done here (not by kaldi-native-fbank) with the caller's random generator, so a
training item's features are a pure function of its crop seed and resumed runs stay exact.
"""

from __future__ import annotations

import kaldi_native_fbank as knf
import numpy as np


class Fbank:
    """Kaldi `compute-fbank-feats` (povey window, pre-emphasis 0.97, DC removal, snip edges).

    `dither` is the Kaldi dither amount, applied only when a random generator is given (training).
    """

    def __init__(self, sample_rate: int = 16000, num_mel_bins: int = 80, frame_length_ms: float = 25.0,
                 frame_shift_ms: float = 10.0, low_freq: float = 20.0, high_freq: float = 0.0,
                 dither: float = 1.0):
        self.sample_rate, self.num_mel_bins = sample_rate, num_mel_bins
        self.frame_length_ms, self.frame_shift_ms = frame_length_ms, frame_shift_ms
        self.low_freq, self.high_freq, self.dither = low_freq, high_freq, dither

    @property
    def dim(self) -> int:
        return self.num_mel_bins

    def _window_and_shift(self) -> tuple[int, int]:
        return tuple(round(ms * self.sample_rate / 1000) for ms in (self.frame_length_ms, self.frame_shift_ms))

    def num_samples(self, frames: int) -> int:
        """The number of samples that gives `frames` frames (snip edges: one window, then one shift each)."""
        window, shift = self._window_and_shift()
        return window + (frames - 1) * shift

    def num_frames(self, samples: int) -> int:
        """The number of frames of `samples` samples (snip edges: none shorter than one window)."""
        window, shift = self._window_and_shift()
        return 0 if samples < window else 1 + (samples - window) // shift

    def _options(self) -> knf.FbankOptions:
        opts = knf.FbankOptions()
        opts.frame_opts.samp_freq = self.sample_rate
        opts.frame_opts.frame_length_ms = self.frame_length_ms
        opts.frame_opts.frame_shift_ms = self.frame_shift_ms
        opts.frame_opts.dither = 0.0
        opts.mel_opts.num_bins = self.num_mel_bins
        opts.mel_opts.low_freq = self.low_freq
        opts.mel_opts.high_freq = self.high_freq
        return opts

    def __call__(self, samples: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """(frames, num_mel_bins) float32 features of int16-scaled samples at `sample_rate`.

        Audio shorter than one frame gives zero frames. Dither (Gaussian noise of standard
        deviation `dither` on the int16 scale) is added to the waveform when `rng` is given.
        """
        samples = np.asarray(samples, dtype=np.float32)
        if rng is not None and self.dither > 0:
            samples = samples + self.dither * rng.standard_normal(len(samples), dtype=np.float32)
        fbank = knf.OnlineFbank(self._options())
        fbank.accept_waveform(self.sample_rate, samples)
        fbank.input_finished()
        if fbank.num_frames_ready == 0:
            return np.zeros((0, self.num_mel_bins), dtype=np.float32)
        return np.stack([fbank.get_frame(i) for i in range(fbank.num_frames_ready)]).astype(np.float32)
