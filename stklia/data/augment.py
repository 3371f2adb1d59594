"""Online data augmentation of training items: speed perturbation, reverberation, additive noise
(on the audio crop, before the features are computed) and SpecAugment masking (on the feature crop).

Each augmentation comes in two halves. `draw` makes the random choices of one item with the item's
own generator (seeded by its crop seed) and reads what they need (a room impulse response, windows of
noise recordings); the data loader's workers run it. `apply` carries the choices out on a batch of
torch tensors, on whatever device the batch is: in a worker (the CPU path) or on the training device
(stklia.data.frontend). Either way an augmented batch is a pure function of (seed, step), so resumed runs
stay exact. Each augmentation draws its coin even when it is skipped, so the draws never shift.
`__call__(x, rng)` does both halves for one whole signal.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.fft import next_fast_len

from stklia.core.errors import InputError
from stklia.data.audio import Recording, read_checked_audio
from stklia.data.entries import read_audio_entries
from stklia.data.features import DeviceCopies


class AudioList:
    """Recordings listed in a Kaldi dir's wav.scp (segments of them, with a segments file) or a list file (`path`
    or `key wav.scp-entry` lines), in their order."""

    def __init__(self, path: str | os.PathLike, sample_rate: int):
        audio = read_audio_entries(path, bare_paths=True)
        self.sample_rate = sample_rate
        self.entries = [(entry, *audio.origin[key], audio.segments.get(key)) for key, entry in audio.entries.items()]
        if not self.entries:
            path = Path(path)
            raise InputError(path / "wav.scp" if path.is_dir() else path, "empty: no recordings")

    def __len__(self) -> int:
        return len(self.entries)

    def open(self, index: int) -> Recording:
        """Recording `index`, opened to read windows of it."""
        rx, where, line, segment = self.entries[index]
        return Recording(rx, self.sample_rate, where, line, segment=segment)

    def read(self, index: int) -> np.ndarray:
        rx, where, line, segment = self.entries[index]
        return read_checked_audio(rx, self.sample_rate, where, line, segment=segment)


def _power(x: np.ndarray) -> float:
    return float(np.dot(x, x)) / len(x) + 1e-10


def power(x: torch.Tensor) -> torch.Tensor:
    """Mean square of each row, (batch, 1)."""
    return x.square().mean(dim=1, keepdim=True) + 1e-10


def row_windows(x: torch.Tensor, starts: torch.Tensor, length: int) -> torch.Tensor:
    """(rows, length): x[b, starts[b] : starts[b] + length] for each row b, read on x's device (the windows of a
    strided view: no index for every sample, as a gather would need)."""
    return x.unfold(1, length, 1)[torch.arange(len(x), device=x.device), starts]


def _one(apply_output: torch.Tensor) -> np.ndarray:
    return apply_output[0].numpy()


class SpeedPerturb:
    """Resample by a random factor of `factors` (sox `speed`: tempo and pitch change together), as
    scipy.signal.resample_poly does with its default Kaiser-windowed filter.

    A training crop needs only a window of the source around it (`window`); resampling that window gives
    the crop's samples of the whole perturbed utterance. With `new_speakers`, each factor's utterances form
    new classes (WeSpeaker): the speaker labels are multiplied by 1 + len(factors).
    """

    def __init__(self, prob: float = 0.6, factors: Sequence[float] = (0.9, 1.1), new_speakers: bool = False):
        self.prob, self.factors, self.new_speakers = prob, list(factors), new_speakers
        fractions = [Fraction(f).limit_denominator(100) for f in self.factors]
        self._ratios = [(f.denominator, f.numerator) for f in fractions]
        self._kernels: dict[int, tuple[torch.Tensor, int]] = {}
        self._copies = DeviceCopies()

    @property
    def num_label_copies(self) -> int:
        return 1 + len(self.factors) if self.new_speakers else 1

    def choose(self, rng: np.random.Generator) -> int:
        """0 for no change, else 1 + the index of the chosen factor."""
        coin, pick = rng.random(), int(rng.integers(len(self.factors)))
        return 1 + pick if coin < self.prob else 0

    def ratio(self, choice: int) -> tuple[int, int]:
        """(up, down): choice's perturbed signal is the source resampled by up / down (factor down / up)."""
        return self._ratios[choice - 1]

    def perturbed_length(self, num_samples: int, choice: int) -> int:
        if choice == 0:
            return num_samples
        up, down = self.ratio(choice)
        return -(-num_samples * up // down)

    def window(self, choice: int, start: int, length: int) -> tuple[int, int, int]:
        """(first, stop, offset): resampling the source samples first..stop-1 (zeros outside the recording) gives
        samples start..start+length-1 of the whole perturbed signal at offset..offset+length-1.

        The filter reaches 10 * max(up, down) upsampled samples each way; `first` is a multiple of `down`, which
        keeps the window's output samples in phase with the whole signal's."""
        if choice == 0:
            return start, start + length, 0
        up, down = self.ratio(choice)
        reach = 10 * max(up, down)
        first = (start * down - reach) // up
        first -= first % down
        stop = ((start + length - 1) * down + reach) // up + 1
        return first, stop, start - first * up // down

    def _kernel(self, choice: int, like: torch.Tensor) -> tuple[torch.Tensor, int]:
        """The polyphase form of resample_poly's filter, as `like` (device, dtype): a (taps, up) matrix whose column r,
        applied to the source windows that start every `down` samples, gives the resampled samples r, r + up,
        r + 2 up, ..., and the source shift of tap 0. Made once per choice, copied once per device."""
        from scipy import signal  # imported here: slow to import, and only this needs it

        if choice not in self._kernels:
            up, down = self.ratio(choice)
            reach = 10 * max(up, down)
            h = signal.firwin(2 * reach + 1, 1 / max(up, down), window=("kaiser", 5.0)) * up
            # y[m] = sum_j h[j] x_up[m * down + reach - j], x_up[i] = x[i / up] where up divides i
            phases = [((r * down + reach) % up, (r * down + reach) // up) for r in range(up)]
            shift = min(last - (len(h) - 1 - phase) // up for phase, last in phases)
            weights = np.zeros((max(last for _, last in phases) - shift + 1, up))
            for r, (phase, last) in enumerate(phases):
                taps = h[phase::up]  # taps k = 0, 1, ... multiply x[last - k]
                weights[last - shift - np.arange(len(taps)), r] = taps
            self._kernels[choice] = torch.from_numpy(weights), shift
        weights, shift = self._kernels[choice]
        return self._copies.of(choice, weights, like), shift

    def resample(self, windows: torch.Tensor, choice: int, offsets: torch.Tensor, length: int,
                 max_offset: int) -> torch.Tensor:
        """(batch, length): samples offsets[b]..offsets[b]+length-1 of row b of `windows` resampled by choice's
        ratio (zeros past each row's end), on the rows' device. `max_offset`, the largest of `offsets`, comes
        from the host: reading it from the device would wait for the device."""
        up, down = self.ratio(choice)
        kernel, shift = self._kernel(choice, windows)
        taps = len(kernel)
        per_phase = -(-(max_offset + length) // up)  # outputs needed from each phase
        size = (per_phase - 1) * down + taps
        x = F.pad(windows, (-shift, max(size + shift - windows.shape[1], 0)))[:, :size]
        # A matrix product rather than a strided conv1d: faster on a CPU core (docs/benchmarks.md), already in output
        # order (row t holds samples up t .. up t + up - 1), and exact float32 on a GPU, where cuDNN convolutions may
        # use TF32.
        resampled = (x.unfold(1, taps, down) @ kernel).reshape(len(windows), -1)
        return row_windows(resampled, offsets, length)

    def apply(self, samples: np.ndarray, choice: int) -> np.ndarray:
        """The whole signal at choice's speed (float32)."""
        if choice == 0:
            return samples
        length = self.perturbed_length(len(samples), choice)
        first, stop, offset = self.window(choice, 0, length)
        source = np.zeros(stop - first)
        source[-first : -first + len(samples)] = samples
        return _one(self.resample(torch.from_numpy(source)[None], choice, torch.tensor([offset]), length, offset)
                    ).astype(np.float32)


class Reverb:
    """Convolution with a room impulse response from `rirs`, aligned on its direct path, power kept."""

    def __init__(self, rirs: str | os.PathLike, prob: float = 0.2, sample_rate: int = 16000):
        self.rirs, self.prob = AudioList(rirs, sample_rate), prob

    def draw(self, rng: np.random.Generator) -> np.ndarray | None:
        """The impulse response of one item (unit norm, float32), or None."""
        coin, index = rng.random(), int(rng.integers(len(self.rirs)))
        if coin >= self.prob:
            return None
        rir = self.rirs.read(index).astype(np.float64)
        return (rir / np.sqrt(np.square(rir).sum())).astype(np.float32)

    @staticmethod
    def apply(samples: torch.Tensor, rirs: torch.Tensor) -> torch.Tensor:
        """Row b convolved with rirs[b] (zero-padded), from the impulse response's largest tap on, scaled back to
        the row's power."""
        length, taps = samples.shape[1], rirs.shape[1]
        n_fft = next_fast_len(length + taps - 1, real=True)
        wet = torch.fft.irfft(torch.fft.rfft(samples, n_fft) * torch.fft.rfft(rirs, n_fft), n_fft)
        wet = row_windows(wet, rirs.abs().argmax(dim=1), length)
        return wet * (power(samples) / power(wet)).sqrt()

    def __call__(self, samples: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        rir = self.draw(rng)
        if rir is None:
            return samples
        x = torch.from_numpy(np.asarray(samples, dtype=np.float64))[None]
        return _one(self.apply(x, torch.from_numpy(rir.astype(np.float64))[None])).astype(np.float32)


class AddNoise:
    """Adds `count` recordings of one category (chosen uniformly) at a random SNR of its range.

    `sources` maps a category (e.g. MUSAN's noise, music, babble) to {list: Kaldi dir or list file,
    snr: [low, high] dB, count: [low, high] recordings summed (default [1, 1])}. A noise shorter
    than the utterance is repeated; of a longer one, a window at a random offset is read.
    """

    def __init__(self, sources: Mapping[str, Mapping], prob: float = 0.6, sample_rate: int = 16000):
        self.prob = prob
        self.sources = [(AudioList(s["list"], sample_rate), tuple(s["snr"]), tuple(s.get("count", (1, 1))))
                        for s in sources.values()]

    def draw(self, rng: np.random.Generator, length: int) -> np.ndarray | None:
        """The noise of one item of `length` samples, or None: each recording drawn scaled to its drawn SNR
        against a signal of unit power, summed (float32). `apply` scales it by the speech's RMS."""
        if rng.random() >= self.prob:
            return None
        noises, (low, high), (min_count, max_count) = self.sources[int(rng.integers(len(self.sources)))]
        total = None
        for _ in range(int(rng.integers(min_count, max_count + 1))):
            with noises.open(int(rng.integers(len(noises)))) as recording:
                start = int(rng.integers(max(recording.num_samples - length, 0) + 1))
                noise = recording.read(start, min(start + length, recording.num_samples))
            if len(noise) < length:
                noise = np.resize(noise, length)
            snr = rng.uniform(low, high)
            noise = np.float32(1 / np.sqrt(_power(noise) * 10 ** (snr / 10))) * noise
            total = noise if total is None else np.add(total, noise, out=total)
        return total

    @staticmethod
    def apply(samples: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return samples + power(samples).sqrt() * noise

    def __call__(self, samples: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        noise = self.draw(rng, len(samples))
        if noise is None:
            return samples
        x = torch.from_numpy(np.asarray(samples, dtype=np.float64))[None]
        return _one(self.apply(x, torch.from_numpy(noise.astype(np.float64))[None])).astype(np.float32)


class SpecAugment:
    """Zeroes random bands of frames and of frequency bins of a (normalised) feature crop."""

    def __init__(self, prob: float = 0.6, num_time_masks: int = 1, max_time: int = 10, num_freq_masks: int = 1,
                 max_freq: int = 8):
        self.prob = prob
        self.num_time_masks, self.max_time = num_time_masks, max_time
        self.num_freq_masks, self.max_freq = num_freq_masks, max_freq

    def draw(self, rng: np.random.Generator, num_frames: int, dim: int) -> np.ndarray:
        """The bands of one item: which of its frames, then which of its bins, are zeroed ((num_frames + dim,)
        booleans; none when the item is not masked)."""
        zeroed = np.zeros(num_frames + dim, dtype=bool)
        if rng.random() >= self.prob:
            return zeroed
        for axis in [0] * self.num_time_masks + [1] * self.num_freq_masks:
            size, max_width = (num_frames, self.max_time) if axis == 0 else (dim, self.max_freq)
            width = int(rng.integers(0, min(max_width, size) + 1))
            start = int(rng.integers(0, size - width + 1)) + axis * num_frames
            zeroed[start : start + width] = True
        return zeroed

    @staticmethod
    def apply(feats: torch.Tensor, zeroed: torch.Tensor) -> torch.Tensor:
        """(batch, frames, bins) features with the frames and bins zeroed[b] (as `draw` gives them) of row b zeroed."""
        frames = feats.shape[1]
        return feats.masked_fill(zeroed[:, :frames, None], 0).masked_fill_(zeroed[:, None, frames:], 0)

    def __call__(self, feats: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        zeroed = self.draw(rng, *feats.shape)
        return _one(self.apply(torch.from_numpy(feats)[None], torch.from_numpy(zeroed)[None]))


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
