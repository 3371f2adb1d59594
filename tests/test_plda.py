"""LDA, two-covariance PLDA and embedding normalisation, against independent computations.

* PLDA log-likelihood ratios against the closed-form ratio of multivariate Gaussian densities
  (scipy), on data simulated from a known two-covariance model;
* PLDA estimates against the simulation's true covariances as the sample grows, and against
  the data likelihood (scipy) of nearby parameters (EM ends at a maximum);
* LDA against scipy's generalised symmetric eigensolver;
* normalisation statistics against their definitions;
* unsupervised adaptation against Kaldi's ivector-adapt-plda formulas written out here (a hand-worked 2-D case
  and random models), and the recipe's and the normalisers' in-domain statistics against their definitions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
from scipy.stats import multivariate_normal

from stklia.core.errors import InputError
from stklia.evaluation.backends.arrays import save_arrays
from stklia.evaluation.backends.lda import Lda
from stklia.evaluation.backends.normalize import EmbeddingNormalizer
from stklia.evaluation.backends.plda import Plda, PldaBackend, normalize_length

DIM = 5


def random_covariance(rng: np.random.Generator, dim: int, scale: float) -> np.ndarray:
    a = rng.normal(size=(dim, dim))
    return scale * (a @ a.T / dim + 0.1 * np.eye(dim))


@pytest.fixture(scope="module")
def model():
    """A known two-covariance model: mean, between-speaker B, within-speaker W."""
    rng = np.random.default_rng(0)
    return rng.normal(size=DIM), random_covariance(rng, DIM, 2.0), random_covariance(rng, DIM, 1.0)


def simulate(model, num_speakers: int, seed: int, utts=(2, 9)) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings x = mean + y_speaker + e, with a random number of utterances per speaker."""
    mean, between, within = model
    rng = np.random.default_rng(seed)
    counts = rng.integers(*utts, num_speakers)
    speakers = np.repeat(np.arange(num_speakers), counts)
    y = rng.multivariate_normal(np.zeros(DIM), between, num_speakers)
    x = mean + y[speakers] + rng.multivariate_normal(np.zeros(DIM), within, len(speakers))
    return x, np.char.add("spk", speakers.astype(str))


def same_speaker_logpdf(vectors: np.ndarray, mean, between, within) -> float:
    """log p(x_1..x_k) of k embeddings of one speaker: jointly Gaussian, cross-covariance B."""
    k = len(vectors)
    covariance = np.kron(np.ones((k, k)), between) + np.kron(np.eye(k), within)
    return multivariate_normal(np.tile(mean, k), covariance).logpdf(vectors.ravel())


def gaussian_llr(enroll: np.ndarray, test: np.ndarray, mean, between, within) -> float:
    """log p(enrollment and test from one speaker) / (p(enrollment) p(test))."""
    return (same_speaker_logpdf(np.vstack([enroll, test[None]]), mean, between, within)
            - same_speaker_logpdf(enroll, mean, between, within)
            - same_speaker_logpdf(test[None], mean, between, within))


def plda_llrs(plda: Plda, enrollments: list[np.ndarray], tests: np.ndarray) -> np.ndarray:
    """The implementation's LLRs (no length normalisation: the plain Gaussian model)."""
    counts = np.array([len(e) for e in enrollments])
    means = np.array([e.mean(axis=0) for e in enrollments])
    enroll, _ = plda.scoring_tables(plda.transform_vectors(means, counts, normalize_length=False), counts)
    _, test = plda.scoring_tables(plda.transform_vectors(tests, normalize_length=False))
    return np.einsum("ij,ij->i", enroll, test)


