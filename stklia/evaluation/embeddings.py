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

Windowed extraction (`window=` and `hop=` seconds, for diarization) embeds each utterance's windows as
utterances of their own (`window_spans`: the one windowing of extract and of `stklia.load(...).embed_windows`),
keyed as Kaldi's sub-segments are: `<utt>-<start>-<end>`, in centiseconds from the utterance's start, zero-padded
to 8 digits (utils/data/get_uniform_subsegments.py).
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
from stklia.data.datasets import Utterances, feature_tensor, stop_workers
from stklia.data.features import subtract_mean
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


def forward_batch(model: Generator, batch: list[tuple[int, torch.Tensor]], device: torch.device
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(indices, embeddings) of one batch of (index, feats) pieces, padded, with their lengths."""
    index = np.array([i for i, _ in batch])
    lengths = torch.tensor([len(feats) for _, feats in batch])
    feats = pad_sequence([feats for _, feats in batch], batch_first=True)
    return index, model(feats.to(device), lengths.to(device)).float().cpu().numpy()


@torch.inference_mode()
def embed_features(model: Generator, feats: Iterable[torch.Tensor], settings: Extraction) -> np.ndarray:
    """Embeddings (n, emb_size) of feature matrices (mean-normalised already, when settings.cmn), in order, by
    length-sorted padded batches of `model` (an extraction_model)."""
    rows: dict[int, np.ndarray] = {}
    for batch in length_batches(enumerate(feats), settings.frames_per_batch):
        index, emb = forward_batch(model, batch, settings.device)
        rows.update(zip(index.tolist(), emb))
    return np.stack([rows[i] for i in range(len(rows))]) if rows else np.zeros((0, model.emb_size), np.float32)


def window_spans(total: int, window: int, hop: int) -> list[tuple[int, int]]:
    """(start, end) of the windows of `window` units every `hop` units over `total` units (samples or frames):
    from 0 until one reaches the end, the last one cut there; one window of everything when total <= window."""
    if window < 1 or hop < 1:
        raise InputError("window", f"window ({window}) and hop ({hop}) must be at least one sample or frame")
    spans = [(0, min(window, total))]
    while spans[-1][1] < total and spans[-1][0] + hop < total:  # (a hop longer than the window leaves gaps)
        start = spans[-1][0] + hop
        spans.append((start, min(start + window, total)))
    return spans


def subsegment_key(utt: str, start: float, end: float) -> str:
    """Kaldi's name of the sub-segment start..end (seconds from the utterance's start) of `utt`."""
    return f"{utt}-{round(100 * start):08d}-{round(100 * end):08d}"


@torch.inference_mode()
def embed_utterances(generator: Generator, data: DataSet, utts: list[str], settings: Extraction,
                     frames: np.ndarray | None = None) -> np.ndarray:
    """Embeddings (len(utts), emb_size) of whole utterances, with the generator in eval mode; `frames`, when given,
    receives each utterance's number of feature frames (its duration, a quality measure: evaluation.quality)."""
    loaded = iter(DataLoader(Utterances(data, utts, settings.cmn), batch_size=None, num_workers=settings.num_workers))
    num_chunks = np.zeros(len(utts), dtype=np.int64)  # filled as the utterances are read

    def pieces() -> Iterator[tuple[int, torch.Tensor]]:
        for i, feats in enumerate(loaded):
            if len(feats) < generator.min_frames:
                path, line = data.origin[utts[i]]
                raise InputError(path, f"'{utts[i]}' has {len(feats)} frames, the model needs at least "
                                 f"{generator.min_frames}", line)
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
                index, emb = forward_batch(model, batch, device)
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


