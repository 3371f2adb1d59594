"""What the data loaders feed the network: random crops for training, whole utterances for evaluation."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from stklia.data.augment import Augment
from stklia.data.kaldi import DataSet


def normalise(feats: np.ndarray, cmn: bool) -> np.ndarray:
    """Per-utterance cepstral mean normalisation, as Kaldi's apply-cmvn --norm-vars=false does."""
    return feats - feats.mean(axis=0, keepdims=True) if cmn else feats


def random_crop(x: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """A window of `length` frames (or samples); shorter utterances are first repeated until long enough."""
    if len(x) < length:
        return np.resize(x, (length, *x.shape[1:]))  # repeats whole rows, in order
    start = rng.integers(0, len(x) - length + 1)
    return x[start : start + length]


class TrainingCrops(Dataset):
    """Item (utterance index, crop seed) -> (crop of max_seq_len frames, class label), optionally augmented.

    Audio utterances are cropped before augmentation and feature computation (as WeSpeaker does),
    so their cost does not grow with the utterance's length; their mean normalisation is over the
    crop. Feature utterances are normalised over the whole utterance, then cropped.
    The class is the speaker's, or with speed perturbation as new speakers, speaker + k * num_speakers.
    """

    def __init__(self, data: DataSet, max_seq_len: int, cmn: bool, augment: Augment | None = None):
        self.data = data
        self.labels = data.speaker_labels()
        self.max_seq_len = max_seq_len
        self.cmn = cmn
        self.augment = augment
        self.num_classes = len(data.speakers) * (augment.num_label_copies if augment else 1)

    def __len__(self) -> int:
        return len(self.data.utts)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, crop_seed = item
        rng = np.random.default_rng(crop_seed)
        utt = self.data.utts[index]
        label = int(self.labels[index])
        speed = self.augment.choose_speed(rng) if self.augment else 0  # drawn for every item: draws never shift
        if utt in self.data.audio:
            crop = normalise(self._audio_features(utt, speed, rng), self.cmn)
            if self.augment and self.augment.num_label_copies > 1:
                label += speed * len(self.data.speakers)
        else:
            crop = random_crop(normalise(self.data.load(utt), self.cmn), self.max_seq_len, rng)
        if self.augment:
            crop = self.augment.spectral(crop, rng)
        return torch.from_numpy(np.ascontiguousarray(crop)), label

    def _audio_features(self, utt: str, speed: int, rng: np.random.Generator) -> np.ndarray:
        """Dithered features of a random audio crop of max_seq_len frames, after speed perturbation, with
        reverberation and noise."""
        samples = self.data.read_audio(utt)
        if self.augment:
            samples = self.augment.perturb_speed(samples, speed)
        samples = random_crop(samples, self.data.features.num_samples(self.max_seq_len), rng)
        if self.augment:
            samples = self.augment.corrupt(samples, rng)
        return self.data.features(samples, rng)


class BatchSchedule(Sampler[list[tuple[int, int]]]):
    """The batches of steps start_step .. num_steps-1, each a pure function of (seed, step).

    Because batch k never depends on earlier batches, resuming at step k replays exactly the
    data an uninterrupted run would have seen. `sampling="speaker"` picks a speaker uniformly
    then one of its utterances (balances speakers); `"utterance"` picks utterances uniformly.
    In a distributed run, `batch_size` is the global batch: rank r of n gets items r, r+n, ...
    of it, so the data seen does not depend on the number of processes.
    """

    def __init__(self, labels: np.ndarray, batch_size: int, num_steps: int, seed: int,
                 sampling: str = "speaker", start_step: int = 0, rank: int = 0, world_size: int = 1):
        if sampling not in ("speaker", "utterance"):
            raise ValueError(f"sampling must be 'speaker' or 'utterance', not {sampling!r}")
        self.order = np.argsort(labels, kind="stable")  # utterance indices grouped by speaker
        counts = np.bincount(labels)
        self.counts = counts[counts > 0]
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]])
        self.batch_size, self.num_steps, self.seed = batch_size, num_steps, seed
        self.sampling, self.start_step = sampling, start_step
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return max(0, self.num_steps - self.start_step)

    def batch(self, step: int) -> list[tuple[int, int]]:
        rng = np.random.default_rng([self.seed, step])
        if self.sampling == "speaker":
            speakers = rng.integers(0, len(self.counts), self.batch_size)
            within = (rng.random(self.batch_size) * self.counts[speakers]).astype(np.int64)
            utts = self.order[self.starts[speakers] + within]
        else:
            utts = rng.integers(0, len(self.order), self.batch_size)
        crop_seeds = rng.integers(0, 2**63 - 1, self.batch_size)
        return list(zip(utts.tolist(), crop_seeds.tolist()))

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start_step, self.num_steps):
            yield self.batch(step)[self.rank :: self.world_size]


class Utterances(Dataset):
    """Whole utterances (after normalisation), for embedding extraction."""

    def __init__(self, data: DataSet, utts: list[str], cmn: bool):
        self.data, self.utts, self.cmn = data, utts, cmn

    def __len__(self) -> int:
        return len(self.utts)

    def __getitem__(self, index: int) -> torch.Tensor:
        feats = normalise(self.data.load(self.utts[index]), self.cmn)
        return torch.from_numpy(np.ascontiguousarray(feats))


def stop_workers(batches: Iterator) -> None:
    """Stop the worker processes of a DataLoader's iterator now (there are none with num_workers=0).

    After an error its traceback holds the iterator, and the workers would outlive it until the process
    exits, where, blocking the pre-emption signals (preemption.sheltering_children), they cannot be terminated
    and the process would wait for them for ever. (PyTorch Lightning calls the same method.)
    """
    shutdown = getattr(batches, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
