"""The synthetic demo corpus: valid Kaldi data, deterministic, built once, features match the wavs."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import kaldi_native_fbank as knf
import kaldiio
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from scipy.io import wavfile

from stklia.core import config
from stklia.core.config import CONF_DIR
from stklia.data.augment import AudioList
from stklia.data.splits import prepare_data
from stklia.demo.__main__ import main
from stklia.demo.corpus import SMALL_DEMO, baseline_eer, make_demo

SPLITS = ("train", "eval", "test")
TINY = {**SMALL_DEMO, "num_train_speakers": 2, "num_eval_speakers": 2, "num_test_speakers": 2,
        "utts_per_speaker": 2, "test_utts_per_speaker": 3}


def read_map(path: Path) -> dict[str, list[str]]:
    lines = path.read_text().splitlines()
    keys = [line.split()[0] for line in lines]
    assert keys == sorted(keys) and len(set(keys)) == len(keys), f"{path} must be sorted and unique"
    return {line.split()[0]: line.split()[1:] for line in lines}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo(tmp_path_factory.mktemp("demo") / "corpus", **SMALL_DEMO)


def test_kaldi_dirs_are_consistent(corpus: Path) -> None:
    speakers = {}
    for split in SPLITS:
        d = corpus / split
        utt2spk = {utt: spk for utt, (spk,) in read_map(d / "utt2spk").items()}
        spk2utt = read_map(d / "spk2utt")
        assert {utt: spk for spk, utts in spk2utt.items() for utt in utts} == utt2spk
        assert all(utt.startswith(f"{spk}-") for utt, spk in utt2spk.items())
        assert sorted(read_map(d / "feats.scp")) == sorted(utt2spk)
        wavs = read_map(d / "wav.scp")
        assert sorted(wavs) == sorted(utt2spk)
        assert all(Path(path).is_file() and Path(path).is_relative_to(corpus) for (path,) in wavs.values())
        speakers[split] = set(spk2utt)
        if split != "train":
            trials = [line.split() for line in (d / "trials").read_text().splitlines()]
            pairs = [tuple(t[1:]) for t in trials]
            assert len(set(pairs)) == len(pairs) and all(a != b for a, b in pairs)
            assert all(label == str(int(utt2spk[a] == utt2spk[b])) for label, a, b in trials)
            assert 0.3 < np.mean([label == "1" for label, _, _ in trials]) < 0.7
    assert not speakers["train"] & speakers["eval"] and not speakers["train"] & speakers["test"]
    assert not speakers["eval"] & speakers["test"]


def test_train_wav_is_the_train_audio_without_features(corpus: Path) -> None:
    for name in ("wav.scp", "utt2spk", "spk2utt"):
        assert (corpus / "train_wav" / name).read_text() == (corpus / "train" / name).read_text()
    assert sorted(p.name for p in (corpus / "train_wav").iterdir()) == ["spk2utt", "utt2spk", "wav.scp"]


def test_augmentation_sets_are_readable_and_shaped_for_their_role(corpus: Path) -> None:
    sets = {name: AudioList(corpus / "augment" / name, 16000) for name in ("noise", "music", "babble", "rirs")}
    assert {name: len(s) for name, s in sets.items()} == {"noise": 20, "music": 10, "babble": 20, "rirs": 20}
    corpus_wavs = {p.resolve() for p in (corpus / "wav").glob("[!a]*/*/*.wav")}
    for name, recordings in sets.items():
        for i in range(len(recordings)):
            x = recordings.read(i)
            path = Path(recordings.entries[i][0])
            assert path.is_relative_to(corpus) and path.resolve() not in corpus_wavs
            if name == "rirs":  # the direct path first and loudest, then a decaying tail
                energy = x.astype(np.float64) ** 2
                assert np.argmax(np.abs(x)) == 0 and 0.2 <= len(x) / 16000 <= 0.8
                assert 0 < energy[len(x) // 2:].sum() < 0.05 * energy.sum()  # a tail that has decayed by then
            else:
                assert len(x) >= 2 * 16000 and np.sqrt(np.mean(x.astype(np.float64) ** 2)) > 100


def test_features_have_the_right_shape(corpus: Path) -> None:
    for split in SPLITS:
        for utt, feats in kaldiio.load_scp_sequential(str(corpus / split / "feats.scp")):
            assert feats.dtype == np.float32 and feats.ndim == 2 and feats.shape[1] == 40, utt
            assert feats.shape[0] > 50 and np.isfinite(feats).all(), utt


def kaldi_fbank(wav: str) -> np.ndarray:
    """What Kaldi's compute-fbank-feats --num-mel-bins=40 --dither=0 gives for a wav file."""
    sr, samples = wavfile.read(wav)
    assert sr == 16000 and samples.dtype == np.int16
    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0
    opts.mel_opts.num_bins = 40
    fbank = knf.OnlineFbank(opts)
    fbank.accept_waveform(sr, samples.astype(np.float32))
    fbank.input_finished()
    return np.array([fbank.get_frame(i) for i in range(fbank.num_frames_ready)])


