"""Online data augmentation of training items: speed perturbation, reverberation, additive noise
(on audio, before the features are computed) and SpecAugment masking (on the feature crop).

Every random choice is drawn from the item's own generator (seeded by its crop seed), so an
augmented batch is a pure function of (seed, step) and resumed runs stay exact. Each
augmentation draws its coin even when it is skipped, so the draws never shift.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
from scipy import signal

from stklia.data.audio import read_checked_audio
from stklia.data.kaldi import read_table
from stklia.errors import InputError


class AudioList:
    """Recordings listed in a Kaldi dir's wav.scp or a list file (`path` or `key wav.scp-entry` lines)."""

    def __init__(self, path: str | os.PathLike, sample_rate: int):
        path = Path(path)
        self.path = path / "wav.scp" if path.is_dir() else path
        self.sample_rate = sample_rate
        self.entries = [(fields[0] if len(fields) == 1 else " ".join(fields[1:]), lineno)
                        for lineno, fields in read_table(self.path, 1)]
        if not self.entries:
            raise InputError(self.path, "empty: no recordings")

    def __len__(self) -> int:
        return len(self.entries)

    def read(self, index: int) -> np.ndarray:
        rx, line = self.entries[index]
        return read_checked_audio(rx, self.sample_rate, self.path, line)


def _power(x: np.ndarray) -> float:
    return float(np.mean(np.square(x, dtype=np.float64))) + 1e-10


class SpeedPerturb:
    """Resample by a random factor of `factors` (sox `speed`: tempo and pitch change together).

    With `new_speakers`, each factor's utterances form new classes (WeSpeaker): the speaker
    labels are multiplied by 1 + len(factors).
    """

    def __init__(self, prob: float = 0.6, factors: Sequence[float] = (0.9, 1.1), new_speakers: bool = False):
        self.prob, self.factors, self.new_speakers = prob, list(factors), new_speakers

    @property
    def num_label_copies(self) -> int:
        return 1 + len(self.factors) if self.new_speakers else 1

    def choose(self, rng: np.random.Generator) -> int:
        """0 for no change, else 1 + the index of the chosen factor."""
        coin, pick = rng.random(), int(rng.integers(len(self.factors)))
        return 1 + pick if coin < self.prob else 0

    def apply(self, samples: np.ndarray, choice: int) -> np.ndarray:
        if choice == 0:
            return samples
        ratio = Fraction(self.factors[choice - 1]).limit_denominator(100)
        return signal.resample_poly(samples, ratio.denominator, ratio.numerator).astype(np.float32)


class Reverb:
    """Convolution with a room impulse response from `rirs`, aligned on its direct path, power kept."""

    def __init__(self, rirs: str | os.PathLike, prob: float = 0.2, sample_rate: int = 16000):
        self.rirs, self.prob = AudioList(rirs, sample_rate), prob

    def __call__(self, samples: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        coin, index = rng.random(), int(rng.integers(len(self.rirs)))
        if coin >= self.prob:
            return samples
        rir = self.rirs.read(index).astype(np.float64)
        rir /= np.linalg.norm(rir)
        delay = int(np.argmax(np.abs(rir)))
        wet = signal.fftconvolve(samples, rir)[delay:delay + len(samples)]
        return (wet * np.sqrt(_power(samples) / _power(wet))).astype(np.float32)


class AddNoise:
    """Adds `count` recordings of one category (chosen uniformly) at a random SNR of its range.

    `sources` maps a category (e.g. MUSAN's noise, music, babble) to {list: Kaldi dir or list file,
    snr: [low, high] dB, count: [low, high] recordings summed (default [1, 1])}. A noise shorter
    than the utterance is repeated; a longer one is cut at a random offset.
    """

    def __init__(self, sources: Mapping[str, Mapping], prob: float = 0.6, sample_rate: int = 16000):
        self.prob = prob
        self.sources = [(AudioList(s["list"], sample_rate), tuple(s["snr"]), tuple(s.get("count", (1, 1))))
                        for s in sources.values()]

    def __call__(self, samples: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.random() >= self.prob:
            return samples
        noises, (low, high), (min_count, max_count) = self.sources[int(rng.integers(len(self.sources)))]
        out = samples.astype(np.float64)
        speech_power = _power(samples)
        for _ in range(int(rng.integers(min_count, max_count + 1))):
            noise = noises.read(int(rng.integers(len(noises))))
            start = int(rng.integers(max(len(noise) - len(samples), 0) + 1))
            noise = np.resize(noise[start:], len(samples)).astype(np.float64)
            snr = rng.uniform(low, high)
            out += noise * np.sqrt(speech_power / (_power(noise) * 10 ** (snr / 10)))
        return out.astype(np.float32)


class SpecAugment:
    """Zeroes random bands of frames and of frequency bins of a (normalised) feature crop."""

    def __init__(self, prob: float = 0.6, num_time_masks: int = 1, max_time: int = 10, num_freq_masks: int = 1,
                 max_freq: int = 8):
        self.prob = prob
        self.num_time_masks, self.max_time = num_time_masks, max_time
        self.num_freq_masks, self.max_freq = num_freq_masks, max_freq

    def __call__(self, feats: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.random() >= self.prob:
            return feats
        feats = feats.copy()
        masks = ((0, self.num_time_masks, self.max_time), (1, self.num_freq_masks, self.max_freq))
        for axis, count, max_width in masks:
            size = feats.shape[axis]
            for _ in range(count):
                width = int(rng.integers(0, min(max_width, size) + 1))
                start = int(rng.integers(0, size - width + 1))
                index = [slice(None), slice(None)]
                index[axis] = slice(start, start + width)
                feats[tuple(index)] = 0
        return feats


class Augment:
    """The augmentation of one training item: speed, then reverberation and noise on the audio crop of
    audio utterances (feats.scp utterances have no audio to change), then SpecAugment on the feature crop."""

    def __init__(self, speed: SpeedPerturb | None = None, reverb: Reverb | None = None,
                 noise: AddNoise | None = None, specaugment: SpecAugment | None = None):
        self.speed, self.reverb, self.noise, self.specaugment = speed, reverb, noise, specaugment

    @property
    def num_label_copies(self) -> int:
        """How many classes each speaker becomes (speed perturbation as new speakers)."""
        return self.speed.num_label_copies if self.speed else 1

    def choose_speed(self, rng: np.random.Generator) -> int:
        return self.speed.choose(rng) if self.speed else 0

    def perturb_speed(self, samples: np.ndarray, speed: int) -> np.ndarray:
        return self.speed.apply(samples, speed) if self.speed else samples

    def corrupt(self, samples: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Reverberation, then additive noise (each with its probability)."""
        for transform in (self.reverb, self.noise):
            if transform:
                samples = transform(samples, rng)
        return samples

    def spectral(self, feats: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.specaugment(feats, rng) if self.specaugment else feats
