"""Embeddings of whole utterances: one code path for validation, test, extraction and the Python API, and the
files `python -m stklia.extract` writes.

Extraction is batched with length bucketing: utterances are read in order into a pool of about
SORT_POOL_BATCHES batches, the pool is sorted by length, and consecutive utterances form
batches of at most `batch_frames` padded frames. The generator gets the valid lengths
(`generator(feats, lengths)`) and ignores the padding, so every embedding equals the one the
utterance gets alone, up to float rounding (tested to 1e-5). Utterances longer than
`max_frames` (if set) are cut into near-equal chunks of at most `max_frames` frames whose
embeddings are averaged: that bounds memory on very long recordings, but the result is then
not the whole-utterance embedding.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import kaldiio
import numpy as np
import torch
from omegaconf import DictConfig
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader

from stklia.core.atomic import atomic_output
from stklia.core.devices import resolve_device
from stklia.core.errors import InputError
from stklia.core.progress import progress_bar
from stklia.data.datasets import Utterances, stop_workers
from stklia.data.kaldi import DataSet
from stklia.data.splits import load_named
from stklia.evaluation.quality import QUALITY_FILE, Quality
from stklia.modeldir.trained import load_trained
from stklia.models.generator import Generator

FORMATS = ("ark", "txt", "pt")
SORT_POOL_BATCHES = 32  # batches' worth of frames sorted together: enough for little padding
# Default padded frames per batch: on the CPU larger batches fall out of its caches and run slower
# (docs/benchmarks.md); an accelerator wants as many as its memory allows.
CPU_BATCH_FRAMES = 2000
ACCELERATOR_BATCH_FRAMES = 20000


@dataclass(frozen=True)
class Extraction:
    """How whole utterances are embedded: on which device, mean-normalised or not (the training's `data.cmn`),
    with how many loader workers, and the `extraction` settings of the config (docs/evaluation.md)."""

    device: torch.device
    cmn: bool
    num_workers: int = 0
    progress: bool = True
    batch_frames: int | None = None  # padded frames per forward pass (None: CPU_BATCH_FRAMES on the CPU,
    # ACCELERATOR_BATCH_FRAMES elsewhere)
    max_frames: int | None = None  # longer utterances are chunked (see the module docstring)

    def __post_init__(self) -> None:
        if (self.batch_frames is not None and self.batch_frames < 1) or \
                (self.max_frames is not None and self.max_frames < 1):
            raise InputError("extraction", f"batch_frames ({self.batch_frames}) and max_frames ({self.max_frames}) "
                             "must be positive (or null)")

    @classmethod
    def of(cls, cfg: DictConfig, device: torch.device, cmn: bool, progress: bool | None = None) -> Extraction:
        """The settings of a command's or a training's config (`num_workers`, `progress`, `extraction`)."""
        return cls(device, bool(cmn), cfg.num_workers, cfg.progress if progress is None else progress,
                   **cfg.extraction)

    @property
    def frames_per_batch(self) -> int:
        if self.batch_frames is not None:
            return self.batch_frames
        return CPU_BATCH_FRAMES if self.device.type == "cpu" else ACCELERATOR_BATCH_FRAMES


def split_chunks(feats: torch.Tensor, max_frames: int | None) -> list[torch.Tensor]:
    """The utterance itself, or near-equal chunks of at most max_frames frames."""
    if max_frames is None or len(feats) <= max_frames:
        return [feats]
    return list(torch.tensor_split(feats, math.ceil(len(feats) / max_frames)))


def length_batches(pieces: Iterable[tuple[int, torch.Tensor]], batch_frames: int
                   ) -> Iterator[list[tuple[int, torch.Tensor]]]:
    """Batches of (index, feats) pieces of similar length, each at most batch_frames padded frames.

    A piece longer than batch_frames makes a batch of its own.
    """
    pool: list[tuple[int, torch.Tensor]] = []
    pool_frames = 0

    def flush() -> Iterator[list[tuple[int, torch.Tensor]]]:
        pool.sort(key=lambda piece: len(piece[1]), reverse=True)
        start = 0
        while start < len(pool):
            longest = len(pool[start][1])  # the batch's padded length
            size = max(1, batch_frames // longest)
            yield pool[start : start + size]
            start += size

    for piece in pieces:
        pool.append(piece)
        pool_frames += len(piece[1])
        if pool_frames >= SORT_POOL_BATCHES * batch_frames:
            yield from flush()
            pool, pool_frames = [], 0
    yield from flush()


def extraction_model(generator: Generator, device: torch.device) -> Generator:
    """The copy of the generator that extraction runs: in eval mode, its batch norms folded where it can and, on
    the CPU, channels-last (NHWC) weights, because oneDNN runs the convolutions of a batch of utterances faster
    in NHWC than in NCHW (docs/benchmarks.md). Neither changes a value beyond float rounding, and the caller's
    module keeps its mode, weights and layout.
    """
    model = copy.deepcopy(generator).eval().requires_grad_(False).fold_batch_norms()
    return model.to(memory_format=torch.channels_last) if device.type == "cpu" else model


@torch.inference_mode()
def embed_utterances(generator: Generator, data: DataSet, utts: list[str], settings: Extraction,
                     frames: np.ndarray | None = None) -> np.ndarray:
    """Embeddings (len(utts), emb_size) of whole utterances, with the generator in eval mode; `frames`, when given,
    receives each utterance's number of feature frames (its duration, a quality measure: evaluation.quality)."""
    loaded = iter(DataLoader(Utterances(data, utts, settings.cmn), batch_size=None, num_workers=settings.num_workers))
    num_chunks = np.zeros(len(utts), dtype=np.int64)  # filled as the utterances are read

    def pieces() -> Iterator[tuple[int, torch.Tensor]]:
        for i, feats in enumerate(loaded):
            chunks = split_chunks(feats, settings.max_frames)
            num_chunks[i] = len(chunks)
            if frames is not None:
                frames[i] = len(feats)
            yield from ((i, chunk) for chunk in chunks)

    sums = np.zeros((len(utts), generator.emb_size), dtype=np.float64)
    counts = np.zeros(len(utts), dtype=np.int64)
    device = settings.device
    model = extraction_model(generator, device)
    try:
        with progress_bar(total=len(utts), desc="embeddings", unit="utt", enabled=settings.progress,
                          leave=False) as bar:
            for batch in length_batches(pieces(), settings.frames_per_batch):
                index = np.array([i for i, _ in batch])
                lengths = torch.tensor([len(feats) for _, feats in batch])
                feats = pad_sequence([feats for _, feats in batch], batch_first=True)
                emb = model(feats.to(device), lengths.to(device)).float().cpu().numpy()
                np.add.at(sums, index, emb)
                np.add.at(counts, index, 1)
                touched = np.unique(index)
                bar.update(int(np.count_nonzero(counts[touched] == num_chunks[touched])))
    finally:
        stop_workers(loaded)
    return (sums / counts[:, None]).astype(np.float32)


class Embedder:
    """embed_utterances of one generator with fixed settings, each set of utterances embedded once: a test embeds
    the trial lists' utterances, the back-end's data and AS-norm's cohort, which are often the same (the
    training data)."""

    def __init__(self, generator: Generator, settings: Extraction):
        self.generator, self.settings = generator, settings
        self._embedded: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray]] = {}  # embeddings and frames

    def __call__(self, data: DataSet, utts: list[str] | None = None) -> np.ndarray:
        """Embeddings of `utts` of `data` (default: all of them), in that order."""
        return self._embed(data, utts)[0]

    def frames(self, data: DataSet, utts: list[str] | None = None) -> np.ndarray:
        """The number of frames of each of `utts`, as they were embedded."""
        return self._embed(data, utts)[1]

    def _embed(self, data: DataSet, utts: list[str] | None) -> tuple[np.ndarray, np.ndarray]:
        utts = data.utts if utts is None else utts
        key = tuple(data.source(u) for u in utts)
        if key not in self._embedded:
            frames = np.zeros(len(utts), dtype=np.int64)
            self._embedded[key] = embed_utterances(self.generator, data, utts, self.settings, frames), frames
        return self._embedded[key]