@pytest.mark.parametrize("fitted", [False, True])
def test_plda_llr_is_the_ratio_of_gaussian_densities(model, fitted: bool) -> None:
    x, speakers = simulate(model, 300, seed=1)
    plda = Plda.fit(x, speakers) if fitted else Plda.from_covariances(*model)
    mean, between, within = (plda.mean, plda.between, plda.within) if fitted else model
    rng = np.random.default_rng(2)
    enrollments, tests, expected = [], [], []
    for i in range(40):  # same-speaker and different-speaker trials, 1 to 4 enrollment utterances
        spk = speakers[rng.integers(len(x))]
        own = x[speakers == spk]
        n = min(int(rng.integers(1, 5)), len(own) - 1)
        enroll = own[:n]
        test = own[-1] if i % 2 else x[rng.integers(len(x))]
        enrollments.append(enroll)
        tests.append(test)
        expected.append(gaussian_llr(enroll, test, mean, between, within))
    got = plda_llrs(plda, enrollments, np.array(tests))
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert np.ptp(expected) > 5  # a real spread of scores, both signs
    assert min(expected) < 0 < max(expected)


def test_plda_parameters_diagonalise_the_covariances(model) -> None:
    mean, between, within = model
    plda = Plda.from_covariances(mean, between, within)
    np.testing.assert_allclose(plda.transform @ within @ plda.transform.T, np.eye(DIM), atol=1e-10)
    np.testing.assert_allclose(plda.transform @ between @ plda.transform.T, np.diag(plda.psi), atol=1e-10)
    assert np.all(np.diff(plda.psi) <= 0) and plda.psi[-1] > 0
    np.testing.assert_allclose(plda.between, between, rtol=1e-10)
    np.testing.assert_allclose(plda.within, within, rtol=1e-10)


def test_plda_estimates_converge_to_the_true_covariances(model) -> None:
    _, between, within = model
    errors = []
    for num_speakers in (100, 1000, 10000):
        plda = Plda.fit(*simulate(model, num_speakers, seed=num_speakers))
        errors.append([np.linalg.norm(plda.between - between) / np.linalg.norm(between),
                       np.linalg.norm(plda.within - within) / np.linalg.norm(within)])
    errors = np.array(errors)
    assert np.all(np.diff(errors, axis=0) < 0), errors  # every estimate improves with 10x the speakers
    assert np.all(errors[-1] < 0.05), errors


def test_plda_em_ends_at_a_likelihood_maximum(model) -> None:
    x, speakers = simulate(model, 60, seed=3, utts=(2, 5))

    def log_likelihood(mean, between, within) -> float:
        return sum(same_speaker_logpdf(x[speakers == s], mean, between, within) for s in np.unique(speakers))

    plda = Plda.fit(x, speakers, num_em_iters=300)
    best = log_likelihood(plda.mean, plda.between, plda.within)
    assert best > log_likelihood(*model)  # the maximum-likelihood fit beats the truth on its own sample
    rng = np.random.default_rng(4)
    for _ in range(6):
        step = random_covariance(rng, DIM, 0.01) - 0.01 * np.eye(DIM) * 0.5
        assert best > log_likelihood(plda.mean, plda.between + step, plda.within)
        assert best > log_likelihood(plda.mean, plda.between, plda.within + step)


def test_plda_length_normalisation_as_kaldi(model) -> None:
    # TransformIvector: the transformed vector's squared norm weighted by 1 / (psi + 1/n) is the dimension.
    plda = Plda.from_covariances(*model)
    x = np.random.default_rng(5).normal(size=(7, DIM)) * 3
    counts = np.array([1, 1, 2, 3, 5, 8, 13])
    y = plda.transform_vectors(x, counts)
    np.testing.assert_allclose(np.sum(y**2 / (plda.psi + 1 / counts[:, None]), axis=1), DIM, rtol=1e-12)
    raw = plda.transform_vectors(x, counts, normalize_length=False)
    np.testing.assert_allclose(raw, (x - plda.mean) @ plda.transform.T, rtol=1e-12)
    np.testing.assert_allclose(y / np.linalg.norm(y, axis=1, keepdims=True),
                               raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-12)


def test_plda_needs_repeated_speakers() -> None:
    with pytest.raises(ValueError, match="several utterances"):
        Plda.fit(np.eye(3), ["a", "b", "c"])


# --------------------------------------------------------------------------
# LDA
# --------------------------------------------------------------------------