def test_features_can_be_recomputed_from_the_wav(corpus: Path) -> None:
    feats = kaldiio.load_scp(str(corpus / "test" / "feats.scp"))
    for utt, (path,) in list(read_map(corpus / "test" / "wav.scp").items())[:3]:
        # stklia's torch fbank agrees with kaldi-native-fbank to float32 rounding (tests/test_features.py)
        np.testing.assert_allclose(kaldi_fbank(path), feats[utt], rtol=0, atol=2e-3)


def test_same_arguments_give_the_same_corpus(corpus: Path, tmp_path: Path) -> None:
    other = make_demo(tmp_path / "again", **SMALL_DEMO)
    for split in SPLITS:
        a, b = (dict(kaldiio.load_scp_sequential(str(root / split / "feats.scp"))) for root in (corpus, other))
        assert a.keys() == b.keys()
        assert all(np.array_equal(a[utt], b[utt]) for utt in a)
        assert (corpus / split / "feats.ark").read_bytes() == (other / split / "feats.ark").read_bytes()
    for split in ("eval", "test"):
        assert (corpus / split / "trials").read_text() == (other / split / "trials").read_text()
    a, b = (make_demo(tmp_path / f"seed{seed}", **{**TINY, "seed": seed}) for seed in (0, 1))
    assert (a / "test" / "feats.ark").read_bytes() != (b / "test" / "feats.ark").read_bytes()


def test_second_call_reuses_the_corpus(corpus: Path) -> None:
    marker = corpus / "params.json"
    before = marker.stat().st_mtime_ns
    assert make_demo(corpus, **SMALL_DEMO) == corpus
    assert marker.stat().st_mtime_ns == before
    assert not list(corpus.parent.glob("corpus.*")), "no temporary directories left behind"


def test_other_parameters_rebuild_in_place(tmp_path: Path) -> None:
    root = make_demo(tmp_path / "c", **{**TINY, "num_mel_bins": 24})
    root = make_demo(root, **TINY)
    _, feats = next(kaldiio.load_scp_sequential(str(root / "train" / "feats.scp")))
    assert feats.shape[1] == 40
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_refuses_to_overwrite_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        make_demo(tmp_path, **TINY)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_baseline_eer_is_imperfect_but_better_than_nothing(corpus: Path) -> None:
    for split in ("eval", "test"):
        assert 0 < baseline_eer(corpus / split) < 50


def test_default_root_follows_stklia_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STKLIA_CACHE", str(tmp_path))
    assert config.demo_root() == tmp_path / "demo-v1"
    monkeypatch.delenv("STKLIA_CACHE")
    assert config.demo_root() == Path(os.path.expanduser("~")) / ".cache" / "stklia" / "demo-v1"


