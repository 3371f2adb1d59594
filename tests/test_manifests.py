"""lhotse manifests as data: read as lhotse itself reads them, trained and tested on, packed; one line without the
extra. The manifests are made by lhotse from the demo's recordings (lhotse.Recording.from_file: their exact
lengths; lhotse.kaldi.load_kaldi_data_dir would round them to milliseconds, which is other audio)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from stklia.data.features import Fbank
from stklia.data.kaldi import load_data_dir
from stklia.modeldir.checkpoints import load_checkpoint

from conftest import (
    AUGMENTED_RUN,
    N,
    assert_same_run,
    checkpoint_path,
    require_system,
    run_stklia,
    short_run,
    without_module,
)


@pytest.fixture(scope="module")
def manifests(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """demo_cuts_train.jsonl.gz (train_wav as a CutSet, one supervision a cut) and demo_{recordings,supervisions}_
    test.jsonl.gz (test), written by lhotse."""
    require_system(importlib.util.find_spec("lhotse") is not None,
                   "lhotse is not installed: pip install -e \".[lhotse]\" (the dev extra has it)")
    from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet

    def manifests_of(kaldi_dir: Path) -> tuple[RecordingSet, SupervisionSet]:
        wavs = [line.split() for line in (kaldi_dir / "wav.scp").read_text().splitlines()]
        utt2spk = dict(line.split() for line in (kaldi_dir / "utt2spk").read_text().splitlines())
        recordings = RecordingSet.from_recordings(Recording.from_file(path, recording_id=utt) for utt, path in wavs)
        return recordings, SupervisionSet.from_segments(
            SupervisionSegment(utt, utt, 0, recordings[utt].duration, speaker=utt2spk[utt]) for utt, _ in wavs)

    out = tmp_path_factory.mktemp("manifests")
    recordings, supervisions = manifests_of(demo_root / "train_wav")
    CutSet.from_manifests(recordings=recordings, supervisions=supervisions).trim_to_supervisions(
        keep_overlapping=False).to_file(out / "demo_cuts_train.jsonl.gz")
    recordings, supervisions = manifests_of(demo_root / "test")
    recordings.to_file(out / "demo_recordings_test.jsonl.gz")
    supervisions.to_file(out / "demo_supervisions_test.jsonl.gz")
    return out


def test_manifests_read_the_samples_lhotse_reads(demo_root: Path, manifests: Path) -> None:
    from lhotse import load_manifest

    cuts = load_manifest(manifests / "demo_cuts_train.jsonl.gz")
    data = load_data_dir(manifests / "demo_cuts_train.jsonl.gz", Fbank(num_mel_bins=40))
    utt2spk = dict(line.split() for line in (demo_root / "train_wav" / "utt2spk").read_text().splitlines())
    assert data.utts == sorted(cut.id for cut in cuts) and data.utt2spk == utt2spk
    for cut in cuts:
        assert np.array_equal(data.read_audio(cut.id), cut.load_audio()[0] * 32768), cut.id
    for name in ("demo_supervisions_test.jsonl.gz", "demo_recordings_test.jsonl.gz"):  # either names the pair
        test = load_data_dir(manifests / name, Fbank(num_mel_bins=40))
        assert test.utts == load_data_dir(demo_root / "test").utts


def test_a_manifest_trains_tests_and_packs(demo_root: Path, manifests: Path, augmented_run: dict,
                                          tmp_path: Path) -> None:
    """Training on a CutSet is training on the Kaldi dir it was made of (bitwise); a RecordingSet with its
    SupervisionSet is tested on; pack takes a manifest."""
    cuts, test = manifests / "demo_cuts_train.jsonl.gz", manifests / "demo_supervisions_test.jsonl.gz"
    run_stklia("train", *short_run(demo_root), *AUGMENTED_RUN, f"data.train=[{cuts}]",
               f"model_dir={tmp_path / 'model'}", cwd=tmp_path)
    assert_same_run(load_checkpoint(checkpoint_path(tmp_path / "model", 2 * N)), augmented_run)
    proc = run_stklia("test", f"model_dir={tmp_path / 'model'}", f"test={test}",
                      f"test_trials=[{demo_root / 'test' / 'trials'}]", "asnorm_top_n=0", "progress=false",
                      "num_workers=0", cwd=tmp_path)
    assert "Test results" in proc.stdout and "trials" in proc.stdout

    run_stklia("pack", str(cuts), str(tmp_path / "packed"), "progress=false", cwd=tmp_path)
    packed = load_data_dir(tmp_path / "packed", Fbank(num_mel_bins=40))
    loose = load_data_dir(cuts, Fbank(num_mel_bins=40))
    assert packed.utts == loose.utts and packed.utt2spk == loose.utt2spk
    for utt in loose.utts:
        assert np.array_equal(packed.read_audio(utt), loose.read_audio(utt))
    run_stklia("check_data", str(tmp_path / "packed"), str(cuts), "progress=false", cwd=tmp_path)


def test_a_manifest_without_lhotse_is_one_line(manifests: Path, tmp_path: Path) -> None:
    cuts = manifests / "demo_cuts_train.jsonl.gz"
    proc = run_stklia("pack", str(cuts), str(tmp_path / "packed"), cwd=tmp_path, check=False,
                      env=without_module("lhotse", tmp_path / "site"))
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith(f"stklia: error: {cuts}: a lhotse manifest: needs lhotse, which cannot be imported")
    assert 'pip install "stklia[lhotse]"' in proc.stderr
