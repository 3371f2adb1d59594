"""Linear discriminant analysis of embeddings, as Kaldi's ``ivector-compute-lda``.

The projection maximises between-speaker over within-speaker variance: the within-speaker
covariance W (optionally interpolated with the total covariance T by ``total_covariance_factor``)
is made unit by a normalising transform P, the between-speaker covariance T - W is then
diagonalised in that space, and the ``dim`` directions of largest between-speaker variance are
kept. As in Kaldi the result is affine (it also removes the training mean), the covariances are
normalised by the number of utterances (every utterance weighs the same, whatever its
speaker's count), and the eigenvalues of the normalised matrix are floored at
``covariance_floor`` times the largest. Projected training data therefore has unit
within-speaker covariance and diagonal between-speaker covariance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def normalizing_transform(covariance: np.ndarray, floor: float = 1e-6) -> np.ndarray:
    """P with P C P^T = I, from C's eigendecomposition (eigenvalues floored at floor x the largest):
    Kaldi's ComputeNormalizingTransform. Rows are the principal directions, largest variance first."""
    values, vectors = np.linalg.eigh(covariance)
    values, vectors = values[::-1], vectors[:, ::-1]
    values = np.maximum(values, floor * values[0])
    return vectors.T / np.sqrt(values)[:, None]


def speaker_statistics(emb: np.ndarray, speakers: Sequence[str]
                       ) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Sorted speaker ids, their utterance counts and mean embeddings, and each utterance's speaker index."""
    if len(speakers) != len(emb):
        raise ValueError(f"{len(emb)} embeddings but {len(speakers)} speaker labels")
    names, inverse, counts = np.unique(np.asarray(speakers), return_inverse=True, return_counts=True)
    sums = np.zeros((len(counts), emb.shape[1]))
    np.add.at(sums, inverse, emb)
    return names.tolist(), counts, sums / counts[:, None], inverse


@dataclass(frozen=True)
class Lda:
    """The affine map x -> transform @ x + offset."""

    transform: np.ndarray  # (dim, input dim)
    offset: np.ndarray  # (dim,): -transform @ training mean

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float64) @ self.transform.T + self.offset

    @classmethod
    def fit(cls, emb: np.ndarray, speakers: Sequence[str], dim: int, total_covariance_factor: float = 0.0,
            covariance_floor: float = 1e-6) -> Lda:
        """Kaldi's ivector-compute-lda --dim=dim on these embeddings, labelled by speaker."""
        x = np.asarray(emb, dtype=np.float64)
        num_utts, input_dim = x.shape
        if not 0 < dim <= input_dim:
            raise ValueError(f"LDA dimension must be in 1..{input_dim} (the embedding size), got {dim}")
        if not 0.0 <= total_covariance_factor <= 1.0:
            raise ValueError(f"total_covariance_factor must be in [0, 1], got {total_covariance_factor}")
        _, counts, means, _ = speaker_statistics(x, speakers)
        if num_utts == len(counts):
            raise ValueError("LDA needs speakers with several utterances: every speaker has one")
        if num_utts < input_dim:
            raise ValueError(f"LDA of {input_dim}-dimensional embeddings needs at least {input_dim} utterances, "
                             f"got {num_utts}")
        mean = x.mean(axis=0)
        centred, means = x - mean, means - mean
        total = centred.T @ centred / num_utts
        between = (means * counts[:, None]).T @ means / num_utts
        within = total - between
        normalize = normalizing_transform(total_covariance_factor * total + (1 - total_covariance_factor) * within,
                                          covariance_floor)
        _, vectors = np.linalg.eigh(normalize @ between @ normalize.T)
        transform = vectors[:, ::-1][:, :dim].T @ normalize  # largest between-speaker variance first
        return cls(transform, -transform @ mean)