def class_covariances(x: np.ndarray, speakers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kaldi's LDA statistics: within- and between-speaker covariances, per utterance."""
    centred = x - x.mean(axis=0)
    within, between = np.zeros((x.shape[1],) * 2), np.zeros((x.shape[1],) * 2)
    for s in np.unique(speakers):
        own = centred[speakers == s]
        deviation = own - own.mean(axis=0)
        within += deviation.T @ deviation
        between += len(own) * np.outer(own.mean(axis=0), own.mean(axis=0))
    return within / len(x), between / len(x)


def test_lda_matches_generalised_eigenproblem(model) -> None:
    x, speakers = simulate(model, 200, seed=6)
    lda = Lda.fit(x, speakers, dim=3)
    within, between = class_covariances(x, speakers)
    # Reference: S_b v = lambda S_w v, largest lambdas first (scipy's generalised symmetric solver).
    values = scipy.linalg.eigh(between, within, eigvals_only=True)[::-1][:3]
    projected = lda(x)
    w, b = class_covariances(projected, speakers)
    np.testing.assert_allclose(w, np.eye(3), atol=1e-10)  # within-speaker covariance unit
    np.testing.assert_allclose(b, np.diag(values), atol=1e-9)  # between-speaker diagonal, top eigenvalues
    np.testing.assert_allclose(projected.mean(axis=0), 0, atol=1e-10)  # the affine part removes the mean


def test_lda_errors(model) -> None:
    x, speakers = simulate(model, 20, seed=7)
    with pytest.raises(ValueError, match="LDA dimension"):
        Lda.fit(x, speakers, dim=DIM + 1)
    with pytest.raises(ValueError, match="several utterances"):
        Lda.fit(x[:10], np.arange(10).astype(str), dim=2)


# --------------------------------------------------------------------------
# Embedding normalisation and the Kaldi recipe back-end
# --------------------------------------------------------------------------


def test_mean_and_whitening_normalisers(model) -> None:
    x, speakers = simulate(model, 100, seed=8)
    centred = EmbeddingNormalizer.fit(x, "mean")(x)
    np.testing.assert_allclose(centred, x - x.mean(axis=0), atol=1e-12)
    white = EmbeddingNormalizer.fit(x, "whiten")(x)
    np.testing.assert_allclose(np.cov(white.T, bias=True), np.eye(DIM), atol=1e-10)
    np.testing.assert_allclose(white.mean(axis=0), 0, atol=1e-10)
    lda_white = EmbeddingNormalizer.fit(x, "whiten", speakers, lda_dim=2)(x)
    assert lda_white.shape == (len(x), 2)
    np.testing.assert_allclose(np.cov(lda_white.T, bias=True), np.eye(2), atol=1e-10)
    # Whitening after LDA keeps the LDA subspace: the same span as the LDA projection.
    lda = Lda.fit(x, speakers, 2)(x)
    coefficients = np.linalg.lstsq(lda, lda_white, rcond=None)[0]
    np.testing.assert_allclose(lda @ coefficients, lda_white, atol=1e-9)
    with pytest.raises(ValueError, match="normalisation kind"):
        EmbeddingNormalizer.fit(x, "zca")


def test_backend_mirrors_the_recipe_and_round_trips(model, tmp_path: Path) -> None:
    x, speakers = simulate(model, 150, seed=9)
    backend = PldaBackend.fit(x, speakers, lda_dim=3)
    # The recipe by hand: centre, LDA (Kaldi's, on the centred data), normalise to sqrt(dim), PLDA.
    centred = x - x.mean(axis=0)
    projected = Lda.fit(centred, speakers, 3)(centred)
    by_hand = projected / np.linalg.norm(projected, axis=1, keepdims=True) * np.sqrt(3)
    np.testing.assert_allclose(backend.preprocess(x), by_hand, atol=1e-10)
    plda = Plda.fit(by_hand, speakers)
    np.testing.assert_allclose(backend.plda.psi, plda.psi, rtol=1e-8)
    backend.save(tmp_path / "plda.npz")
    loaded = PldaBackend.load(tmp_path / "plda.npz")
    for a, b in zip(backend.scoring_tables(x[:9], np.arange(1, 10)), loaded.scoring_tables(x[:9], np.arange(1, 10))):
        np.testing.assert_array_equal(a, b)
    normalizer = EmbeddingNormalizer.fit(x, "whiten")
    normalizer.save(tmp_path / "white.npz")
    np.testing.assert_array_equal(EmbeddingNormalizer.load(tmp_path / "white.npz")(x), normalizer(x))


def test_bad_backend_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"missing\.npz: no such back-end file"):
        PldaBackend.load(tmp_path / "missing.npz")
    (tmp_path / "text.npz").write_text("not numpy\n")
    with pytest.raises(InputError, match=r"text\.npz: not a back-end statistics file"):
        EmbeddingNormalizer.load(tmp_path / "text.npz")
    save_arrays(tmp_path / "mean_only.npz", mean=np.zeros(3))
    with pytest.raises(InputError, match=r"mean_only\.npz: missing array\(s\) plda_mean, plda_transform, plda_psi"):
        PldaBackend.load(tmp_path / "mean_only.npz")