def write_embeddings(out_dir: str | os.PathLike, utts: list[str], emb: np.ndarray, fmt: str) -> list[Path]:
    """Write embeddings as a Kaldi binary ark + scp, a Kaldi text ark, or a torch dict; return the files."""
    out_dir = Path(out_dir)
    if fmt == "ark":
        ark, scp = out_dir / "embeddings.ark", out_dir / "embeddings.scp"
        with atomic_output(scp) as tmp_scp, atomic_output(ark) as tmp_ark:  # ark lands first
            kaldiio.save_ark(str(tmp_ark), dict(zip(utts, emb)), scp=str(tmp_scp))
            # the scp must point at the final ark name, not the temporary one
            tmp_scp.write_text(tmp_scp.read_text().replace(f"{tmp_ark}:", f"{ark.resolve()}:"))
        return [ark, scp]
    if fmt == "txt":
        txt = out_dir / "embeddings.txt"
        with atomic_output(txt) as tmp:
            kaldiio.save_ark(str(tmp), dict(zip(utts, emb)), text=True)
        return [txt]
    if fmt == "pt":
        pt = out_dir / "embeddings.pt"
        with atomic_output(pt) as tmp:
            torch.save({u: torch.from_numpy(e.copy()) for u, e in zip(utts, emb)}, tmp)
        return [pt]
    raise ValueError(f"unknown format '{fmt}', choose one of: {', '.join(FORMATS)}")


def extract(cfg: DictConfig) -> None:
    """The command (stklia/conf/commands/extract.yaml): the embeddings of a data set, written as cfg.format."""
    if cfg.format not in FORMATS:
        raise InputError("format", f"'{cfg.format}' is not one of {', '.join(FORMATS)}")
    trained = load_trained(cfg.model_dir, cfg.checkpoint)
    data, name = load_named(trained.config.data, cfg.data)
    device = resolve_device(cfg.device)
    frames = np.zeros(len(data.utts), dtype=np.int64)
    emb = embed_utterances(trained.generator.to(device), data, data.utts,
                           Extraction.of(cfg, device, trained.config.data.cmn), frames)
    out_dir = Path(cfg.out_dir) if cfg.out_dir else Path(cfg.model_dir) / "embeddings" / name
    written = write_embeddings(out_dir, data.utts, emb, cfg.format)
    quality = out_dir / QUALITY_FILE  # the durations (and norms) quality-aware calibration reads
    Quality(data.utts, {"frames": frames, "norm": np.linalg.norm(emb, axis=1)}).write(quality)
    for path in [*written, quality]:
        print(f"wrote {path}")
