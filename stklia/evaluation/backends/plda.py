"""Two-covariance PLDA, as Kaldi's ``ivector-compute-plda`` and ``ivector-plda-scoring``.

Model (Ioffe 2006; the two-covariance form of Brümmer and de Villiers 2010): an embedding is
x = mean + y + e, with a speaker variable y ~ N(0, B) shared by all of a speaker's embeddings and
per-embedding noise e ~ N(0, W). What mirrors which Kaldi step:

* ``Plda.fit``: ``ivector-compute-plda`` (``PldaEstimator``). B = W = I to start, then
  ``num_em_iters`` (default 10, as Kaldi) EM iterations; the E-step infers each speaker's y from
  the mean of their n embeddings, once per distinct n; W is estimated from the within-speaker
  scatter (sum of n - 1 per speaker) plus the uncertainty of y, B from the posterior of y. Every
  speaker weighs 1; the model mean is the mean of the speaker means.
* ``Plda.from_covariances``: ``PldaEstimator::GetOutput``: the transform that makes W unit
  (inverse Cholesky factor) and B diagonal (psi, eigenvalues sorted, floored at 0).
* ``Plda.transform``: ``Plda::TransformIvector`` with ``normalize_length=true`` (Kaldi's
  default): in the model space each vector is scaled so that its squared norm, weighted by
  1 / (psi + 1/n), equals the dimension, n being the number of embeddings it averages.
* ``Plda.scoring_tables``: ``Plda::LogLikelihoodRatio``: log N(test | n psi / (n psi + 1) enroll,
  1 + psi / (n psi + 1)) - log N(test | 0, 1 + psi), written as one dot product per trial.
* ``PldaBackend``: Kaldi's VoxCeleb v2 x-vector recipe around them: ``ivector-mean`` and
  ``ivector-subtract-global-mean`` (training mean), ``ivector-compute-lda`` / ``transform-vec``
  (optional, ``lda_dim``), ``ivector-normalize-length`` (norm sqrt(dim)), then the PLDA trained
  on the result; an enrolled speaker is the mean of their raw embeddings (``ivector-mean``),
  processed the same way and scored with n = their number of utterances (``--num-utts``).
  Not mirrored: ``ivector-copy-plda --smoothing`` (the recipe uses 0).
* ``Plda.adapt``: ``ivector-adapt-plda`` (``PldaUnsupervisedAdaptor``): unsupervised adaptation to unlabelled
  in-domain vectors. Their total covariance (plus the outer product of their mean's offset from the model's
  mean, ``--mean-diff-scale=1``) is compared with the model's, W + B, in the space where W + B is unit; in each
  direction where it is larger, ``within_covar_scale`` (Kaldi's default 0.3) of the excess is added to W and
  ``between_covar_scale`` (0.7) to B; the model's mean becomes theirs. ``PldaBackend.adapt`` does it as Kaldi's
  SRE16 recipe (``egs/sre16/v2``): the in-domain mean replaces the training mean, the LDA is kept, and the
  PLDA is adapted to the in-domain embeddings so preprocessed (the recipe's scales are 0.75 and 0.25).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.linalg import solve_triangular

from stklia.evaluation.backends.arrays import load_arrays, save_arrays
from stklia.evaluation.backends.lda import Lda, speaker_statistics
from stklia.evaluation.backends.normalize import EmbeddingNormalizer, unit


def normalize_length(x: np.ndarray) -> np.ndarray:
    """ivector-normalize-length: rows scaled to norm sqrt(dim), the norm of a unit-covariance vector."""
    return unit(x) * np.sqrt(x.shape[1])


@dataclass(frozen=True)
class Plda:
    """Kaldi's Plda object: `transform` maps x - mean to a space where W = I and B = diag(psi)."""

    mean: np.ndarray  # (dim,)
    transform: np.ndarray  # (dim, dim)
    psi: np.ndarray  # (dim,) between-speaker variances in that space, decreasing

    @classmethod
    def from_covariances(cls, mean: np.ndarray, between: np.ndarray, within: np.ndarray) -> Plda:
        """The model of given mean, between-speaker covariance B and within-speaker covariance W."""
        try:
            lower = np.linalg.cholesky(within)
        except np.linalg.LinAlgError:
            raise ValueError("the within-speaker covariance is singular: too few utterances per dimension?") from None
        whiten = solve_triangular(lower, np.eye(len(lower)), lower=True)  # C^{-1}, W = C C^T
        psi, vectors = np.linalg.eigh(whiten @ between @ whiten.T)
        psi, vectors = np.maximum(psi[::-1], 0.0), vectors[:, ::-1]
        return cls(np.asarray(mean, dtype=np.float64), vectors.T @ whiten, psi)

    @classmethod
    def fit(cls, emb: np.ndarray, speakers: Sequence[str], num_em_iters: int = 10) -> Plda:
        """ivector-compute-plda: EM estimate of B and W from embeddings labelled by speaker."""
        x = np.asarray(emb, dtype=np.float64)
        _, counts, means, inverse = speaker_statistics(x, speakers)
        if len(counts) == len(x):
            raise ValueError("PLDA needs speakers with several utterances: every speaker has one")
        mean = means.mean(axis=0)  # every speaker weighs 1
        deviations = x - means[inverse]
        scatter = deviations.T @ deviations
        offsets = means - mean
        dim = x.shape[1]
        between, within = np.eye(dim), np.eye(dim)
        groups = [(n, offsets[counts == n]) for n in np.unique(counts)]
        for _ in range(num_em_iters):
            between_inv, within_inv = np.linalg.inv(between), np.linalg.inv(within)
            between_stats, within_stats = np.zeros((dim, dim)), scatter.copy()
            for n, m in groups:
                # speaker mean m = y + noise/n: y | m ~ N(w, mixed), mixed = (B^-1 + n W^-1)^-1
                mixed = np.linalg.inv(between_inv + n * within_inv)
                w = m @ (n * within_inv) @ mixed
                between_stats += len(m) * mixed + w.T @ w
                within_stats += n * (len(m) * mixed + (m - w).T @ (m - w))
            between = between_stats / len(counts)
            within = within_stats / len(x)  # sum of n - 1 per speaker from the scatter, plus 1 per speaker
        return cls.from_covariances(mean, between, within)

    def adapt(self, x: np.ndarray, within_covar_scale: float = 0.3, between_covar_scale: float = 0.7) -> Plda:
        """ivector-adapt-plda: the model adapted to unlabelled in-domain vectors x (preprocessed as its own)."""
        x = np.asarray(x, dtype=np.float64)
        mean = x.mean(axis=0)
        centred, offset = x - mean, mean - self.mean
        variance = centred.T @ centred / len(x) + np.outer(offset, offset)  # Kaldi's --mean-diff-scale=1
        to_total = self.transform / np.sqrt(1.0 + self.psi)[:, None]  # W + B = I in this space
        eigenvalues, vectors = np.linalg.eigh(to_total @ variance @ to_total.T)
        back = np.linalg.inv(to_total) @ vectors
        excess = (back * np.maximum(eigenvalues - 1.0, 0.0)) @ back.T  # in-domain variance beyond W + B
        return Plda.from_covariances(mean, self.between + between_covar_scale * excess,
                                     self.within + within_covar_scale * excess)

    @property
    def within(self) -> np.ndarray:
        """The within-speaker covariance W in the input space."""
        inverse = np.linalg.inv(self.transform)
        return inverse @ inverse.T

    @property
    def between(self) -> np.ndarray:
        """The between-speaker covariance B in the input space."""
        inverse = np.linalg.inv(self.transform)
        return (inverse * self.psi) @ inverse.T

    def transform_vectors(self, x: np.ndarray, counts: np.ndarray | int = 1, normalize_length: bool = True
                          ) -> np.ndarray:
        """Kaldi's TransformIvector of each row, the mean of counts[i] embeddings (1: a single utterance)."""
        y = (np.asarray(x, dtype=np.float64) - self.mean) @ self.transform.T
        if normalize_length:
            n = np.broadcast_to(np.asarray(counts, dtype=np.float64), len(y))[:, None]
            y *= np.sqrt(y.shape[1] / np.sum(y**2 / (self.psi + 1.0 / n), axis=1, keepdims=True))
        return y

    def scoring_tables(self, y: np.ndarray, counts: np.ndarray | int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Rows E (enrollment side: y[i] averages counts[i] embeddings) and T (test side, one embedding) of
        transformed vectors y such that Kaldi's LogLikelihoodRatio(y[i], counts[i], y[j]) = E[i] @ T[j]."""
        n = np.broadcast_to(np.asarray(counts, dtype=np.float64), len(y))[:, None]
        psi = self.psi
        shrunk = n * psi / (n * psi + 1.0) * y  # mean of the test vector given the enrollment
        variance = 1.0 + psi / (n * psi + 1.0)  # ... and its variance; without a class: 1 + psi
        constant = 0.5 * (np.sum(np.log1p(psi)) - np.sum(np.log(variance) + shrunk**2 / variance, axis=1))
        enroll = np.hstack([shrunk / variance, 0.5 / (1.0 + psi) - 0.5 / variance, constant[:, None]])
        test = np.hstack([y, y**2, np.ones((len(y), 1))])
        return enroll, test


@dataclass(frozen=True)
class PldaBackend:
    """Kaldi's x-vector PLDA recipe: subtract the training mean, LDA, length-normalise, PLDA."""

    projection: EmbeddingNormalizer  # the training mean, and the LDA's linear part (if any)
    plda: Plda

    def preprocess(self, emb: np.ndarray) -> np.ndarray:
        """ivector-subtract-global-mean | transform-vec (LDA) | ivector-normalize-length."""
        return normalize_length(self.projection(emb))

    @classmethod
    def fit(cls, emb: np.ndarray, speakers: Sequence[str], lda_dim: int | None = None, num_em_iters: int = 10
            ) -> PldaBackend:
        """The recipe's training stage on embeddings labelled by speaker."""
        x = np.asarray(emb, dtype=np.float64)
        mean = x.mean(axis=0)
        # Kaldi's LDA also subtracts the mean of its (already centred) input: a zero offset here.
        lda = None if lda_dim is None else Lda.fit(x - mean, speakers, lda_dim).transform
        projection = EmbeddingNormalizer(mean, lda)
        return cls(projection, Plda.fit(normalize_length(projection(x)), speakers, num_em_iters))

    def adapt(self, emb: np.ndarray, within_covar_scale: float = 0.3, between_covar_scale: float = 0.7
              ) -> PldaBackend:
        """Kaldi's SRE16 recipe's adaptation to unlabelled in-domain embeddings: their mean subtracted instead of
        the training one, the same LDA, the PLDA adapted (Plda.adapt) to them so preprocessed."""
        x = np.asarray(emb, dtype=np.float64)
        projection = EmbeddingNormalizer(x.mean(axis=0), self.projection.projection)
        vectors = normalize_length(projection(x))
        return type(self)(projection, self.plda.adapt(vectors, within_covar_scale, between_covar_scale))

    def scoring_tables(self, emb: np.ndarray, counts: np.ndarray | int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Enrollment- and test-side tables (see Plda.scoring_tables) of raw embeddings or means of counts[i]."""
        return self.plda.scoring_tables(self.plda.transform_vectors(self.preprocess(emb), counts), counts)

    def save(self, path: str | os.PathLike) -> None:
        save_arrays(path, mean=self.projection.mean, projection=self.projection.projection, plda_mean=self.plda.mean,
                    plda_transform=self.plda.transform, plda_psi=self.plda.psi)

    @classmethod
    def load(cls, path: str | os.PathLike) -> PldaBackend:
        a = load_arrays(path, ["mean", "plda_mean", "plda_transform", "plda_psi"], ["projection"])
        plda = Plda(a["plda_mean"], a["plda_transform"], a["plda_psi"])
        return cls(EmbeddingNormalizer(a["mean"], a["projection"]), plda)
