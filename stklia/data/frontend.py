"""From raw audio crops to training features, batched: speed perturbation, reverberation, additive noise,
dithered Kaldi fbank, mean normalisation over the crop, SpecAugment.

The data loader's workers make one `AudioCrop` per training item (stklia.data.datasets.TrainingCrops):
every random choice, drawn from the item's seed, and the samples those choices need (the source window of
the crop, the impulse response, the noise). `FrontEnd` carries them out on a batch with torch, on whatever
device the batch is: in the loader worker (the CPU path), or on the training device (`features_on_device`),
which leaves the loader's cores nothing to do but read audio. Both paths draw the same choices and compute the
same features.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import numpy as np
import torch
import torch.utils.data

from stklia.data.augment import AddNoise, Augment, Reverb, SpecAugment
from stklia.data.features import Fbank, subtract_mean

# Rows whose features a CPU core computes together: enough to share each tensor operation's fixed cost, few
# enough that the fbank's arrays stay in the core's cache (measured by row counts in docs/benchmarks.md).
CPU_ROWS = 8


@dataclass
class AudioCrop:
    """A training item before its features: the crop's samples and what remains to be done to them."""

    samples: np.ndarray  # the crop's samples, or, with `speed`, the source window that resamples to them (int16
    # when the audio file is 16-bit: half the bytes to collate and hand over; the front end makes them float)
    speed: int  # the speed perturbation still to apply (SpeedPerturb choice; 0: none)
    offset: int  # where the crop starts in the resampled window
    rir: np.ndarray | None  # the impulse response to convolve with
    noise: np.ndarray | None  # the noise to add, at unit speech power (AddNoise.draw)
    dither_seed: int
    zeroed: np.ndarray  # the frames, then the bins, that SpecAugment zeroes (SpecAugment.draw)
    label: int