def utterance_windows(data: DataSet, utt: str, window: float, hop: float, cmn: bool, frame_shift_ms: float,
                      min_frames: int = 1) -> Iterator[tuple[str, float, float, torch.Tensor]]:
    """(sub-segment key, start, end in seconds, features) of each window of an utterance: an audio utterance's
    windows of samples, each featurised as an utterance of its own; a feature utterance's windows of frames."""
    if utt in data.audio:
        samples, rate = data.read_audio(utt), data.features.sample_rate
        spans = window_spans(len(samples), round(window * rate), round(hop * rate))
        pieces = ((start / rate, end / rate, data.features(samples[start:end])) for start, end in spans)
    else:
        feats, shift = data.load(utt), frame_shift_ms / 1000
        spans = window_spans(len(feats), round(window / shift), round(hop / shift))
        pieces = ((start * shift, end * shift, feats[start:end]) for start, end in spans)
    for start, end, feats in pieces:
        if len(feats) < min_frames:
            path, line = data.origin[utt]
            raise InputError(path, f"window {start:.2f}-{end:.2f} s of '{utt}' has {len(feats)} frames, the model "
                             f"needs at least {min_frames}", line)
        yield subsegment_key(utt, start, end), start, end, feature_tensor(subtract_mean(feats) if cmn else feats)


def extract_windows(generator: Generator, data: DataSet, settings: Extraction, window: float, hop: float,
                    frame_shift_ms: float) -> tuple[list[tuple[str, str, float, float]], np.ndarray, np.ndarray]:
    """The sub-segments (key, utterance, start, end) of every utterance's windows, their embeddings and their
    numbers of frames."""
    segments: list[tuple[str, str, float, float]] = []
    frames: list[int] = []

    def windows() -> Iterator[torch.Tensor]:
        with progress_bar(data.utts, desc="windows", unit="utt", enabled=settings.progress, leave=False) as utts:
            for utt in utts:
                for key, start, end, feats in utterance_windows(data, utt, window, hop, settings.cmn, frame_shift_ms,
                                                                generator.min_frames):
                    segments.append((key, utt, start, end))
                    frames.append(len(feats))
                    yield feats

    emb = embed_features(extraction_model(generator, settings.device), windows(), settings)
    return segments, emb, np.array(frames, dtype=np.int64)


def write_subsegments(out_dir: Path, segments: list[tuple[str, str, float, float]]) -> Path:
    """Kaldi's sub-segments table `<key> <utterance> <start> <end>` (seconds), as get_uniform_subsegments.py
    prints it."""
    path = out_dir / "subsegments"
    with atomic_output(path) as tmp:
        tmp.write_text("".join(f"{key} {utt} {start:.3f} {end:.3f}\n" for key, utt, start, end in segments))
    return path


def extract(cfg: DictConfig) -> None:
    """The command (stklia/conf/commands/extract.yaml): the embeddings of a data set, written as cfg.format; with
    `window` (and `hop`) seconds, those of every utterance's windows, keyed as Kaldi's sub-segments."""
    if cfg.format not in FORMATS:
        raise InputError("format", f"'{cfg.format}' is not one of {', '.join(FORMATS)}")
    if (cfg.window is None) != (cfg.hop is None) or (cfg.window is not None and min(cfg.window, cfg.hop) <= 0):
        raise InputError("window", f"give both window and hop, in seconds above 0 (window={cfg.window}, "
                         f"hop={cfg.hop})")
    trained = load_trained(cfg.model_dir, cfg.checkpoint)
    data, name = load_named(trained.config.data, cfg.data)
    device = resolve_device(cfg.device)
    settings = Extraction.of(cfg, device, trained.config.data.cmn)
    generator = trained.generator.to(device)
    if cfg.window is None:
        keys, frames = data.utts, np.zeros(len(data.utts), dtype=np.int64)
        emb = embed_utterances(generator, data, keys, settings, frames)
    else:
        name = f"{name}-window{cfg.window:g}-hop{cfg.hop:g}"
        frame_shift_ms = (trained.config.data.get("features") or {}).get("frame_shift_ms", 10.0)
        segments, emb, frames = extract_windows(generator, data, settings, cfg.window, cfg.hop, frame_shift_ms)
        keys = [key for key, *_ in segments]
    out_dir = Path(cfg.out_dir) if cfg.out_dir else Path(cfg.model_dir) / "embeddings" / name
    written = write_embeddings(out_dir, keys, emb, cfg.format)
    if cfg.window is not None:
        written.append(write_subsegments(out_dir, segments))
    quality = out_dir / QUALITY_FILE  # the durations (and norms) quality-aware calibration reads
    Quality(keys, {"frames": frames, "norm": np.linalg.norm(emb, axis=1)}).write(quality)
    for path in [*written, quality]:
        print(f"wrote {path}")
