"""Python API on a model directory (trained by stklia.train or written by stklia.import_model), without Hydra:

    import stklia
    model = stklia.load("exp/demo-resnet_small-arcface")     # checkpoint="last" | "best" | N | name; device="auto"
    emb = model.embed("utt.wav")                              # a path (any wav.scp entry)
    emb = model.embed(samples, sample_rate=8000)              # a waveform (numpy or torch), resampled if need be
    emb = model.embed(feats, features=True)                   # a (frames, dims) feature matrix, said explicitly
    embs = model.embed_batch(["a.wav", "b.wav", samples], sample_rate=16000)   # equal to one by one
    embs, times = model.embed_windows("meeting.wav", window=1.5, hop=0.75)    # (n, emb_size), (n, 2) seconds
    score = model.score("a.wav", "b.wav")                     # cosine similarity

A waveform's values are read as audio libraries give them: floats in [-1, 1] (soundfile, torchaudio, librosa)
or integers (16-bit PCM). Every input is embedded by the code test and extract use: its front end, its mean
normalisation, length-sorted padded batches whose padding changes nothing. An input that cannot give an
embedding (empty, silent, too short for the model, NaN or Inf) is an InputError of one line naming it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from scipy.signal import resample_poly
from torch import nn

from stklia.core.config import build
from stklia.core.devices import resolve_device
from stklia.core.errors import InputError
from stklia.data.audio import first_non_finite, int16_scale, read_audio
from stklia.data.features import subtract_mean
from stklia.evaluation.embeddings import Extraction, embed_features, extraction_model, window_spans
from stklia.modeldir.trained import load_trained

Input = str | os.PathLike | np.ndarray | torch.Tensor


class StandaloneGenerator(nn.Module):
    """Features (batch, frames, dims) -> embeddings (batch, emb_size), with the training's mean
    normalisation built in: what `stklia.export` exports."""

    def __init__(self, generator: nn.Module, cmn: bool):
        super().__init__()
        self.generator = generator.eval()
        self.cmn = cmn

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        if self.cmn:
            feats = subtract_mean(feats)
        return self.generator(feats)


class SpeakerModel:
    """A model directory's generator with the front end and normalisation it was trained (or published) with."""

    def __init__(self, model_dir: str | os.PathLike, checkpoint: str | int = "last", device: str = "cpu",
                 batch_frames: int | None = None):
        trained = load_trained(model_dir, checkpoint)
        cfg, self.step = trained.config, trained.step
        self.device = resolve_device(device)
        self.cmn = bool(cfg.data.cmn)
        self.network = StandaloneGenerator(trained.generator, self.cmn)
        self.features_per_frame = int(cfg.data.features_per_frame)
        self.features = build(cfg.data.features) if cfg.data.get("features") else None
        self.settings = Extraction(self.device, self.cmn, progress=False, batch_frames=batch_frames)
        self._model = extraction_model(trained.generator, self.device).to(self.device)
        self.min_frames = int(getattr(trained.generator, "min_frames", 1))

    @property
    def emb_size(self) -> int:
        return int(self._model.emb_size)

    def waveform(self, x: Input, sample_rate: int | None, name: str) -> np.ndarray:
        """The int16-scaled samples of a path or a 1-D waveform, at the front end's sample rate."""
        if self.features is None:
            raise InputError(name, "this model's config has no front end (data.features): give features=True")
        if isinstance(x, (str, os.PathLike)):
            try:
                samples, rate = read_audio(os.fspath(x))
            except Exception as err:  # soundfile, kaldiio and pipes raise many kinds for broken audio
                raise InputError(x, f"cannot read audio: {err}") from None
        else:
            samples = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
            if samples.ndim != 1:
                raise InputError(name, f"a waveform is 1-D, this has shape {samples.shape}: give features=True for a "
                                 "(frames, dims) feature matrix")
            if sample_rate is None:
                raise InputError(name, "a waveform needs its sample_rate=")
            if samples.dtype.kind not in "iuf":
                raise InputError(name, f"a waveform of {samples.dtype} values")
            samples, rate = int16_scale(samples), int(sample_rate)
        if len(samples) == 0:
            raise InputError(name, "is empty")
        bad = first_non_finite(samples)
        if bad is not None:
            raise InputError(name, f"holds non-finite samples (NaN or Inf), first at sample {bad}")
        if rate != self.features.sample_rate:
            common = math.gcd(rate, self.features.sample_rate)
            samples = resample_poly(samples, self.features.sample_rate // common, rate // common).astype(np.float32)
        if not np.any(np.abs(samples) >= 1):  # below one step of 16-bit audio: digital silence
            raise InputError(name, "is silent (no sample reaches one step of 16-bit audio)")
        return samples

    def feature_matrix(self, x: Input, name: str) -> np.ndarray:
        feats = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        if feats.ndim != 2 or feats.shape[1] != self.features_per_frame:
            raise InputError(name, f"features of shape {feats.shape}, expected (frames, {self.features_per_frame})")
        bad = first_non_finite(feats)
        if bad is not None:
            raise InputError(name, f"features hold non-finite values (NaN or Inf), first at frame {bad}")
        return feats.astype(np.float32)

    def prepared(self, feats: np.ndarray, name: str) -> torch.Tensor:
        """Features as the model sees them: enough frames, mean-normalised as in training."""
        if len(feats) < self.min_frames:
            raise InputError(name, f"is too short: {len(feats)} frames, the model needs at least {self.min_frames}")
        return torch.from_numpy(np.ascontiguousarray(subtract_mean(feats) if self.cmn else feats))

    def features_of(self, x: Input, sample_rate: int | None = None, features: bool = False,
                    name: str = "input") -> np.ndarray:
        """(frames, dims) features of one input: a feature matrix (features=True), or audio's through the front end."""
        if features:
            return self.feature_matrix(x, name)
        return self.features(self.waveform(x, sample_rate, name))

    def embed_batch(self, inputs: Sequence[Input], sample_rate: int | None = None,
                    features: bool = False) -> np.ndarray:
        """(len(inputs), emb_size) embeddings, batched as test and extract batch: equal to embedding them one by one."""
        return self._embed([(x, input_name(x, i)) for i, x in enumerate(inputs)], sample_rate, features)

    def embed(self, x: Input, sample_rate: int | None = None, features: bool = False) -> np.ndarray:
        """The (emb_size,) embedding of one input: a path, a waveform (with sample_rate=) or, with features=True,
        a (frames, dims) feature matrix."""
        return self._embed([(x, input_name(x, None))], sample_rate, features)[0]

    def _embed(self, named: list[tuple[Input, str]], sample_rate: int | None, features: bool) -> np.ndarray:
        prepared = [self.prepared(self.features_of(x, sample_rate, features, name), name) for x, name in named]
        return embed_features(self._model, prepared, self.settings)

    def embed_windows(self, x: Input, window: float = 1.5, hop: float = 0.75, sample_rate: int | None = None,
                      features: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings of `window`-second windows every `hop` seconds of a long recording (each window embedded as
        an utterance of its own, as `stklia.extract window= hop=` does), and their (start, end) times in seconds:
        arrays (n, emb_size) and (n, 2)."""
        name = input_name(x, None)
        if min(window, hop) <= 0:
            raise InputError(name, f"window ({window}) and hop ({hop}) must be above 0 seconds")
        if features:
            feats = self.feature_matrix(x, name)
            shift = getattr(self.features, "frame_shift_ms", 10.0) / 1000
            spans = window_spans(len(feats), round(window / shift), round(hop / shift))
            pieces = [feats[start:end] for start, end in spans]
            times = np.array(spans, dtype=np.float64) * shift
        else:
            samples, rate = self.waveform(x, sample_rate, name), self.features.sample_rate
            spans = window_spans(len(samples), round(window * rate), round(hop * rate))
            pieces = [self.features(samples[start:end]) for start, end in spans]
            times = np.array(spans, dtype=np.float64) / rate
        prepared = [self.prepared(p, f"{name} at {t0:.2f}-{t1:.2f} s") for p, (t0, t1) in zip(pieces, times)]
        return embed_features(self._model, prepared, self.settings), times

    def score(self, a: Input, b: Input, sample_rate: int | None = None) -> float:
        """Cosine similarity of two utterances (or of embeddings, given as 1-d arrays of emb_size values)."""
        ea, eb = (x if isinstance(x, np.ndarray) and x.shape == (self.emb_size,) else self.embed(x, sample_rate)
                  for x in (a, b))
        return float(ea @ eb / max(np.linalg.norm(ea) * np.linalg.norm(eb), 1e-12))


def input_name(x: Input, index: int | None) -> str:
    """How an error names an input: its path, or the waveform's place in the batch."""
    if isinstance(x, (str, os.PathLike)):
        return os.fspath(x)
    return "input" if index is None else f"input {index}"


def load(model_dir: str | os.PathLike, checkpoint: str | int = "last", device: str = "cpu",
         batch_frames: int | None = None) -> SpeakerModel:
    """The model of a directory written by `stklia.train` or `stklia.import_model` (config.yaml + checkpoints/),
    on `device` (cpu, cuda, cuda:1, or auto: a GPU when there is one)."""
    return SpeakerModel(Path(model_dir), checkpoint, device, batch_frames)
