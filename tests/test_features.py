"""The torch fbank (stklia.data.features.Fbank) against kaldi-native-fbank, an independent implementation of
Kaldi's compute-fbank-feats, on the demo's recordings."""

from __future__ import annotations

from pathlib import Path

import kaldi_native_fbank as knf
import numpy as np
import pytest
import soundfile
import torch
from scipy import stats

from stklia.data.features import DITHER_TABLE, DeviceCopies, Fbank, dither_noise

AWAY_FROM_SILENCE = 10.0  # log mel energy (int16 scale) above which both float32 implementations agree to 1e-3


def kaldi_native_fbank(samples: np.ndarray, num_mel_bins: int) -> np.ndarray:
    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0
    opts.mel_opts.num_bins = num_mel_bins
    opts.mel_opts.high_freq = 0  # Kaldi's default (the Nyquist frequency)
    fbank = knf.OnlineFbank(opts)
    fbank.accept_waveform(16000, samples)
    fbank.input_finished()
    return np.array([fbank.get_frame(i) for i in range(fbank.num_frames_ready)])


def recordings(demo_root: Path) -> list[np.ndarray]:
    """Speech of several speakers, a noise, a music and a babble recording, as int16-scaled float32."""
    paths = sorted((demo_root / "wav" / "test").rglob("*.wav"))[::7]
    paths += [sorted((demo_root / "wav" / "augment" / name).glob("*.wav"))[0] for name in ("noise", "music", "babble")]
    return [soundfile.read(p, dtype="int16")[0].astype(np.float32) for p in paths]


@pytest.mark.parametrize("num_mel_bins", [40, 80])
def test_fbank_matches_kaldi_native_fbank(demo_root: Path, num_mel_bins: int) -> None:
    fbank = Fbank(num_mel_bins=num_mel_bins, dither=0)
    differences, energies = [], []
    for samples in recordings(demo_root):
        expected = kaldi_native_fbank(samples, num_mel_bins)
        ours = fbank(samples)
        assert ours.dtype == np.float32 and ours.shape == expected.shape
        differences.append(np.abs(ours - expected).ravel())
        energies.append(expected.ravel())
    difference, energy = np.concatenate(differences), np.concatenate(energies)
    assert (energy > AWAY_FROM_SILENCE).mean() > 0.8
    assert difference[energy > AWAY_FROM_SILENCE].max() <= 1e-3
    assert difference.mean() <= 2e-5 and difference.max() <= 0.1  # near-silent bins: float32 rounding of both


def test_a_batch_gives_each_row_its_own_features(demo_root: Path) -> None:
    fbank = Fbank(num_mel_bins=40, dither=1.0)
    crops = [samples[:12000] for samples in recordings(demo_root)[:4]]  # the shortest lasts 0.8 s
    seeds = [3, 4, 3, 5]
    batch = fbank.batch(torch.from_numpy(np.stack(crops)), seeds)
    for row, crop, seed in zip(batch, crops, seeds):
        np.testing.assert_allclose(row.numpy(), fbank(crop, seed), rtol=0, atol=1e-4)
    assert not torch.equal(batch[0], fbank.batch(torch.from_numpy(crops[0])[None])[0])  # dithered
    undithered = fbank.batch(torch.from_numpy(np.stack(crops)))
    np.testing.assert_allclose(undithered[0].numpy(), kaldi_native_fbank(crops[0], 40), rtol=0, atol=0.05)


@pytest.mark.parametrize("length", [32240, DITHER_TABLE + 5])  # a 2 s crop; longer than the table
def test_dither_is_standard_normal_noise_each_item_gets_in_any_batch(length: int) -> None:
    """Each row's dither is Gaussian (Kolmogorov-Smirnov against scipy's standard normal), uncorrelated between
    rows of random seeds, and a row gets the same noise alone as in a batch."""
    seeds = np.random.default_rng(0).integers(2**63 - 1, size=6).tolist()
    like, copies = torch.zeros(0), DeviceCopies()
    noise = dither_noise(seeds, length, like, copies)
    assert noise.shape == (6, length) and noise.dtype == torch.float32
    assert stats.kstest(noise[:, ::101].flatten().numpy(), "norm").pvalue > 0.01
    correlations = np.corrcoef(noise.numpy())
    assert np.abs(correlations[~np.eye(6, dtype=bool)]).max() < 0.05
    for row, seed in enumerate(seeds):
        assert torch.equal(dither_noise([seed], length, like, copies)[0], noise[row])
    assert dither_noise([], length, like, copies).shape == (0, length)


def test_frame_count_follows_snip_edges() -> None:
    fbank = Fbank(num_mel_bins=40)
    assert fbank.num_samples(1) == 400 and fbank.num_samples(200) == 400 + 199 * 160
    for length in (0, 399, 400, 559, 560, 16000):
        expected = len(kaldi_native_fbank(np.ones(length, dtype=np.float32), 40))
        assert fbank(np.ones(length, dtype=np.float32)).shape == (expected, 40)