class BatchSlots:
    """Shared-memory buffers that loader workers collate AudioBatches into, reused batch after batch.

    A DataLoader hands each batch over in newly made shared memory, and making it (its page faults) takes a
    worker longer than collating the batch (docs/benchmarks.md). Each worker
    writes its batches into its `slots` buffers in turn, made once; the training process releases a batch's
    buffer once it has read it (TrainingCrops.to_device). A buffer not yet released is never written: that
    batch goes into new memory, as without buffers, so a consumer that keeps batches makes the handing over
    slower, never wrong, and no one waits.
    """

    def __init__(self, num_workers: int, slots: int):
        self._free = [[multiprocessing.Semaphore(1) for _ in range(slots)] for _ in range(num_workers)]
        self._buffers: dict[int, torch.Tensor] = {}  # a worker's own, by slot, made when first needed
        self._turn = 0

    def claim(self, nbytes: int) -> tuple[tuple[int, int], torch.Tensor] | None:
        """In a loader worker: (its key, its uint8 buffer of at least `nbytes`) if the worker's next buffer has
        been released; else (or outside a worker) None."""
        worker = torch.utils.data.get_worker_info()
        if worker is None:
            return None
        slot, self._turn = self._turn, (self._turn + 1) % len(self._free[worker.id])
        if not self._free[worker.id][slot].acquire(block=False):
            return None
        buffer = self._buffers.get(slot)
        if buffer is None or len(buffer) < nbytes:  # room to spare: batches vary with the speed perturbation
            buffer = self._buffers[slot] = torch.empty(nbytes + nbytes // 4, dtype=torch.uint8).share_memory_()
        return (worker.id, slot), buffer

    def release(self, key: tuple[int, int]) -> None:
        worker, slot = key
        self._free[worker][slot].release()


def _padded_shape(arrays: list[np.ndarray]) -> tuple[tuple[int, int], torch.dtype]:
    """Shape and dtype of the arrays stacked: (len(arrays), longest); int16 if every array is, else float32."""
    dtype = torch.int16 if all(a.dtype == np.int16 for a in arrays) else torch.float32
    return (len(arrays), max((len(a) for a in arrays), default=0)), dtype


def _stack_padded(arrays: list[np.ndarray], out: torch.Tensor) -> torch.Tensor:
    """`arrays` written into the rows of `out`, zero-padded on the right."""
    for row, a in zip(out.numpy(), arrays):
        row[: len(a)] = a
        row[len(a) :] = 0
    return out


def _allocate(shapes: dict[str, tuple[tuple[int, int], torch.dtype]], slots: BatchSlots | None
              ) -> tuple[dict[str, torch.Tensor], tuple[int, int] | None]:
    """Tensors of these shapes: views of one claimed buffer of `slots` (and its key), or new ones."""
    starts, sizes, end = {}, {}, 0
    for name, (shape, dtype) in shapes.items():
        starts[name], sizes[name] = end, shape[0] * shape[1] * dtype.itemsize
        end += -(-sizes[name] // 64) * 64  # each array 64-byte aligned
    claimed = slots.claim(end) if slots is not None else None
    if claimed is None:
        return {name: torch.empty(shape, dtype=dtype) for name, (shape, dtype) in shapes.items()}, None
    key, buffer = claimed
    return {name: buffer[starts[name] : starts[name] + sizes[name]].view(dtype).view(shape)
            for name, (shape, dtype) in shapes.items()}, key


@dataclass
class AudioBatch:
    """AudioCrops collated: what the device needs, with the rows of each kind of work listed in advance (so the
    device never waits for the host to find them)."""

    samples: torch.Tensor  # (batch, longest source window), zero-padded; int16 from 16-bit files
    offsets: torch.Tensor  # (batch,)
    speed_rows: dict[int, torch.Tensor]  # speed choice -> the rows perturbed with it
    speed_max_offsets: dict[int, int]  # speed choice -> the largest offset of its rows
    reverb_rows: torch.Tensor
    rirs: torch.Tensor  # (len(reverb_rows), longest impulse response)
    noise_rows: torch.Tensor
    noise: torch.Tensor  # (len(noise_rows), crop samples)
    dither_seeds: list[int]
    zeroed: torch.Tensor  # (batch, frames + bins) booleans
    labels: torch.Tensor  # (batch,)
    slot: tuple[int, int] | None = None  # the BatchSlots buffer holding samples, rirs and noise, until released

    @classmethod
    def collate(cls, crops: list[AudioCrop], slots: BatchSlots | None = None) -> AudioBatch:
        """The crops as one batch; in a loader worker with `slots`, its large arrays in a reused buffer."""
        def rows(keep: list[bool]) -> torch.Tensor:
            return torch.tensor([i for i, k in enumerate(keep) if k], dtype=torch.int64)

        speeds = [c.speed for c in crops]
        large = {"samples": [c.samples for c in crops], "rirs": [c.rir for c in crops if c.rir is not None],
                 "noise": [c.noise for c in crops if c.noise is not None]}
        out, slot = _allocate({name: _padded_shape(arrays) for name, arrays in large.items()}, slots)
        return cls(
            samples=_stack_padded(large["samples"], out["samples"]),
            offsets=torch.tensor([c.offset for c in crops], dtype=torch.int64),
            speed_rows={s: rows([x == s for x in speeds]) for s in sorted(set(speeds) - {0})},
            speed_max_offsets={s: max(c.offset for c in crops if c.speed == s) for s in set(speeds) - {0}},
            reverb_rows=rows([c.rir is not None for c in crops]),
            rirs=_stack_padded(large["rirs"], out["rirs"]),
            noise_rows=rows([c.noise is not None for c in crops]),
            noise=_stack_padded(large["noise"], out["noise"]),
            dither_seeds=[c.dither_seed for c in crops],
            zeroed=torch.from_numpy(np.stack([c.zeroed for c in crops])),
            labels=torch.tensor([c.label for c in crops], dtype=torch.int64),
            slot=slot,
        )

    def _map(self, move: Callable[[torch.Tensor], torch.Tensor]) -> AudioBatch:
        changes = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                changes[f.name] = move(value)
            elif isinstance(value, dict):
                changes[f.name] = {k: move(v) if isinstance(v, torch.Tensor) else v for k, v in value.items()}
        return replace(self, **changes)

    def to(self, device: torch.device) -> AudioBatch:
        return self._map(lambda t: t.to(device, non_blocking=True))

    def pin_memory(self) -> AudioBatch:
        """Called by the DataLoader (pin_memory=True), for asynchronous copies to the GPU."""
        return self._map(torch.Tensor.pin_memory)


class FrontEnd:
    """AudioBatch -> (batch, frames, bins) training features, on the batch's device: each row's speed
    perturbation, reverberation, noise, dithered fbank of `crop_samples` samples, mean normalisation over the
    crop (`cmn`), SpecAugment's zeroed bands.

    The waveforms are changed for the whole batch at once (on a CPU too: each FFT call has a fixed cost, and a
    batch shares it); on a CPU the features are then computed CPU_ROWS rows at a time."""

    def __init__(self, features: Fbank, crop_samples: int, cmn: bool, augment: Augment | None = None):
        self.features, self.crop_samples, self.cmn = features, crop_samples, cmn
        self.speed = augment.speed if augment else None

    @torch.no_grad()
    def __call__(self, batch: AudioBatch) -> torch.Tensor:
        x = self.waveforms(batch)
        if x.device.type != "cpu" or len(x) <= CPU_ROWS:
            return self.features_of(x, batch.dither_seeds, batch.zeroed)
        return torch.cat([self.features_of(x[first : first + CPU_ROWS], batch.dither_seeds[first : first + CPU_ROWS],
                                           batch.zeroed[first : first + CPU_ROWS])
                          for first in range(0, len(x), CPU_ROWS)])

    def waveforms(self, batch: AudioBatch) -> torch.Tensor:
        """(batch, crop_samples) float32: the crops, speed-perturbed, reverberated, with noise added."""
        source = batch.samples
        kept = min(source.shape[1], self.crop_samples)
        x = torch.empty((len(source), self.crop_samples), device=source.device)  # its rows are changed in place
        x[:, :kept] = source[:, :kept]  # as float32
        x[:, kept:] = 0
        for choice, rows in batch.speed_rows.items():
            x[rows] = self.speed.resample(source[rows].float(), choice, batch.offsets[rows], self.crop_samples,
                                          batch.speed_max_offsets[choice])
        if len(batch.reverb_rows):
            x[batch.reverb_rows] = Reverb.apply(x[batch.reverb_rows], batch.rirs)
        if len(batch.noise_rows):
            x[batch.noise_rows] = AddNoise.apply(x[batch.noise_rows], batch.noise)
        return x

    def features_of(self, waveforms: torch.Tensor, dither_seeds: list[int], zeroed: torch.Tensor) -> torch.Tensor:
        """(rows, frames, bins): the dithered fbank of the waveforms, mean-normalised, SpecAugment's bands zeroed."""
        feats = self.features.batch(waveforms, dither_seeds)
        if self.cmn:
            feats = subtract_mean(feats)
        return SpecAugment.apply(feats, zeroed)