def test_script_prints_where_it_wrote(corpus: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["demo", str(corpus), "small=true", "baseline=true"])
    main()
    out = capsys.readouterr().out
    assert str(corpus) in out and "EER on test" in out


def test_building_shows_its_progress(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A line at each tenth of the recordings (stderr is not a terminal here), the last one at all of them."""
    make_demo(tmp_path / "c", **TINY)
    bar = re.findall(r"^generating the demo corpus in (\S+): +(\d+)%\|.*\| (\d+)/(\d+)", capsys.readouterr().err, re.M)
    assert [int(percent) // 10 for _, percent, _, _ in bar] == list(range(11))  # one line per tenth
    assert bar[-1][0] == str(tmp_path / "c") and bar[-1][2] == bar[-1][3]



@pytest.mark.parametrize("progress", [True, False])
def test_the_commands_progress_setting_reaches_the_demo_build(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                               progress: bool) -> None:
    """`progress=false` (train, test) quiets the demo's generation too: data.prepare's own `progress` key is
    the command's."""
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        prepare = compose("train", overrides=[f"data.root={tmp_path / 'c'}"]).data.prepare
    assert prepare.progress is True
    prepare_data(OmegaConf.create({"prepare": {**OmegaConf.to_container(prepare, resolve=True), **TINY}}), progress)
    assert (tmp_path / "c" / "params.json").is_file()
    assert ("generating the demo corpus" in capsys.readouterr().err) == progress


@pytest.fixture(scope="module")
def heldout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo(tmp_path_factory.mktemp("heldout") / "corpus", **TINY, variant="heldout")


def test_heldout_variant_is_test_sets_of_other_speakers_and_conditions(heldout: Path, tmp_path: Path) -> None:
    demo = make_demo(tmp_path / "demo", **TINY)
    assert sorted(p.name for p in heldout.iterdir()) == ["augment_heldout", "params.json", "test", "test_noisy", "wav"]
    for split in ("test", "test_noisy"):
        utt2spk = {utt: spk for utt, (spk,) in read_map(heldout / split / "utt2spk").items()}
        trials = [line.split() for line in (heldout / split / "trials").read_text().splitlines()]
        assert all(label == str(int(utt2spk[a] == utt2spk[b])) for label, a, b in trials) and len(trials) > 10
    demo_speakers = {spk for split in SPLITS for spk in read_map(demo / split / "spk2utt")}
    assert not set(read_map(heldout / "test" / "spk2utt")) & demo_speakers
    # other recording conditions: noisier rooms leave less between the loud and the quiet frames of an utterance
    # (seeds 0-5 of this size: 1.3 to 3.5 nats less than the demo's)
    def dynamic_range(root: Path) -> float:
        feats = kaldiio.load_scp_sequential(str(root / "test" / "feats.scp"))
        energies = [np.log(np.exp(f).sum(axis=1)) for _, f in feats]
        return float(np.mean([np.percentile(e, 90) - np.percentile(e, 10) for e in energies]))
    assert dynamic_range(heldout) < dynamic_range(demo) - 1.0
    # the noises of its test_noisy are none of the demo's
    def noises(root: Path) -> set[bytes]:
        return {wavfile.read(p)[1].tobytes() for p in (root / "wav" / "augment_heldout").rglob("*.wav")}
    assert not noises(demo) & noises(heldout)


def test_heldout_variant_is_deterministic(heldout: Path, tmp_path: Path) -> None:
    again = make_demo(tmp_path / "again", **TINY, variant="heldout")
    for split in ("test", "test_noisy"):
        assert (heldout / split / "feats.ark").read_bytes() == (again / split / "feats.ark").read_bytes()
        assert (heldout / split / "trials").read_text() == (again / split / "trials").read_text()
    assert 0 < baseline_eer(heldout / "test") < 60
    with pytest.raises(ValueError, match="variant must be one of demo, heldout"):
        make_demo(tmp_path / "bad", **TINY, variant="other")
