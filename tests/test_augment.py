"""Online augmentation, checked against direct numpy/scipy computations on tiny generated noise/RIR sets."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from omegaconf import OmegaConf
from scipy import signal

from stklia.core.errors import InputError
from stklia.data.augment import AddNoise, Augment, Reverb, SpecAugment, SpeedPerturb
from stklia.data.datasets import TrainingCrops
from stklia.data.features import Fbank
from stklia.data.kaldi import load_data_dir

from conftest import SR, TINY_TRAINING, demo_data_overrides, run_stklia, write_list


def tone(seconds: float, hz: float, amplitude: float = 3000) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def test_noise_is_added_at_the_drawn_snr(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    noise = write_list(tmp_path, "noise", [rng.normal(0, 500, SR // 2), rng.normal(0, 2000, SR * 2)])
    add = AddNoise({"noise": {"list": noise, "snr": [7, 7]}}, prob=1.0)
    speech = tone(1.0, 300)
    for seed in range(4):
        noisy = add(speech, np.random.default_rng(seed))
        added = noisy.astype(np.float64) - speech
        snr = 10 * np.log10(np.mean(speech.astype(np.float64) ** 2) / np.mean(added**2))
        assert snr == pytest.approx(7, abs=0.01)
    np.testing.assert_array_equal(AddNoise({"n": {"list": noise, "snr": [0, 5]}}, prob=0.0)(speech, rng), speech)


def test_reverb_is_the_aligned_convolution_with_power_kept(tmp_path: Path) -> None:
    rir = np.zeros(400)
    rir[[30, 150, 399]] = [20000, -8000, 3000]
    rirs = write_list(tmp_path, "rir", [rir])
    speech = tone(0.5, 440) + np.random.default_rng(1).normal(0, 100, SR // 2).astype(np.float32)
    wet = Reverb(rirs, prob=1.0)(speech, np.random.default_rng(0))
    direct = np.zeros(len(speech))  # out[n] = sum_k rir[k] * speech[n + 30 - k]: taps around the peak at 30
    n = np.arange(len(speech))
    for k in np.flatnonzero(rir):
        src = n + 30 - k
        ok = (src >= 0) & (src < len(speech))
        direct[ok] += rir[k] * speech[src[ok]]
    direct *= np.sqrt(np.mean(speech.astype(np.float64) ** 2) / np.mean(direct**2))
    np.testing.assert_allclose(wet, direct, rtol=0, atol=1e-2 * np.abs(direct).max())


def test_speed_perturbation_scales_duration_and_pitch() -> None:
    speed = SpeedPerturb(prob=1.0, factors=[0.9, 1.1])
    x = tone(1.0, 500)
    for choice, factor in ((1, 0.9), (2, 1.1)):
        y = speed.apply(x, choice)
        assert len(y) == pytest.approx(len(x) / factor, abs=1)
        spectrum = np.abs(np.fft.rfft(y))
        assert np.fft.rfftfreq(len(y), 1 / SR)[spectrum.argmax()] == pytest.approx(500 * factor, abs=2)
    np.testing.assert_array_equal(speed.apply(x, 0), x)


@pytest.mark.parametrize("factor", [0.9, 1.1, 0.95])
def test_speed_resampling_is_scipys_resample_poly_also_for_windows(factor: float) -> None:
    """The batched resampler gives the whole signal of scipy.signal.resample_poly, and the window SpeedPerturb.window
    asks for gives the same samples as cutting the whole perturbed signal (edges included)."""
    rng = np.random.default_rng(0)
    x = tone(1.0, 300) + rng.normal(0, 500, SR).astype(np.float32)
    speed = SpeedPerturb(prob=1.0, factors=[factor])
    up, down = speed.ratio(1)
    assert up / down == pytest.approx(1 / factor)
    whole = signal.resample_poly(x.astype(np.float64), up, down)
    assert len(whole) == speed.perturbed_length(len(x), 1)
    np.testing.assert_allclose(speed.apply(x, 1), whole, rtol=0, atol=1e-3)
    padded = np.pad(x.astype(np.float64), 2000)  # zeros around the recording, as Recording.read gives
    windows, offsets, expected = [], [], []
    length = 3000
    for start in (0, 1, 777, len(whole) // 2, len(whole) - length):
        first, stop, offset = speed.window(1, start, length)
        windows.append(padded[first + 2000 : stop + 2000])
        offsets.append(offset)
        expected.append(whole[start : start + length])
    batch = torch.zeros((len(windows), max(map(len, windows))), dtype=torch.float64)
    for row, window in zip(batch, windows):
        row[: len(window)] = torch.from_numpy(window)
    resampled = speed.resample(batch, 1, torch.tensor(offsets), length, max(offsets)).numpy()
    np.testing.assert_allclose(resampled, np.stack(expected), rtol=0, atol=1e-6)


def test_specaugment_masks_bands_with_zeros() -> None:
    feats = np.random.default_rng(0).normal(size=(100, 40)).astype(np.float32) + 10
    masked = SpecAugment(prob=1.0, num_time_masks=2, max_time=10, num_freq_masks=1, max_freq=8)(
        feats, np.random.default_rng(3))
    zero_rows, zero_cols = np.flatnonzero((masked == 0).all(axis=1)), np.flatnonzero((masked == 0).all(axis=0))
    changed = masked != feats
    assert changed.any() and (masked[changed] == 0).all()
    assert len(zero_rows) <= 20 and len(zero_cols) <= 8
    assert changed.sum() == len(zero_rows) * 40 + len(zero_cols) * 100 - len(zero_rows) * len(zero_cols)


def test_augmented_items_are_a_function_of_the_crop_seed(demo_root: Path, tmp_path: Path) -> None:
    wav_dir = Path(shutil.copytree(demo_root / "train", tmp_path / "train", ignore=shutil.ignore_patterns("feats.*")))
    rng = np.random.default_rng(0)
    noise = write_list(tmp_path / "n", "noise", [rng.normal(0, 300, SR)])
    rir = np.zeros(200)
    rir[[0, 120]] = [10000, 3000]
    augment = Augment(SpeedPerturb(prob=1.0, factors=[0.9, 1.1], new_speakers=True),
                      Reverb(write_list(tmp_path / "r", "rir", [rir]), prob=0.5),
                      AddNoise({"noise": {"list": noise, "snr": [0, 10]}}, prob=0.5), SpecAugment(prob=0.5))
    data = load_data_dir(wav_dir, Fbank(num_mel_bins=40))
    crops = TrainingCrops(data, 50, True, augment)
    plain = TrainingCrops(data, 50, True)
    num_speakers = len(data.speakers)
    assert crops.num_classes == 3 * num_speakers
    labels = set()
    for seed in range(12):
        (a, label), (b, again) = crops[3, seed], crops[3, seed]
        assert label == again and np.array_equal(a.numpy(), b.numpy())
        assert label % num_speakers == plain.labels[3]
        labels.add(label // num_speakers)
        assert not np.array_equal(a.numpy(), plain[3, seed][0].numpy())
    assert labels == {1, 2}


def test_feature_utterances_keep_their_speaker_under_speed_perturbation(demo_root: Path) -> None:
    """feats.scp utterances have no audio to perturb, so they are never made into speed classes."""
    data = load_data_dir(demo_root / "train")
    crops = TrainingCrops(data, 50, True, Augment(SpeedPerturb(prob=1.0, factors=[0.9, 1.1], new_speakers=True)))
    assert crops.num_classes == 3 * len(data.speakers)
    for index in (0, 5):
        assert [crops[index, seed][1] for seed in range(4)] == [crops.labels[index]] * 4


def test_bad_noise_list_names_its_line(tmp_path: Path) -> None:
    noise = write_list(tmp_path, "noise", [np.ones(100), np.ones(100)])
    soundfile.write(tmp_path / "noise1.wav", np.ones(100, dtype=np.int16), 8000)
    add = AddNoise({"noise": {"list": noise, "snr": [0, 0]}}, prob=1.0)
    with pytest.raises(InputError, match=rf"{noise}:2: audio has sample rate 8000, expected 16000"):
        for seed in range(20):
            add(tone(0.1, 100), np.random.default_rng(seed))


def test_cli_trains_the_demo_with_its_augmentation_sets(demo_root: Path, tmp_path: Path) -> None:
    """experiment=demo_aug: audio input, speed perturbation as new speakers, RIRs, noise/music/babble, SpecAugment."""
    proc = run_stklia("train", *demo_data_overrides(demo_root), *TINY_TRAINING, "experiment=demo_aug",
                      f"model_dir={tmp_path / 'model'}", "augment.speed.new_speakers=true", "augment.noise.prob=1",
                      "augment.reverb.prob=1", cwd=tmp_path)
    assert "Test results" in proc.stdout
    config = OmegaConf.load(tmp_path / "model" / "config.yaml")
    assert config.data.train == [str(demo_root / "train_wav")]
    assert config.augment.reverb.rirs == str(demo_root / "augment" / "rirs")
    last = torch.load(tmp_path / "model" / "checkpoints" / "step_00000006.pt", weights_only=True)
    assert last["head"]["weight"].shape[0] == 6 * 3  # each speaker at speeds 1, 0.9 and 1.1
