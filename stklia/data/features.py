"""Acoustic features computed on the fly from audio: Kaldi-compatible log-mel filterbanks, in torch.

One batched implementation serves every place features are computed: the data loader's workers (a batch's
crops, or one utterance, on the CPU) and the training device (a whole batch of crops, see
stklia.data.frontend). It follows Kaldi's compute-fbank-feats step by step, as kaldi-native-fbank does
(tests/test_features.py checks it against kaldi-native-fbank), with the options of torchaudio's
compliance.kaldi.fbank that the published models of other toolkits were trained with (window type, sample scale,
DC removal, pre-emphasis: docs/pretrained.md#front-ends). `SpeechBrainFbank` is SpeechBrain's own front end
(a centred STFT, no pre-emphasis, HTK mel filters in decibels), which the same power-spectrum code serves.
Dither noise is a window of a fixed table of Gaussian noise at an offset given by the item's own seed, so a
training item's features are a pure function of its crop seed, on any device.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Hashable, Sequence

import numpy as np
import torch

FLT_EPSILON = float(np.finfo(np.float32).eps)  # Kaldi's floor of the mel energies before the log
DITHER_TABLE = 1 << 20  # samples of Gaussian noise the dither windows are cut from (65 s at 16 kHz)
INT16_TO_UNIT = 1 / 32768  # sample_scale of front ends that read audio as floats in [-1, 1] (torchaudio, soundfile)


def kaldi_window(window_type: str, size: int) -> np.ndarray:
    """Kaldi's (and torchaudio.compliance.kaldi's) analysis windows, symmetric (periodic=False)."""
    n = np.arange(size)
    hann = 0.5 - 0.5 * np.cos(2 * math.pi * n / (size - 1))
    windows = {"povey": lambda: hann**0.85, "hanning": lambda: hann,
               "hamming": lambda: 0.54 - 0.46 * np.cos(2 * math.pi * n / (size - 1)),
               "rectangular": lambda: np.ones(size)}
    if window_type not in windows:
        raise ValueError(f"window_type '{window_type}' is not one of {', '.join(windows)}")
    return windows[window_type]()


def mel_scale(freq: np.ndarray) -> np.ndarray:
    return 1127.0 * np.log(1.0 + freq / 700.0)


def kaldi_mel_banks(num_bins: int, padded_window: int, sample_rate: int, low_freq: float,
                    high_freq: float) -> np.ndarray:
    """(padded_window // 2, num_bins) triangular filters, equally spaced on the mel scale, as Kaldi's MelBanks
    (the Nyquist bin gets no weight; high_freq <= 0 is an offset from the Nyquist frequency)."""
    nyquist = sample_rate / 2
    high = high_freq if high_freq > 0 else nyquist + high_freq
    if not 0 <= low_freq < high <= nyquist:
        raise ValueError(f"bad mel band edges: low_freq={low_freq}, high_freq={high_freq} at {sample_rate} Hz")
    mel_low, mel_high = mel_scale(np.float64(low_freq)), mel_scale(np.float64(high))
    delta = (mel_high - mel_low) / (num_bins + 1)
    left = mel_low + delta * np.arange(num_bins)[None, :]
    center, right = left + delta, left + 2 * delta
    mel = mel_scale(np.arange(padded_window // 2) * sample_rate / padded_window)[:, None]
    rising, falling = (mel - left) / (center - left), (right - mel) / (right - center)
    weights = np.where(mel <= center, rising, falling)
    return np.where((mel > left) & (mel < right), weights, 0.0)


def subtract_mean(feats: torch.Tensor) -> torch.Tensor:
    """Per-utterance mean normalisation over the frames (axis -2) of (..., frames, dims) features, as Kaldi's
    apply-cmvn --norm-vars=false: of a torch tensor (a batch), or of a numpy array (features read from
    feats.scp), normalised by numpy so that they keep the values they always had."""
    if not torch.jit.is_scripting():  # TorchScript (export) compiles the tensor path only
        if isinstance(feats, np.ndarray):
            return feats - feats.mean(axis=-2, keepdims=True)
    return feats - feats.mean(dim=-2, keepdim=True)


class DeviceCopies(dict):
    """Constant tensors copied once to each device (and dtype) they are used with. Pickled empty: a loader
    worker gets the CPU originals only, never a copy of the training device's."""

    def __reduce__(self) -> tuple:
        return type(self), ()

    def of(self, key: Hashable, tensor: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """`tensor` on `like`'s device, in its dtype."""
        key = (key, like.device, like.dtype)
        if key not in self:
            self[key] = tensor.to(like)
        return self[key]


def interleaved_banks(banks: np.ndarray) -> torch.Tensor:
    """(bins, num_mel_bins) filters as the matrix `mel_energies` multiplies: each row twice, for the real and the
    imaginary part of the spectrum."""
    return torch.from_numpy(banks.repeat(2, axis=0).astype(np.float32))


def mel_energies(frames: torch.Tensor, mel_banks: torch.Tensor) -> torch.Tensor:
    """Mel energies of the power spectrum re^2 + im^2 of windowed frames: the squares of the interleaved real and
    imaginary parts times the banks' rows doubled (interleaved_banks), one contiguous operation (squaring the
    strided parts apart costs more)."""
    squares = torch.view_as_real(torch.fft.rfft(frames)).square_().flatten(-2)
    return squares @ mel_banks


class LogMelFeatures:
    """What every front end shares: (batch, frames, num_mel_bins) log mel features of int16-scaled samples at
    `sample_rate` (`batch`), and of one recording (`__call__`)."""

    sample_rate: int
    num_mel_bins: int

    @property
    def dim(self) -> int:
        return self.num_mel_bins

    def batch(self, samples: torch.Tensor, dither_seeds: Sequence[int] | None = None) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, samples: np.ndarray, dither_seed: int | None = None) -> np.ndarray:
        """(frames, num_mel_bins) float32 features of one recording's int16-scaled samples; audio shorter than
        one frame gives zero frames. Dithered when a seed is given (and the front end dithers)."""
        x = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))[None]
        with torch.inference_mode():
            return self.batch(x, None if dither_seed is None else [dither_seed])[0].numpy()


