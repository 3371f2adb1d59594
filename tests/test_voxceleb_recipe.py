"""recipes/voxceleb on a tiny fake corpus laid out like VoxCeleb1/2: every stage of run.sh, for real."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kaldiio
import numpy as np
import pytest
import soundfile
from omegaconf import OmegaConf
from scipy import signal

from stklia.data.audio import Recording, read_audio
from stklia.data.features import Fbank
from stklia.data.kaldi import load_data_dir
from stklia.data.trials import read_trials

from conftest import REPO, SR, TINY_TRAINING, require_system, run_recipe, write_list

RECIPE = REPO / "recipes" / "voxceleb"
sys.path.insert(0, str(RECIPE / "local"))
from prepare import wav_entry  # noqa: E402


def fake_voxceleb(demo_root: Path, root: Path) -> tuple[dict[str, str], dict[str, str]]:
    """vox1/wav/<spk>/<video>/<n>.wav copied from demo test wavs, vox2/aac/... m4a encoded (ffmpeg, AAC) from
    demo train wavs, official lists (O, O cleaned, H cleaned).

    Returns the official path of each vox1 and of each vox2 recording -> the demo wav it comes from."""
    vox1, vox2 = {}, {}
    test_wavs = dict(line.split() for line in (demo_root / "test" / "wav.scp").read_text().splitlines())
    for i, (_, path) in enumerate(sorted(test_wavs.items())[:6]):
        official = f"id1000{i % 2}/vid{i % 3}/{i:05d}.wav"
        (root / "vox1" / "wav" / official).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, root / "vox1" / "wav" / official)
        vox1[official] = path
    train_wavs = dict(line.split() for line in (demo_root / "train" / "wav.scp").read_text().splitlines())
    for utt, path in sorted(train_wavs.items()):
        speaker, n = utt.split("-")
        if int(n) < 3:
            official = f"id0{speaker[3:]}/vid{n}/00001.m4a"
            (root / "vox2" / "aac" / official).parent.mkdir(parents=True)
            subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", path, "-c:a", "aac", "-b:a", "64k",
                            str(root / "vox2" / "aac" / official)], check=True)
            vox2[official] = path
    paths = sorted(vox1)
    o_list = f"1 {paths[0]} {paths[2]}\n0 {paths[0]} {paths[1]}\n1 {paths[1]} {paths[3]}\n0 {paths[2]} {paths[5]}\n"
    (root / "vox1" / "veri_test.txt").write_text(o_list)
    (root / "vox1" / "veri_test2.txt").write_text(o_list)
    (root / "vox1" / "list_test_hard2.txt").write_text(f"0 {paths[3]} {paths[4]}\n1 {paths[0]} {paths[4]}\n")
    return vox1, vox2


def run_voxceleb(root: Path, *args: str, **env: str) -> None:
    """recipes/voxceleb/run.sh with the fake corpus of `root` and data under root/data."""
    run_recipe(RECIPE / "run.sh", *args, VOX1=str(root / "vox1"), VOX2=str(root / "vox2"), DATA=str(root / "data"),
               **env)


@pytest.fixture(scope="module")
def corpus(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    """The fake corpus with stages 0 (m4a -> FLAC) and 1 (data dirs) run on it."""
    require_system(shutil.which("ffmpeg") is not None, "no ffmpeg, which the recipe's m4a decoding needs: "
                   "apt-get install ffmpeg (.ci/run does)")
    root = tmp_path_factory.mktemp("voxceleb")
    vox1, vox2 = fake_voxceleb(demo_root, root)
    run_voxceleb(root, "--stage", "0", "--stop-stage", "1", NJ="2")
    return root, vox1, vox2


def utt_id(official: str) -> str:
    return official.rsplit(".", 1)[0].replace("/", "-")


def test_stage_1_prepares_data_dirs_and_trials(corpus: tuple[Path, dict, dict], demo_root: Path) -> None:
    root, source, _ = corpus
    data = root / "data"
    vox1 = load_data_dir(data / "vox1", Fbank(num_mel_bins=40))
    assert vox1.utts == sorted(utt_id(p) for p in source)
    assert vox1.speakers == ["id10000", "id10001"]
    offline = dict(kaldiio.load_scp_sequential(str(demo_root / "test" / "feats.scp")))
    for official, path in source.items():
        np.testing.assert_allclose(vox1.load(utt_id(official)), offline[Path(path).stem], rtol=0, atol=1e-4)
    assert sorted(p.name for p in (data / "vox1").glob("trials_*")) == ["trials_H_cleaned", "trials_O",
                                                                         "trials_O_cleaned"]
    trials = read_trials(data / "vox1" / "trials_O", vox1.feats)
    assert trials.labels.tolist() == [1, 0, 1, 0] and trials.enroll[0] == vox1.utts[0]


def wav_scp(data_dir: Path) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in (data_dir / "wav.scp").read_text().splitlines())


@pytest.mark.parametrize("audio_format", ["flac", "wav"])
def test_stage_0_converts_m4a_and_the_data_dir_reads_it(corpus: tuple[Path, dict, dict], tmp_path: Path,
                                                        audio_format: str) -> None:
    """FLAC by default, 16-bit wav with FORMAT=wav (the loader's fast path): lossless either way, the samples
    the recipe's `ffmpeg ... |` pipe would decode at every training item."""
    root, _, source = corpus
    data = root / "data"
    if audio_format == "wav":
        data = tmp_path / "data"
        run_recipe(RECIPE / "run.sh", "--stage", "0", "--stop-stage", "1", VOX1=str(root / "vox1"),
                   VOX2=str(root / "vox2"), DATA=str(data), NJ="2", FORMAT="wav")
    entries = wav_scp(data / "vox2_dev")
    assert sorted(entries) == sorted(utt_id(p) for p in source)
    for official in source:
        converted = data / f"vox2_dev_{audio_format}" / official.replace(".m4a", f".{audio_format}")
        assert entries[utt_id(official)] == str(converted.resolve())
        info = soundfile.info(str(converted))
        assert (info.format, info.samplerate, info.channels, info.subtype) == (audio_format.upper(), SR, 1, "PCM_16")
        piped, _ = read_audio(wav_entry(root / "vox2" / "aac" / official))
        with Recording(str(converted), SR, "wav.scp") as recording:
            np.testing.assert_array_equal(recording.read(), piped)


def test_conversion_resumes_and_redoes_only_missing_or_broken_files(corpus: tuple[Path, dict, dict],
                                                                   tmp_path: Path) -> None:
    root, _, source = corpus
    out = Path(shutil.copytree(root / "data" / "vox2_dev_flac", tmp_path / "flac"))
    files = sorted(out.rglob("*.flac"))
    again = convert(root, out)
    assert again.endswith(f"0 files converted, {len(files)} already done")
    stamps = {f: f.stat().st_mtime_ns for f in files}
    samples = read_audio(str(files[1]))[0]
    files[0].unlink()
    files[1].write_bytes(b"half a file")
    stale = files[2].with_name(f".{files[2].name}.tmp-4242")  # what a killed conversion leaves
    stale.write_bytes(b"partial")
    assert convert(root, out).endswith(f"2 files converted, {len(files) - 2} already done")
    assert not stale.exists() and sorted(out.rglob("*.flac")) == files
    assert [f for f in files if f.stat().st_mtime_ns != stamps.get(f)] == files[:2]
    np.testing.assert_array_equal(read_audio(str(files[1]))[0], samples)


def convert(root: Path, out: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(RECIPE / "local" / "convert_audio.py"), str(root / "vox2" / "aac"),
                           str(out), "--nj", "2", *args], env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_a_broken_or_truncated_m4a_is_a_one_line_error(tmp_path: Path) -> None:
    src = tmp_path / "aac" / "id00001" / "vid"
    src.mkdir(parents=True)
    tone = (3000 * np.sin(np.arange(4 * SR) / 5)).astype(np.int16)
    soundfile.write(tmp_path / "tone.wav", tone, SR)
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", tmp_path / "tone.wav", "-c:a", "aac",
                    "-movflags", "+faststart", src / "00001.m4a"], check=True)
    whole = (src / "00001.m4a").read_bytes()
    (src / "00001.m4a").write_bytes(whole[: len(whole) // 2])  # a download cut short: the header says 4 s
    (src / "00002.m4a").write_bytes(whole[:300])  # not even a header
    command = [sys.executable, str(RECIPE / "local" / "convert_audio.py"), str(tmp_path / "aac"),
               str(tmp_path / "flac")]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    assert proc.returncode == 1
    error = proc.stderr.splitlines()[-1]  # after the progress bar
    assert re.fullmatch(rf"stklia: error: {src}/00001.m4a: cannot convert: converted to [\d.]+ s of audio, but it "
                        r"lasts 4.00 s \(1 other files failed too\)", error)
    assert not list((tmp_path / "flac").rglob("*.flac"))
    (src / "00001.m4a").unlink()
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    assert proc.returncode == 1
    assert re.fullmatch(rf"stklia: error: {src}/00002.m4a: cannot convert: ffmpeg exited with status 1: .+",
                        proc.stderr.splitlines()[-1])


def test_without_conversion_m4a_are_decoded_through_ffmpeg_pipes(corpus: tuple[Path, dict, dict],
                                                                  tmp_path: Path) -> None:
    root, _, source = corpus
    run_recipe(RECIPE / "run.sh", "--stage", "0", "--stop-stage", "1", VOX1=str(root / "vox1"),
               VOX2=str(root / "vox2"), DATA=str(tmp_path / "data"), CONVERT="false")
    assert not (tmp_path / "data" / "vox2_dev_flac").exists()
    entries = wav_scp(tmp_path / "data" / "vox2_dev")
    assert sorted(entries) == sorted(utt_id(p) for p in source)
    spk2utt = (tmp_path / "data" / "vox2_dev" / "spk2utt").read_text().splitlines()
    assert [line.split()[0] for line in spk2utt] == sorted({p.split("/")[0] for p in source})
    for official, path in source.items():
        entry = entries[utt_id(official)]
        assert entry.startswith("ffmpeg ") and entry.endswith(" - |")
        decoded, rate = read_audio(entry)
        original, _ = read_audio(path)
        assert rate == SR and abs(len(decoded) - len(original)) < 2048  # AAC frames: 1024 samples
        # AAC is lossy and delays the signal by its priming samples: compare at the best alignment.
        corr = signal.correlate(decoded, original, mode="full")
        lag = int(np.argmax(corr)) - (len(original) - 1)
        a, b = (decoded[lag:], original) if lag >= 0 else (decoded, original[-lag:])
        n = min(len(a), len(b))
        assert abs(lag) < 2048 and np.corrcoef(a[:n], b[:n])[0, 1] > 0.95


def test_every_stage_runs_end_to_end(corpus: tuple[Path, dict, dict], tmp_path: Path) -> None:
    """Packing the training audio and the augmentation sets, training from the archives with MUSAN-like noise and
    RIRs, averaging, fine-tuning, AS-norm test."""
    root, _, _ = corpus
    rng = np.random.default_rng(0)
    musan = tmp_path / "musan"
    for name in ("noise", "music", "speech"):
        write_list(musan, name, [rng.normal(0, 1000, SR) for _ in range(7 if name == "speech" else 1)])
    rirs = write_list(tmp_path, "rirs", [signal.windows.exponential(800, 0, 100, False) * 10000])
    exp = tmp_path / "exp" / "resnet34_aam"
    run_voxceleb(root, "--stage", "2", *TINY_TRAINING, EXP=str(exp),
               MUSAN=str(musan), RIRS=str(rirs), NUM_AVERAGE="2", NUM_AVERAGE_LM="2", ASNORM_TOP_N="3")
    assert (exp / "checkpoints" / "avg_last2.pt").is_file()
    packed = root / "data" / "packed"
    trained_on = OmegaConf.load(exp / "config.yaml")
    assert list(trained_on.data.train) == [str(packed / "vox2_dev")]
    assert trained_on.augment.reverb.rirs == str(packed / "rirs")
    assert trained_on.augment.noise.sources.babble.list == str(packed / "musan_speech")
    for name in ("vox2_dev", "musan_noise", "musan_music", "musan_speech", "rirs"):
        assert ".ark:" in (packed / name / "wav.scp").read_text().split()[1]
    lm = Path(f"{exp}_lm")
    (summary,) = (lm / "results").glob("avg_last2-*.json")  # the three official lists: results of their own
    saved = json.loads(summary.read_text())["results"]
    assert [Path(r["trials"]).name for r in saved] == ["trials_H_cleaned", "trials_O", "trials_O_cleaned"]
    for row in saved:
        assert 0 <= row["eer"] <= 100 and 0 <= row["asnorm_eer"] <= 100
    config = OmegaConf.load(lm / "config.yaml")  # the fine-tuning stage started from the average, with margin 0.5
    assert (config.init_from, config.init_checkpoint, config.head.margin) == (str(exp), "avg_last2", 0.5)


def test_bad_official_trials_name_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "veri_test.txt"
    bad.write_text("1 a/b/1.wav a/b/2.wav\nyes a/b/1.wav a/b/3.wav\n")
    proc = subprocess.run([sys.executable, str(RECIPE / "local" / "prepare.py"), "trials", str(bad),
                           str(tmp_path / "out")], env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                          text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"stklia: error: {bad}:2: label 'yes' is not 0 or 1"
    assert not (tmp_path / "out").exists()