# --------------------------------------------------------------------------
# Unsupervised adaptation to unlabelled in-domain data
# --------------------------------------------------------------------------


def kaldi_adapted(mean, between, within, x, within_scale=0.3, between_scale=0.7):
    """PldaUnsupervisedAdaptor::UpdatePlda (Kaldi's src/ivector/plda.cc) in covariance terms: the adaptation
    data's variance V, plus the outer product of its mean's offset from the model's (--mean-diff-scale=1), seen
    where the model's total covariance T = W + B is unit (here by T^-1/2, the symmetric root: any whitening of T
    gives the same result); in each eigendirection where it exceeds 1, within_scale of the excess is added to W and
    between_scale to B, back in the input space; the model's mean becomes the data's."""
    m = x.mean(axis=0)
    variance = np.cov(x.T, bias=True) + np.outer(m - mean, m - mean)
    root = scipy.linalg.sqrtm(within + between).real
    white = np.linalg.solve(root, np.linalg.solve(root, variance).T)  # T^-1/2 V T^-1/2
    values, vectors = np.linalg.eigh(white)
    excess = root @ vectors @ np.diag(np.maximum(values - 1.0, 0.0)) @ vectors.T @ root
    return m, between + between_scale * excess, within + within_scale * excess


def test_plda_adaptation_hand_worked() -> None:
    # W = I, B = diag(1, 0.5): T = diag(2, 1.5). In-domain data of mean 0 and covariance diag(3, 1): seen where T is
    # unit, diag(1.5, 2/3): an excess of 0.5 along the first axis only, which is 0.5 * 2 = 1 in the input space;
    # W gets 0.3 of it, B 0.7: W = diag(1.3, 1), B = diag(1.7, 0.5).
    plda = Plda.from_covariances(np.zeros(2), np.diag([1.0, 0.5]), np.eye(2))
    x = np.array([[6**0.5, 0], [-(6**0.5), 0], [0, 2**0.5], [0, -(2**0.5)]])
    adapted = plda.adapt(x)
    np.testing.assert_allclose(adapted.within, np.diag([1.3, 1.0]), atol=1e-12)
    np.testing.assert_allclose(adapted.between, np.diag([1.7, 0.5]), atol=1e-12)
    np.testing.assert_allclose(adapted.mean, 0, atol=1e-12)
    # The recipe's scales (0.75, 0.25): W = diag(1.75, 1), B = diag(1.25, 0.5)
    adapted = plda.adapt(x, 0.75, 0.25)
    np.testing.assert_allclose(adapted.within, np.diag([1.75, 1.0]), atol=1e-12)
    np.testing.assert_allclose(adapted.between, np.diag([1.25, 0.5]), atol=1e-12)


