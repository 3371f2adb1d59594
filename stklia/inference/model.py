"""Python API on a trained model directory, without Hydra's command line:

    import stklia
    model = stklia.load("exp/demo-resnet_small-arcface")   # checkpoint="last" | "best" | N | name
    emb = model.embed("utt.wav")                            # or a (frames, dims) feature matrix
    score = model.score("a.wav", "b.wav")                   # cosine similarity
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from stklia.core.config import build
from stklia.data.audio import read_checked_audio
from stklia.data.features import subtract_mean
from stklia.modeldir.trained import load_trained

Input = str | os.PathLike | np.ndarray | torch.Tensor


class StandaloneGenerator(nn.Module):
    """Features (batch, frames, dims) -> embeddings (batch, emb_size), with the training's mean
    normalisation built in: what `embed` runs and what `stklia.export` exports."""

    def __init__(self, generator: nn.Module, cmn: bool):
        super().__init__()
        self.generator = generator.eval()
        self.cmn = cmn

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        if self.cmn:
            feats = subtract_mean(feats)
        return self.generator(feats)


class SpeakerModel:
    """A trained generator with the feature extraction and normalisation it was trained with."""

    def __init__(self, model_dir: str | os.PathLike, checkpoint: str | int = "last", device: str = "cpu"):
        trained = load_trained(model_dir, checkpoint)
        cfg, self.step = trained.config, trained.step
        self.device = torch.device(device)
        self.network = StandaloneGenerator(trained.generator, bool(cfg.data.cmn)).to(self.device)
        self.features_per_frame = int(cfg.data.features_per_frame)
        self.features = build(cfg.data.features) if cfg.data.get("features") else None

    def features_of(self, x: Input) -> np.ndarray:
        """(frames, dims) features: computed from an audio file (any wav.scp entry), or `x` itself."""
        if isinstance(x, (str, os.PathLike)):
            if self.features is None:
                raise ValueError("this model's config has no data.features: give features, not audio")
            x = self.features(read_checked_audio(os.fspath(x), self.features.sample_rate, x))
        feats = np.array(x, dtype=np.float32)
        if feats.ndim != 2 or feats.shape[1] != self.features_per_frame:
            raise ValueError(f"features of shape {feats.shape}, expected (frames, {self.features_per_frame})")
        return feats

    @torch.inference_mode()
    def embed(self, x: Input) -> np.ndarray:
        """The (emb_size,) embedding of one utterance: an audio path or a (frames, dims) matrix."""
        feats = torch.from_numpy(self.features_of(x))[None].to(self.device)
        return self.network(feats)[0].float().cpu().numpy()

    def score(self, a: Input | np.ndarray, b: Input | np.ndarray) -> float:
        """Cosine similarity of two utterances (or of embeddings, given as 1-d arrays)."""
        ea, eb = (x if isinstance(x, np.ndarray) and x.ndim == 1 else self.embed(x) for x in (a, b))
        return float(ea @ eb / max(np.linalg.norm(ea) * np.linalg.norm(eb), 1e-12))


def load(model_dir: str | os.PathLike, checkpoint: str | int = "last", device: str = "cpu") -> SpeakerModel:
    """The model of a directory written by `stklia.train` (config.yaml + checkpoints/)."""
    return SpeakerModel(Path(model_dir), checkpoint, device)
