"""Each pooling mode against numpy / scipy, whole and padded with a mask, and inside the ResNet; CAM++'s segment
means against average pooling."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F

from stklia.models.pooling import POOLINGS, AttentiveStatisticsPooling, build_pooling, masked_segment_mean
from stklia.models.resnet import ResNet

B, CH, T = 3, 6, 40


def np_attentive(pool: AttentiveStatisticsPooling, x: np.ndarray) -> np.ndarray:
    """Okabe et al. (2018): e_t = v^T tanh(W h_t + b) + k, alpha = softmax(e), weighted mean and std.

    ECAPA-TDNN's channel- and context-dependent variant: one v_c, k_c per channel c, and h_t = [x_t; mean; std].
    """
    conv1, conv2 = pool.attention[0], pool.attention[2]
    w, b = conv1.weight.detach().double().numpy()[..., 0], conv1.bias.detach().double().numpy()
    v, k = conv2.weight.detach().double().numpy()[..., 0], conv2.bias.detach().double().numpy()
    h = x
    if w.shape[1] == 3 * len(x):  # global context: the utterance's mean and (unbiased) std at every frame
        h = np.concatenate([x, np.repeat(x.mean(axis=1, keepdims=True), x.shape[1], axis=1),
                            np.repeat(x.std(axis=1, ddof=1, keepdims=True), x.shape[1], axis=1)])
    e = v @ np.tanh(w @ h + b[:, None]) + k[:, None]  # (1 or channels, frames)
    alpha = np.exp(e - e.max(axis=1, keepdims=True))
    alpha /= alpha.sum(axis=1, keepdims=True)
    mean = (x * alpha).sum(axis=1)
    return np.concatenate([mean, np.sqrt(((x - mean[:, None]) ** 2 * alpha).sum(axis=1))])


def np_pool(mode: str, x: np.ndarray, pool: torch.nn.Module) -> np.ndarray:
    """Pooling of one utterance x (channels, frames), in float64 numpy / scipy."""
    std = x.std(axis=1, ddof=1)
    return {
        "min": lambda: x.min(axis=1),
        "max": lambda: x.max(axis=1),
        "mean": lambda: x.mean(axis=1),
        "std": lambda: std,
        "statistical": lambda: np.concatenate([x.mean(axis=1), std]),
        "std_skew": lambda: np.concatenate([std, scipy.stats.skew(x, axis=1, bias=True)]),
        "std_kurtosis": lambda: np.concatenate([std, scipy.stats.kurtosis(x, axis=1, fisher=True, bias=True)]),
        "attentive": lambda: np_attentive(pool, x),
        "channel_context_attentive": lambda: np_attentive(pool, x),
    }[mode]()


def random_frames(seed: int) -> np.ndarray:
    """Skewed, heavy-tailed frames (as after a ReLU) so that every statistic is far from 0."""
    rng = np.random.default_rng(seed)
    return rng.gamma(2.0, size=(B, CH, T)) * rng.uniform(0.5, 3, size=(B, CH, 1)) - 1


def make_pool(mode: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_pooling(mode, CH).double()


def test_every_mode_is_tested() -> None:
    x = random_frames(0)[0]
    for mode in POOLINGS:
        np_pool(mode, x, make_pool(mode))  # a KeyError names a mode without a reference


@pytest.mark.parametrize("mode", POOLINGS)
def test_matches_numpy(mode: str) -> None:
    pool = make_pool(mode)
    x = random_frames(1)
    out = pool(torch.tensor(x)).detach().numpy()
    assert out.shape == (B, pool.out_channels)
    expected = np.stack([np_pool(mode, row, pool) for row in x])
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", POOLINGS)
def test_padded_batch_pools_each_utterance_alone(mode: str) -> None:
    pool = make_pool(mode)
    x = random_frames(2)
    lengths = [T, 17, 3]
    mask = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
    padded = torch.tensor(x).masked_fill(~mask[:, None, :], torch.nan)  # padding must not leak in
    out = pool(padded, mask).detach().numpy()
    for i, n in enumerate(lengths):
        alone = pool(torch.tensor(x[i:i + 1, :, :n])).detach().numpy()[0]
        np.testing.assert_allclose(out[i], alone, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(out[i], np_pool(mode, x[i, :, :n], pool), rtol=1e-10, atol=1e-12)


def test_max_is_not_min() -> None:
    x = torch.tensor(random_frames(3))
    mx, mn = build_pooling("max", CH)(x), build_pooling("min", CH)(x)
    assert (mx > mn).all()
    torch.testing.assert_close(mx, x.amax(dim=-1))


@pytest.mark.parametrize("mode", POOLINGS)
def test_gradients_are_finite_even_for_constant_frames(mode: str) -> None:
    pool = make_pool(mode)
    x = torch.tensor(random_frames(4))
    x[0] = 1.5  # zero variance
    x[1, :, 1:] = 0.0  # one frame differs from the others
    x.requires_grad_(True)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[2, 1:] = False  # a single valid frame
    out = pool(x, mask)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in pool.parameters())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", ["std_skew", "std_kurtosis", "statistical", "attentive", "channel_context_attentive"])
def test_half_precision_input_keeps_float32_moments(mode: str, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    pool = build_pooling(mode, CH)
    x = (torch.tensor(random_frames(5)) * 40).to(dtype)  # x**4 overflows float16
    attentive = isinstance(pool, AttentiveStatisticsPooling)
    out = pool.to(dtype)(x) if attentive else pool(x)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    if not attentive:
        expected = np.stack([np_pool(mode, row, pool) for row in x.double().numpy()])
        np.testing.assert_allclose(out.numpy(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", POOLINGS)
def test_resnet_sizes_its_embedding_layer_for_each_mode(mode: str) -> None:
    torch.manual_seed(0)
    model = ResNet(features_per_frame=20, layers=[1, 1], num_filters=[4, 8], emb_size=10, pooling=mode)
    assert model.fc.in_features == model.pooling.out_channels
    assert model(torch.randn(2, 30, 20)).shape == (2, 10)


@pytest.mark.parametrize("segment", [1, 7, 16, 40, 100])
def test_segment_means_match_average_pooling_of_each_utterance(segment: int) -> None:
    """CAM++'s segment context: F.avg_pool1d(ceil_mode=True) over each utterance alone, repeated over its segment."""
    x = random_frames(6)
    lengths = [T, 17, 3]
    mask = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
    padded = torch.tensor(x).masked_fill(~mask[:, None, :], torch.nan)
    out = masked_segment_mean(padded, mask, segment).numpy()
    for i, n in enumerate(lengths):
        pooled = F.avg_pool1d(torch.tensor(x[i:i + 1, :, :n]), segment, segment, ceil_mode=True)[0].numpy()
        expected = np.repeat(pooled, segment, axis=1)[:, :n]
        np.testing.assert_allclose(out[i, :, :n], expected, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(masked_segment_mean(torch.tensor(x[i:i + 1, :, :n]), None, segment)[0].numpy(),
                                   expected, rtol=1e-12, atol=1e-12)
