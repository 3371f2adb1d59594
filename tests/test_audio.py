"""Raw-audio data dirs (wav.scp, no feats.scp): features computed on the fly equal Kaldi features."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import kaldiio
import numpy as np
import pytest
import soundfile
import torch
from scipy import signal

from stklia.core.errors import InputError
from stklia.data.audio import Recording
from stklia.data.augment import Augment, SpeedPerturb
from stklia.data.datasets import TrainingCrops
from stklia.data.features import Fbank
from stklia.data.kaldi import load_data_dir
from stklia.training.loop import PIPES_WARNED

from conftest import TINY_TRAINING, run_stklia


def wav_only_copy(src: Path, dst: Path) -> Path:
    """A copy of a demo data dir whose utterances are read from wav.scp: no feats.scp."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("feats.*"))
    return dst


@pytest.fixture
def wav_dir(demo_root: Path, tmp_path: Path) -> Path:
    return wav_only_copy(demo_root / "test", tmp_path / "test")


def test_on_the_fly_features_equal_the_offline_ones(demo_root: Path, wav_dir: Path) -> None:
    audio = load_data_dir(wav_dir, Fbank(num_mel_bins=40))
    offline = dict(kaldiio.load_scp_sequential(str(demo_root / "test" / "feats.scp")))
    assert audio.audio == set(audio.utts) == set(offline)
    for utt in audio.utts:
        np.testing.assert_allclose(audio.load(utt), offline[utt], rtol=0, atol=1e-4)


def test_pipes_and_wav_in_ark_read_the_same_samples(demo_root: Path, wav_dir: Path, tmp_path: Path) -> None:
    lines = (wav_dir / "wav.scp").read_text().splitlines()
    utts = [line.split()[0] for line in lines]
    paths = dict(line.split() for line in lines)
    samples = {u: soundfile.read(paths[u], dtype="int16")[0] for u in utts[:2]}
    kaldiio.save_ark(str(tmp_path / "audio.ark"), {utts[1]: (16000, samples[utts[1]])},
                     scp=str(tmp_path / "audio.scp"))
    ark_entry = (tmp_path / "audio.scp").read_text().split()[1]
    assert re.fullmatch(r".*audio\.ark:\d+", ark_entry)
    lines[0] = f"{utts[0]} cat {paths[utts[0]]} |"
    lines[1] = f"{utts[1]} {ark_entry}"
    (wav_dir / "wav.scp").write_text("\n".join(lines) + "\n")
    data = load_data_dir(wav_dir, Fbank(num_mel_bins=40))
    offline = dict(kaldiio.load_scp_sequential(str(demo_root / "test" / "feats.scp")))
    for utt in utts[:2]:
        np.testing.assert_array_equal(data.read_audio(utt), samples[utt].astype(np.float32))
        np.testing.assert_allclose(data.load(utt), offline[utt], rtol=0, atol=1e-4)


def test_windows_of_every_kind_of_entry_are_the_whole_recordings_samples(wav_dir: Path, tmp_path: Path) -> None:
    """Partial reads (soundfile's seek + read for files) give the samples of the whole read, zeros outside."""
    path = (wav_dir / "wav.scp").read_text().split()[1]
    samples = soundfile.read(path, dtype="int16")[0]
    soundfile.write(tmp_path / "a.flac", samples, 16000)
    kaldiio.save_ark(str(tmp_path / "a.ark"), {"a": (16000, samples)}, scp=str(tmp_path / "a.scp"))
    entries = [path, str(tmp_path / "a.flac"), f"cat {path} |", (tmp_path / "a.scp").read_text().split()[1]]
    n = len(samples)
    padded = np.pad(samples.astype(np.float32), 1000)
    for entry in entries:
        with Recording(entry, 16000, "wav.scp") as recording:
            assert recording.num_samples == n
            for start, stop in ((0, n), (100, 5000), (-300, 200), (n - 50, n + 70), (n + 5, n + 9), (-20, -10)):
                window = recording.read(start, stop)
                assert window.dtype == np.float32
                np.testing.assert_array_equal(window, padded[start + 1000 : stop + 1000])


