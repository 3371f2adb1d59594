"""Embedding normalisation before scoring: length, mean subtraction, whitening.

Cosine scoring measures angles from the origin, but a network's embeddings share a common
offset, so their angles are compressed; subtracting the mean embedding of a data set (the
training data, say) centres them first, as WeSpeaker does before cosine scoring. Whitening also
makes that set's covariance unit, optionally after LDA (within-speaker covariance unit, then the
result whitened). The statistics are computed once from the embeddings of a named data set,
stored (``save``/``load``), and applied identically to every embedding scored. ``adapt`` moves them to
unlabelled in-domain embeddings: their mean, and their whitening.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from stklia.evaluation.backends.arrays import load_arrays, save_arrays
from stklia.evaluation.backends.lda import Lda, normalizing_transform

KINDS = ("none", "mean", "whiten")


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1."""
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)


@dataclass(frozen=True)
class EmbeddingNormalizer:
    """x -> (x - mean), then projected by `projection` (rows: output dimensions) when there is one."""

    mean: np.ndarray
    projection: np.ndarray | None = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        centred = np.asarray(x, dtype=np.float64) - self.mean
        return centred if self.projection is None else centred @ self.projection.T

    @classmethod
    def fit(cls, emb: np.ndarray, kind: str, speakers: Sequence[str] | None = None, lda_dim: int | None = None
            ) -> EmbeddingNormalizer:
        """Statistics of `emb` for `kind` "mean" or "whiten" (after an LDA to lda_dim, which needs speakers)."""
        if kind not in KINDS[1:]:
            raise ValueError(f"normalisation kind must be one of {', '.join(KINDS[1:])}, got {kind!r}")
        x = np.asarray(emb, dtype=np.float64)
        mean = x.mean(axis=0)
        if kind == "mean":
            if lda_dim is not None:
                raise ValueError("an LDA dimension applies to whitening only")
            return cls(mean)
        lda = None
        if lda_dim is not None:
            if speakers is None:
                raise ValueError("whitening after LDA needs the speakers of the embeddings")
            lda = Lda.fit(x, speakers, lda_dim)
            x = lda(x)  # zero mean: the LDA removes the same training mean
        centred = x - x.mean(axis=0)
        whiten = normalizing_transform(centred.T @ centred / len(x))
        return cls(mean, whiten if lda is None else whiten @ lda.transform)

    def adapt(self, emb: np.ndarray) -> EmbeddingNormalizer:
        """The same normalisation with the statistics of unlabelled in-domain embeddings: their mean and, when it
        whitens, their whitening (after the labelled data's LDA, which unlabelled data cannot refit)."""
        x = np.asarray(emb, dtype=np.float64)
        mean = x.mean(axis=0)
        if self.projection is None:
            return type(self)(mean)
        y = (x - mean) @ self.projection.T
        return type(self)(mean, normalizing_transform(y.T @ y / len(y)) @ self.projection)

    def save(self, path: str | os.PathLike) -> None:
        save_arrays(path, mean=self.mean, projection=self.projection)

    @classmethod
    def load(cls, path: str | os.PathLike) -> EmbeddingNormalizer:
        return cls(**load_arrays(path, ["mean"], ["projection"]))
