"""What the data loaders feed the network: random crops for training, whole utterances for evaluation."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from stklia.core.errors import InputError
from stklia.data.augment import Augment
from stklia.data.features import subtract_mean
from stklia.data.frontend import AudioBatch, AudioCrop, BatchSlots, FrontEnd
from stklia.data.kaldi import DataSet


def random_crop(x: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """A window of `length` frames (or samples); shorter utterances are first repeated until long enough."""
    if len(x) < length:
        return np.resize(x, (length, *x.shape[1:]))  # repeats whole rows, in order
    start = rng.integers(0, len(x) - length + 1)
    return x[start : start + length]


def feature_tensor(feats: np.ndarray) -> torch.Tensor:
    """A tensor sharing a features array, copied only when it is not contiguous or not writable: kaldiio reads
    features into read-only arrays, and torch warns when a tensor is made of one (with cmn=false, at every run)."""
    return torch.from_numpy(np.require(feats, requirements=["C", "W"]))


class TrainingCrops(Dataset):
    """Item (utterance index, crop seed) -> (crop of max_seq_len frames, class label), optionally augmented.

    Audio utterances are cropped before augmentation and feature computation (as WeSpeaker does), and only
    the samples the crop needs are read (the source window of a speed-perturbed crop), so an item costs the
    same whatever its utterance's length; their mean normalisation is over the crop. With `on_device`, an
    audio item is its AudioCrop (the raw samples and every random choice) and the training device computes
    its features (stklia.data.frontend); otherwise the worker does, with the same code and the same choices.
    Feature utterances are normalised over the whole utterance, then cropped.
    The class is the speaker's, or with speed perturbation as new speakers, speaker + k * num_speakers.
    """

    def __init__(self, data: DataSet, max_seq_len: int, cmn: bool, augment: Augment | None = None,
                 on_device: bool = False):
        self.data = data
        self.labels = data.speaker_labels()
        self.num_speakers = len(data.speakers)
        self.max_seq_len = max_seq_len
        self.cmn = cmn
        self.augment = augment
        self.on_device = on_device
        self.num_classes = self.num_speakers * (augment.num_label_copies if augment else 1)
        self.slots: BatchSlots | None = None  # the workers' reused batch buffers (training_loader)
        self.frontend = None
        if data.features is not None:
            self.crop_samples = data.features.num_samples(max_seq_len)
            self.frontend = FrontEnd(data.features, self.crop_samples, cmn, augment)
        if on_device and len(data.audio) < len(data.utts):
            utt = next(u for u in data.utts if u not in data.audio)
            path, line = data.origin[utt]
            raise InputError(path, f"features_on_device needs audio input, but '{utt}' has precomputed features",
                             line)

    def __len__(self) -> int:
        return len(self.data.utts)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int] | AudioCrop:
        return self.__getitems__([item])[0]

    def __getitems__(self, items: list[tuple[int, int]]) -> list[tuple[torch.Tensor, int] | AudioCrop]:
        """The items of a batch (a DataLoader asks for them together): on the CPU path the front end computes the
        features of its audio items together (stklia.data.frontend.FrontEnd)."""
        with one_torch_thread():  # as in a loader worker: float sums in the order of one thread, whatever the process
            made = [self._item(item) for item in items]
            audio = [i for i, item in enumerate(made) if isinstance(item, AudioCrop)]
            if self.on_device or not audio:
                return made
            feats = self.frontend(AudioBatch.collate([made[i] for i in audio]))
        for row, i in enumerate(audio):
            made[i] = feats[row], made[i].label
        return made

    def _item(self, item: tuple[int, int]) -> tuple[torch.Tensor, int] | AudioCrop:
        """An item's AudioCrop (audio) or its features and label (feats.scp)."""
        index, crop_seed = item
        rng = np.random.default_rng(crop_seed)
        utt = self.data.utts[index]
        label = int(self.labels[index])
        speed = self.augment.speed.choose(rng) if self.augment and self.augment.speed else 0  # drawn for every item
        if utt in self.data.audio:
            if self.augment and self.augment.num_label_copies > 1:
                label += speed * self.num_speakers
            return self.audio_crop(utt, speed, label, rng)
        feats = self.data.load(utt)
        feats = random_crop(subtract_mean(feats) if self.cmn else feats, self.max_seq_len, rng)
        if self.augment and self.augment.specaugment:
            feats = self.augment.specaugment(feats, rng)
        return feature_tensor(feats), label

    def audio_crop(self, utt: str, speed: int, label: int, rng: np.random.Generator) -> AudioCrop:
        """The random choices of an audio item after its speed (crop, impulse response, noise, dither,
        SpecAugment bands, in this order) and the samples they need."""
        length = self.crop_samples
        perturb = self.augment.speed if speed else None
        with self.data.open_audio(utt) as recording:
            perturbed = perturb.perturbed_length(recording.num_samples, speed) if speed else recording.num_samples
            take = min(length, perturbed)
            start = int(rng.integers(0, perturbed - length + 1)) if perturbed >= length else 0
            first, stop, offset = perturb.window(speed, start, take) if speed else (start, start + take, 0)
            samples = recording.read(first, stop, keep_int16=True)
        if perturbed < length:  # a short utterance: repeated until long enough, after its speed perturbation
            if speed:
                samples = perturb.resample(torch.from_numpy(samples.astype(np.float32))[None], speed,
                                           torch.tensor([offset]), perturbed, offset)[0].numpy()
            samples, speed, offset = np.resize(samples, length), 0, 0
        augment = self.augment or Augment()
        rir = augment.reverb.draw(rng) if augment.reverb else None
        noise = augment.noise.draw(rng, length) if augment.noise else None
        dither_seed = int(rng.integers(2**63 - 1))
        num_frames, dim = self.max_seq_len, self.data.features.dim
        zeroed = augment.specaugment.draw(rng, num_frames, dim) if augment.specaugment else \
            np.zeros(num_frames + dim, dtype=bool)
        return AudioCrop(samples, speed, offset, rir, noise, dither_seed, zeroed, label)

    def collate(self, items: list) -> tuple[torch.Tensor, torch.Tensor] | AudioBatch:
        """The DataLoader's collate_fn: AudioCrops (on_device) into an AudioBatch, else features and labels."""
        return AudioBatch.collate(items, self.slots) if self.on_device else default_collate(items)

    def to_device(self, batch: tuple[torch.Tensor, torch.Tensor] | AudioBatch,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, labels) of a loader batch on `device`: an AudioBatch goes through the front end there, and
        its worker's buffer is released once the front end has read it (on a GPU: once it is copied there)."""
        if isinstance(batch, AudioBatch):
            try:
                moved = batch.to(device)
                return self.frontend(moved), moved.labels
            finally:
                self.release(batch)
        feats, labels = batch
        return feats.to(device, non_blocking=True), labels.to(device, non_blocking=True)

    def release(self, batch: AudioBatch) -> None:
        """Hand a batch's buffer back to its worker (BatchSlots), once: nothing reads the batch afterwards."""
        if batch.slot is not None:  # only a worker of training_loader, which made self.slots, gives one
            self.slots.release(batch.slot)
            batch.slot = None


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Torch on one thread within: a batch's features are then the same in the training process (num_workers=0)
    as in a loader worker (one thread), whose kernels split their sums otherwise (batches differed in the 5th
    digit), so a run resumed with other num_workers stays exact."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def one_thread_per_worker(worker_id: int) -> None:
    """A loader worker makes one item at a time: one torch and one BLAS thread, so N workers use N cores."""
    torch.set_num_threads(1)
    threadpool_limits(1)