@pytest.mark.parametrize("suffix", ["wav", "flac"])
def test_speed_perturbed_crops_are_windows_of_the_whole_perturbed_utterance(demo_root: Path, tmp_path: Path,
                                                                            suffix: str) -> None:
    """A crop reads only a window of its file, yet equals the same window of the whole utterance resampled
    by scipy.signal.resample_poly (a short utterance: all of it, repeated)."""
    wavs = sorted((demo_root / "wav" / "test").rglob("*.wav"))
    long = np.concatenate([soundfile.read(p, dtype="int16")[0] for p in wavs])[: 8 * 16000]
    d = tmp_path / "data"
    d.mkdir()
    for utt, samples in (("a-long", long), ("b-short", long[:8000])):
        soundfile.write(d / f"{utt}.{suffix}", samples, 16000)
    (d / "wav.scp").write_text(f"a-long {d}/a-long.{suffix}\nb-short {d}/b-short.{suffix}\n")
    (d / "utt2spk").write_text("a-long a\nb-short b\n")
    data = load_data_dir(d, Fbank(num_mel_bins=40))
    speed = SpeedPerturb(prob=0.7, factors=[0.9, 1.1], new_speakers=True)
    crops = TrainingCrops(data, 100, cmn=False, augment=Augment(speed), on_device=True)
    length = crops.crop_samples
    seen = set()
    for index, samples in enumerate((long, long[:8000])):
        for seed in range(8):
            crop = crops[index, seed]  # on_device: the raw crop and its draws
            choice = crop.label // 2  # speeds as new speakers: the label tells the speed
            seen.add(choice)
            assert len(crop.samples) < len(samples) or index == 1  # a window, not the file
            assert crop.samples.dtype == np.int16 or index == 1 and choice  # as read (16-bit files), unless resampled
            if crop.speed:
                source = torch.from_numpy(crop.samples.astype(np.float32))[None]
                got = speed.resample(source, crop.speed, torch.tensor([crop.offset]), length, crop.offset)[0].numpy()
            else:
                got = crop.samples[:length]
            whole = samples.astype(np.float64)
            if choice:
                whole = signal.resample_poly(whole, *speed.ratio(choice))
            if index == 1:
                np.testing.assert_allclose(got, np.resize(whole, length), rtol=0, atol=0.05)
                continue
            starts = np.lib.stride_tricks.sliding_window_view(whole, 64)[: len(whole) - length + 1]
            start = int(np.abs(starts - got[:64]).sum(axis=1).argmin())
            np.testing.assert_allclose(got, whole[start : start + length], rtol=0, atol=0.05)
    assert seen == {0, 1, 2}