@pytest.mark.parametrize("scales", [(0.3, 0.7), (0.75, 0.25), (1.0, 0.0)])
def test_plda_adaptation_as_kaldi(model, scales: tuple[float, float]) -> None:
    x, speakers = simulate(model, 150, seed=10)
    plda = Plda.fit(x, speakers)
    rng = np.random.default_rng(11)
    # in-domain data: more variance in some directions, less in others, and a shifted mean
    shift = rng.normal(size=(DIM, DIM)) * 0.4 + np.diag([1.6, 1.3, 0.7, 1.0, 1.2])
    in_domain = simulate(model, 80, seed=12)[0] @ shift.T + 0.5
    adapted = plda.adapt(in_domain, *scales)
    mean, between, within = kaldi_adapted(plda.mean, plda.between, plda.within, in_domain, *scales)
    np.testing.assert_allclose(adapted.mean, mean, atol=1e-10)
    np.testing.assert_allclose(adapted.between, between, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(adapted.within, within, rtol=1e-8, atol=1e-10)
    # Its LLRs are those of the adapted covariances' Gaussian densities, as any PLDA's.
    enroll, test = in_domain[:3], in_domain[3]
    expected = gaussian_llr(enroll, test, mean, between, within)
    assert plda_llrs(adapted, [enroll], test[None])[0] == pytest.approx(expected, rel=1e-6)
    # In-domain data no wider than the model in any direction changes nothing but the mean.
    narrow = plda.mean + (x - x.mean(axis=0)) * 0.5
    same = plda.adapt(narrow, *scales)
    np.testing.assert_allclose(same.within, plda.within, atol=1e-10)
    np.testing.assert_allclose(same.between, plda.between, atol=1e-10)


def test_backend_adaptation_as_the_sre16_recipe(model) -> None:
    x, speakers = simulate(model, 150, seed=13)
    backend = PldaBackend.fit(x, speakers, lda_dim=3)
    in_domain = simulate(model, 60, seed=14)[0] * 1.5 - 2.0
    adapted = backend.adapt(in_domain, 0.75, 0.25)
    # The recipe by hand: the in-domain mean subtracted (not the training one), the same LDA, length
    # normalisation, then ivector-adapt-plda on those vectors.
    np.testing.assert_allclose(adapted.projection.mean, in_domain.mean(axis=0), atol=1e-12)
    np.testing.assert_array_equal(adapted.projection.projection, backend.projection.projection)
    by_hand = normalize_length((in_domain - in_domain.mean(axis=0)) @ backend.projection.projection.T)
    mean, between, within = kaldi_adapted(backend.plda.mean, backend.plda.between, backend.plda.within, by_hand,
                                          0.75, 0.25)
    np.testing.assert_allclose(adapted.plda.between, between, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(adapted.plda.within, within, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(adapted.plda.mean, mean, atol=1e-12)


def test_normaliser_adaptation_uses_the_in_domain_statistics(model) -> None:
    x, speakers = simulate(model, 100, seed=15)
    in_domain = simulate(model, 50, seed=16)[0] @ np.diag([2.0, 1.0, 0.5, 1.0, 3.0]) + 1.0
    mean = EmbeddingNormalizer.fit(x, "mean").adapt(in_domain)
    np.testing.assert_allclose(mean(in_domain), in_domain - in_domain.mean(axis=0), atol=1e-12)
    assert mean.projection is None
    white = EmbeddingNormalizer.fit(x, "whiten").adapt(in_domain)(in_domain)
    np.testing.assert_allclose(np.cov(white.T, bias=True), np.eye(DIM), atol=1e-9)
    # whitenings differ by a rotation: cosines equal those of the in-domain data's symmetric whitening
    centred = in_domain - in_domain.mean(axis=0)
    symmetric = centred @ np.linalg.inv(scipy.linalg.sqrtm(np.cov(in_domain.T, bias=True)).real)
    def cosines(a: np.ndarray) -> np.ndarray:
        unit = a / np.linalg.norm(a, axis=1, keepdims=True)
        return unit @ unit.T
    np.testing.assert_allclose(cosines(white), cosines(symmetric), atol=1e-9)
    # after LDA (fitted on the labelled data): the in-domain data whitened within the same LDA subspace
    fitted = EmbeddingNormalizer.fit(x, "whiten", speakers, lda_dim=2)
    lda_white = fitted.adapt(in_domain)(in_domain)
    np.testing.assert_allclose(np.cov(lda_white.T, bias=True), np.eye(2), atol=1e-9)
    lda = Lda.fit(x, speakers, 2)(in_domain)
    coefficients = np.linalg.lstsq(lda - lda.mean(axis=0), lda_white, rcond=None)[0]
    np.testing.assert_allclose((lda - lda.mean(axis=0)) @ coefficients, lda_white, atol=1e-9)