class Fbank(LogMelFeatures):
    """Kaldi `compute-fbank-feats` (by default: povey window, pre-emphasis 0.97, DC removal, snip edges, power
    spectrum, log of mel energies floored at FLT_EPSILON).

    `dither` is the Kaldi dither amount: Gaussian noise of that standard deviation (on the scale the fbank sees,
    after `sample_scale`) added to the waveform, only when a dither seed is given (training).
    `window_type` (povey, hamming, hanning, rectangular), `remove_dc_offset` and `preemphasis` are Kaldi's and
    torchaudio's options of those names; `sample_scale` multiplies the int16-scaled samples stklia reads (1: Kaldi
    and WeSpeaker; INT16_TO_UNIT: floats in [-1, 1], as 3D-Speaker reads audio), which moves the log energies by a
    constant except where the FLT_EPSILON floor applies.
    """

    def __init__(self, sample_rate: int = 16000, num_mel_bins: int = 80, frame_length_ms: float = 25.0,
                 frame_shift_ms: float = 10.0, low_freq: float = 20.0, high_freq: float = 0.0,
                 dither: float = 1.0, window_type: str = "povey", sample_scale: float = 1.0,
                 remove_dc_offset: bool = True, preemphasis: float = 0.97):
        self.sample_rate, self.num_mel_bins = sample_rate, num_mel_bins
        self.frame_length_ms, self.frame_shift_ms = frame_length_ms, frame_shift_ms
        self.low_freq, self.high_freq, self.dither = low_freq, high_freq, dither
        self.sample_scale, self.remove_dc_offset, self.preemphasis = sample_scale, remove_dc_offset, preemphasis
        self.window_size, self.window_shift = (round(ms * sample_rate / 1000) for ms in (frame_length_ms,
                                                                                           frame_shift_ms))
        self.padded_window = 1 << (self.window_size - 1).bit_length()
        window = kaldi_window(window_type, self.window_size)
        # The signal is pre-emphasised once, not frame by frame (see `batch`): a frame's first sample then needs
        # fixing, unless the window is zero there (povey).
        self._fix_first_sample = bool(window[0] != 0 and preemphasis != 0)
        # zeros up to the FFT's size: frames are cut padded_window long and need no padding copy for the FFT
        self._window = torch.from_numpy(np.pad(window, (0, self.padded_window - self.window_size)).astype(np.float32))
        banks = kaldi_mel_banks(num_mel_bins, self.padded_window, sample_rate, low_freq, high_freq)
        self._mel_banks = interleaved_banks(np.pad(banks, ((0, 1), (0, 0))))  # + Nyquist: 0
        self._copies = DeviceCopies()

    def num_samples(self, frames: int) -> int:
        """The number of samples that gives `frames` frames (snip edges: one window, then one shift each)."""
        return self.window_size + (frames - 1) * self.window_shift

    def num_frames(self, samples: int) -> int:
        """The number of frames of `samples` samples (snip edges: none shorter than one window)."""
        return 0 if samples < self.window_size else 1 + (samples - self.window_size) // self.window_shift

    def batch(self, samples: torch.Tensor, dither_seeds: Sequence[int] | None = None) -> torch.Tensor:
        """(batch, frames, num_mel_bins) features of a (batch, samples) float32 tensor of int16-scaled audio at
        `sample_rate`, on the tensor's device. Row b is dithered with the noise of dither_seeds[b] (`dither_noise`)."""
        if self.sample_scale != 1:
            samples = samples * self.sample_scale
        if dither_seeds is not None and self.dither > 0:
            noise = dither_noise(dither_seeds, samples.shape[1], samples, self._copies)
            samples = samples.add(noise, alpha=self.dither)
        if samples.shape[1] < self.window_size:
            return samples.new_zeros((samples.shape[0], 0, self.num_mel_bins))
        window = self._copies.of("window", self._window, samples)
        mel_banks = self._copies.of("mel banks", self._mel_banks, samples)
        # Per frame, Kaldi removes the mean m, then pre-emphasises with p: y[i] = x[i] - p x[i-1] - (1 - p) m for
        # i > 0, y[0] = (1 - p) (x[0] - m). The signal is pre-emphasised once instead of every (overlapping) frame,
        # and y[0] set apart where the window is not 0 there. Frames are cut padded_window long, the window's zeros
        # past window_size pad them for the FFT (rfft's own padding is a copy as costly as the FFT itself on a CPU).
        p = self.preemphasis
        padding = samples.new_zeros((samples.shape[0], self.padded_window - self.window_size))  # shape: a dynamic
        # batch in an exported graph (len() would fix it)
        emphasised = torch.cat([samples[:, :1], samples[:, 1:] - p * samples[:, :-1], padding], dim=1)
        frames = emphasised.unfold(1, self.padded_window, self.window_shift)
        means = samples.unfold(1, self.window_size, self.window_shift).mean(dim=2, keepdim=True) \
            if self.remove_dc_offset else None
        if means is not None and p != 1:
            frames = frames - (1 - p) * means
        else:
            frames = frames.clone()  # unfold's view of `emphasised`: the window is applied in place
        if self._fix_first_sample:
            first = samples[:, : frames.shape[1] * self.window_shift : self.window_shift][..., None]
            frames[..., :1] = (1 - p) * (first if means is None else first - means)
        return mel_energies(frames.mul_(window), mel_banks).clamp_min_(FLT_EPSILON).log_()