def test_many_pipes_in_the_training_data_get_a_one_line_warning(demo_root: Path, tmp_path: Path) -> None:
    train = tmp_path / "train"
    train.mkdir()
    wavs = [line.split() for line in (demo_root / "train" / "wav.scp").read_text().splitlines()]
    utts = [(f"{utt}-{copy:03d}", path) for copy in range(-(-PIPES_WARNED // len(wavs))) for utt, path in wavs]
    (train / "wav.scp").write_text("".join(f"{utt} cat {path} |\n" for utt, path in utts))
    (train / "utt2spk").write_text("".join(f"{utt} {utt.split('-')[0]}\n" for utt, _ in utts))
    run = [f"data.root={demo_root}", "data.prepare=null", f"data.train=[{train}]", "data.eval=null",
           "data.test=null", *TINY_TRAINING, "num_iterations=1"]
    proc = run_stklia("train", *run, f"model_dir={tmp_path / 'model'}", cwd=tmp_path)
    warnings = [line for line in (tmp_path / "model" / "train.log").read_text().splitlines() if "pipes" in line]
    assert len(warnings) == 1 and f"{len(utts)} training utterances" in warnings[0]
    assert "convert_audio.py" in warnings[0] and "WARNING" in warnings[0], proc.stderr


def test_dither_only_in_training_and_a_function_of_the_seed(wav_dir: Path) -> None:
    fbank = Fbank(num_mel_bins=40, dither=1.0)
    data = load_data_dir(wav_dir, fbank)
    samples = data.read_audio(data.utts[0])
    plain = fbank(samples)
    a, b, c = (fbank(samples, dither_seed) for dither_seed in (1, 1, 2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, plain)
    np.testing.assert_array_equal(plain, data.load(data.utts[0]))  # evaluation: no dither
    crops = TrainingCrops(data, max_seq_len=30, cmn=True)
    np.testing.assert_array_equal(crops[0, 7][0].numpy(), crops[0, 7][0].numpy())
    assert not np.array_equal(crops[0, 7][0].numpy(), crops[0, 8][0].numpy())


@pytest.mark.parametrize("frames", [40, 1000])  # shorter and longer than every utterance
def test_audio_is_cropped_before_the_features(wav_dir: Path, frames: int) -> None:
    """A training crop of an audio utterance is the features of a window of its samples (of exactly
    the crop's length, the utterance repeated when shorter): found among all windows, whatever the seed."""
    fbank = Fbank(num_mel_bins=40, dither=0.0)
    data = load_data_dir(wav_dir, fbank)
    crops = TrainingCrops(data, max_seq_len=frames, cmn=False)
    window = fbank.num_samples(frames)
    assert len(fbank(np.zeros(window))) == frames and len(fbank(np.zeros(window - 1))) == frames - 1
    every_sample = Fbank(num_mel_bins=40, dither=0.0, frame_shift_ms=1000 / 16000)  # a frame at each sample
    for index, seed in ((0, 3), (5, 11)):
        samples = data.read_audio(data.utts[index])
        crop = crops[index, seed][0].numpy()
        assert crop.shape == (frames, 40)
        if len(samples) < window:
            np.testing.assert_allclose(crop, fbank(np.resize(samples, window)), rtol=0, atol=1e-4)
            continue
        first_frames = every_sample(samples)[: len(samples) - window + 1]
        start = int(np.argmin(np.abs(first_frames - crop[0]).max(axis=1)))
        np.testing.assert_allclose(crop, fbank(samples[start : start + window]), rtol=0, atol=1e-4)


def test_audio_dir_without_features_config_is_an_input_error(wav_dir: Path) -> None:
    with pytest.raises(InputError, match="wav.scp: audio input .* needs a features config"):
        load_data_dir(wav_dir)


def test_cli_trains_tests_and_extracts_on_wav_only_dirs(demo_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    for split in ("train", "eval", "test", "test_noisy"):
        wav_only_copy(demo_root / split, root / split)
    model_dir = tmp_path / "model"
    proc = run_stklia("train", f"data.root={root}", "data.prepare=null", *TINY_TRAINING,
                      f"model_dir={model_dir}", cwd=tmp_path)
    assert "Test results" in proc.stdout
    out = tmp_path / "emb"
    run_stklia("extract", f"model_dir={model_dir}", f"data={root / 'test'}", "format=txt", f"out_dir={out}",
               "progress=false", "num_workers=0", cwd=tmp_path)
    emb = dict(kaldiio.load_ark(str(out / "embeddings.txt")))
    assert set(emb) == set(load_data_dir(root / "test", Fbank(num_mel_bins=40)).utts)
    # features_per_frame follows data.features; one set against them is refused, naming the wav.scp line
    bad = run_stklia("train", f"data.root={root}", "data.prepare=null", "data.features_per_frame=80", *TINY_TRAINING,
                     f"model_dir={tmp_path / 'other'}", cwd=tmp_path, check=False)
    assert bad.returncode == 1
    assert re.search(r"stklia: error: .*wav.scp:1: utterance '\S+' has 40 features per frame but the config says "
                     r"features_per_frame=80", bad.stderr)


def test_every_kind_of_wav_file_reads_as_libsndfile_reads_it(tmp_path: Path) -> None:
    """16-bit PCM wav files are read with the standard library's wave module (the fast path), the others with
    libsndfile: the same samples either way, of the first channel, also past a chunk before the samples, and
    only those a truncated or streamed file holds."""
    rng = np.random.default_rng(0)
    stereo = (rng.standard_normal((3001, 2)) * 3000).astype(np.int16)
    files = {}
    for name, samples, subtype in (("pcm16", stereo[:, 0], "PCM_16"), ("stereo", stereo, "PCM_16"),
                                   ("float", stereo[:, 0] / 32768, "FLOAT"), ("pcm24", stereo[:, 0], "PCM_24"),
                                   ("pcm32", stereo[:, 0], "PCM_32")):
        files[name] = tmp_path / f"{name}.wav"
        soundfile.write(files[name], samples, 16000, subtype=subtype)
    header = files["pcm16"].read_bytes()
    files["list_chunk"] = tmp_path / "list_chunk.wav"  # a LIST chunk (what ffmpeg writes) before the samples
    info = b"INFOISFT\x06\x00\x00\x00stklia"
    riff = b"WAVE" + header[12:36] + b"LIST" + len(info).to_bytes(4, "little") + info + header[36:]
    files["list_chunk"].write_bytes(b"RIFF" + len(riff).to_bytes(4, "little") + riff)
    files["truncated"] = tmp_path / "truncated.wav"
    files["truncated"].write_bytes(header[: len(header) // 2 + 1])  # a sample cut in two, at the end
    files["streamed"] = tmp_path / "streamed.wav"  # written to a pipe (ffmpeg ... -f wav -): sizes unknown, 2^32-1
    files["streamed"].write_bytes(b"RIFF\xff\xff\xff\xff" + header[8:40] + b"\xff\xff\xff\xff" + header[44:])
    files["UPPER"] = tmp_path / "UPPER.WAV"
    shutil.copy(files["stereo"], files["UPPER"])
    for name, path in files.items():
        expected = soundfile.read(path, dtype="float32", always_2d=True)[0][:, 0] * 32768
        with Recording(str(path), 16000, "wav.scp") as recording:
            fast = type(recording._file).__name__ == "_Wav16"
            assert fast == (name not in ("float", "pcm24", "pcm32")), name
            assert recording.num_samples == len(expected), name
            np.testing.assert_array_equal(recording.read(), expected, err_msg=name)
            np.testing.assert_array_equal(recording.read(100, 1200), expected[100:1200], err_msg=name)
    assert len(expected) == 3001 and soundfile.info(files["truncated"]).frames < 3001 / 2 + 1