def training_loader(crops: TrainingCrops, batches: Sampler[list[tuple[int, int]]], num_workers: int,
                    prefetch_factor: int, pin_memory: bool, persistent_workers: bool = False) -> DataLoader:
    """The DataLoader of training batches. On the device path its workers collate into reused buffers
    (BatchSlots): a worker has at most prefetch_factor batches on their way and one being read by the training
    step; with one buffer to spare, no training batch goes into new memory."""
    if crops.on_device and num_workers:
        crops.slots = BatchSlots(num_workers, prefetch_factor + 2)
    # its own generator: drawing worker seeds from the global one would make it depend on where a run started
    return DataLoader(crops, batch_sampler=batches, num_workers=num_workers, collate_fn=crops.collate,
                      pin_memory=pin_memory, worker_init_fn=one_thread_per_worker,
                      prefetch_factor=prefetch_factor if num_workers else None, persistent_workers=persistent_workers,
                      generator=torch.Generator())


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
        feats = self.data.load(self.utts[index])
        return feature_tensor(subtract_mean(feats) if self.cmn else feats)


def stop_workers(batches: Iterator) -> None:
    """Stop the worker processes of a DataLoader's iterator now (there are none with num_workers=0).

    After an error its traceback holds the iterator, and the workers would outlive it until the process
    exits, where, blocking the pre-emption signals (preemption.sheltering_children), they cannot be terminated
    and the process would wait for them for ever.
    """
    # A private method: torch has no public way to stop a DataLoader iterator's workers (PyTorch Lightning calls
    # the same one); an iterator without it (num_workers=0, or a torch that renamed it) has nothing to stop.
    shutdown = getattr(batches, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