class SpeechBrainFbank(LogMelFeatures):
    """SpeechBrain's `Fbank` (speechbrain.lobes.features) on audio in [-1, 1]: frames centred on every hop
    (zero padding of n_fft / 2 at both ends), a periodic Hamming window, no DC removal, pre-emphasis or dither,
    the power spectrum through SpeechBrain's triangular filters (HTK mel scale, each filter symmetric in Hz),
    10 log10 of the energies floored at 1e-10, and each utterance's values floored `top_db` below its maximum.
    """

    def __init__(self, sample_rate: int = 16000, num_mel_bins: int = 80, n_fft: int = 400,
                 frame_length_ms: float = 25.0, frame_shift_ms: float = 10.0, f_min: float = 0.0,
                 f_max: float | None = None, top_db: float = 80.0, sample_scale: float = INT16_TO_UNIT):
        self.sample_rate, self.num_mel_bins, self.n_fft, self.top_db = sample_rate, num_mel_bins, n_fft, top_db
        self.sample_scale = sample_scale
        self.window_size, self.window_shift = (round(ms * sample_rate / 1000) for ms in (frame_length_ms,
                                                                                           frame_shift_ms))
        window = torch.hamming_window(self.window_size)  # periodic, as torch.stft's callers get it by default
        left = (n_fft - self.window_size) // 2  # torch.stft centres a shorter window in the FFT's frame
        self._window = torch.nn.functional.pad(window, (left, n_fft - self.window_size - left))
        self._mel_banks = interleaved_banks(speechbrain_mel_banks(num_mel_bins, n_fft, sample_rate, f_min,
                                                                  sample_rate // 2 if f_max is None else f_max))
        self._copies = DeviceCopies()

    def num_samples(self, frames: int) -> int:
        """The number of samples that gives `frames` frames (one frame centred on every hop)."""
        return (frames - 1) * self.window_shift

    def num_frames(self, samples: int) -> int:
        return 0 if samples == 0 else 1 + samples // self.window_shift

    def batch(self, samples: torch.Tensor, dither_seeds: Sequence[int] | None = None) -> torch.Tensor:
        """(batch, frames, num_mel_bins) features of a (batch, samples) float32 tensor of int16-scaled audio; no
        dither (SpeechBrain has none), the seeds are ignored."""
        if samples.shape[1] == 0:
            return samples.new_zeros((samples.shape[0], 0, self.num_mel_bins))
        half = self.n_fft // 2
        padded = torch.nn.functional.pad(samples * self.sample_scale, (half, half))
        frames = padded.unfold(1, self.n_fft, self.window_shift)
        window = self._copies.of("window", self._window, samples)
        mel_banks = self._copies.of("mel banks", self._mel_banks, samples)
        db = 10 * mel_energies(frames * window, mel_banks).clamp_min_(1e-10).log10_()
        floor = db.amax(dim=(-2, -1), keepdim=True) - self.top_db  # per utterance (row)
        return torch.maximum(db, floor)


def speechbrain_mel_banks(num_bins: int, n_fft: int, sample_rate: int, f_min: float, f_max: float) -> np.ndarray:
    """(n_fft // 2 + 1, num_bins) filters of SpeechBrain's Filterbank (filter_shape triangular), in float32 torch
    as it computes them: centres equally spaced on the HTK mel scale, filter i a triangle of half-width the
    distance from centre i - 1 to centre i on both sides."""
    def to_mel(hz: float) -> float:
        return 2595 * math.log10(1 + hz / 700)

    mel = torch.linspace(to_mel(f_min), to_mel(f_max), num_bins + 2)
    hz = 700 * (10 ** (mel / 2595) - 1)
    band, central = (hz[1:] - hz[:-1])[:-1], hz[1:-1]
    freqs = torch.linspace(0, sample_rate // 2, n_fft // 2 + 1)
    slope = (freqs[None, :] - central[:, None]) / band[:, None]
    return torch.clamp(torch.minimum(slope + 1.0, 1.0 - slope), min=0).T.numpy()


@functools.cache
def _gaussian_table(size: int) -> torch.Tensor:
    return torch.randn(size, generator=torch.Generator().manual_seed(0))


def dither_noise(seeds: Sequence[int], length: int, like: torch.Tensor, copies: DeviceCopies) -> torch.Tensor:
    """(len(seeds), length) standard normal noise on `like`'s device: row b is the window of a fixed table of
    Gaussian noise (DITHER_TABLE samples, or a power of two at least twice `length`) at an offset given by
    seeds[b]. The same item gets the same noise in any batch and on any device, for the cost of a copy, where a
    generator seeded per item would cost as much as a good part of the fbank on a CPU and a kernel launch per
    item on a GPU (docs/benchmarks.md). Windows of different items may overlap, shifted, which dithering (it keeps
    digital silence off log 0) does not mind."""
    size = max(DITHER_TABLE, 1 << (2 * length - 1).bit_length())
    table = copies.of(("dither", size), _gaussian_table(size), like)
    starts = [seed % (size - length + 1) for seed in seeds]
    rows = [table[start : start + length] for start in starts]
    return torch.stack(rows) if rows else like.new_zeros((0, length))
