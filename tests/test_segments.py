"""Kaldi `segments` in data dirs: utterances as time spans of wav.scp's recordings, read by train, test and extract
as the same utterances cut into files of their own are (their reading and checking: tests/test_check_data.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import kaldiio
import numpy as np
import soundfile

from stklia.data.features import Fbank
from stklia.data.kaldi import load_data_dir
from stklia.modeldir.checkpoints import load_checkpoint

from conftest import (
    AUGMENTED_RUN,
    N,
    assert_same_run,
    checkpoint_path,
    results_written,
    run_stklia,
    segmented_copy,
    short_run,
)


def test_segments_read_kaldis_samples(demo_root: Path, tmp_path: Path) -> None:
    """Each segment's samples are its recording's int(start x rate) .. int(end x rate) - 1 (extract-segments),
    the ones of the file it was cut from."""
    segmented = segmented_copy(demo_root / "train_wav", tmp_path / "segmented")
    data = load_data_dir(segmented, Fbank(num_mel_bins=40))
    wavs = dict(line.split() for line in (demo_root / "train_wav" / "wav.scp").read_text().splitlines())
    recordings = dict(line.split() for line in (segmented / "wav.scp").read_text().splitlines())
    assert data.utts == sorted(wavs) and len(recordings) == len(wavs) // 2
    for line in (segmented / "segments").read_text().splitlines():
        utt, recording, start, end = line.split()
        whole = soundfile.read(recordings[recording], dtype="int16")[0]
        expected = whole[int(float(start) * 16000) : int(float(end) * 16000)]
        assert np.array_equal(expected, soundfile.read(wavs[utt], dtype="int16")[0])
        assert np.array_equal(data.read_audio(utt), expected.astype(np.float32))


def test_train_test_and_extract_read_segments(demo_root: Path, trained: Path, augmented_run: dict,
                                              tmp_path: Path) -> None:
    """Training (with augmentation: speed-perturbed crops' windows), testing and extracting on segments of
    recordings give bitwise what they give on the files the segments were cut from."""
    train = segmented_copy(demo_root / "train_wav", tmp_path / "train")
    run_stklia("train", *short_run(demo_root), *AUGMENTED_RUN, f"data.train=[{train}]",
               f"model_dir={tmp_path / 'segments'}", cwd=tmp_path)
    assert_same_run(load_checkpoint(checkpoint_path(tmp_path / "segments", 2 * N)), augmented_run)

    files = tmp_path / "test_files"
    shutil.copytree(demo_root / "test", files, ignore=shutil.ignore_patterns("feats.*"))
    segments = segmented_copy(files, tmp_path / "test_segments")
    found = {}
    for name, test in (("files", files), ("segments", segments)):
        proc = run_stklia("test", f"model_dir={trained}", f"test={test}", f"test_trials=[{test / 'trials'}]",
                          "asnorm_top_n=0", "progress=false", "num_workers=0", cwd=tmp_path)
        summary, out = results_written(proc)
        scores = [p.read_text() for p in sorted(out.rglob("*.scores"))]
        assert scores
        found[name] = json.loads(summary.read_text())["results"], scores
        run_stklia("extract", f"model_dir={trained}", f"data={test}", "format=txt", f"out_dir={tmp_path / name}",
                   "progress=false", "num_workers=0", cwd=tmp_path)
    results = {name: [{k: v for k, v in r.items() if k not in ("trials", "files")} for r in rs]
               for name, (rs, _) in found.items()}
    assert results["segments"] == results["files"] and found["segments"][1] == found["files"][1]
    embedded = {name: dict(kaldiio.load_ark(str(tmp_path / name / "embeddings.txt"))) for name in found}
    assert embedded["segments"].keys() == embedded["files"].keys()
    for utt, emb in embedded["files"].items():
        assert np.array_equal(embedded["segments"][utt], emb), utt
