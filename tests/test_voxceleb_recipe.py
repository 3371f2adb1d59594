"""recipes/voxceleb stage 0 on a tiny fake corpus laid out like VoxCeleb1/2."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import kaldiio
import numpy as np

from stklia.data.kaldi import load_data_dir, read_trials
from stklia.features import Fbank

from conftest import REPO

RECIPE = REPO / "recipes" / "voxceleb"


def fake_voxceleb(demo_root: Path, root: Path) -> dict[str, str]:
    """vox1/wav/<spk>/<video>/<n>.wav copied from demo wavs, vox2/aac/... m4a placeholders, official lists.

    Returns the official path of each vox1 recording -> the demo utterance it copies."""
    wavs = dict(line.split() for line in (demo_root / "test" / "wav.scp").read_text().splitlines())
    source = {}
    for i, (utt, path) in enumerate(sorted(wavs.items())[:6]):
        official = f"id1000{i % 2}/vid{i % 3}/{i:05d}.wav"
        (root / "vox1" / "wav" / official).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, root / "vox1" / "wav" / official)
        source[official] = utt
    for spk in ("id00012", "id00015"):
        (root / "vox2" / "aac" / spk / "abc").mkdir(parents=True)
        (root / "vox2" / "aac" / spk / "abc" / "00001.m4a").write_bytes(b"not decoded in this test")
    paths = sorted(source)
    (root / "vox1" / "veri_test.txt").write_text(f"1 {paths[0]} {paths[2]}\n0 {paths[0]} {paths[1]}\n")
    (root / "vox1" / "list_test_hard2.txt").write_text(f"0 {paths[3]} {paths[4]}\n")
    return source


def test_stage_0_prepares_data_dirs_and_trials(demo_root: Path, tmp_path: Path) -> None:
    source = fake_voxceleb(demo_root, tmp_path)
    env = {**os.environ, "VOX1": str(tmp_path / "vox1"), "VOX2": str(tmp_path / "vox2"), "DATA": str(tmp_path / "data")}
    subprocess.run([str(RECIPE / "run.sh"), "--stage", "0", "--stop-stage", "0"], env=env, check=True,
                   capture_output=True, text=True)
    data = tmp_path / "data"
    vox1 = load_data_dir(data / "vox1", Fbank(num_mel_bins=40))
    assert vox1.utts == sorted(p[:-4].replace("/", "-") for p in source)
    assert vox1.speakers == ["id10000", "id10001"]
    offline = dict(kaldiio.load_scp_sequential(str(demo_root / "test" / "feats.scp")))
    for official, utt in source.items():
        np.testing.assert_allclose(vox1.load(official[:-4].replace("/", "-")), offline[utt], rtol=0, atol=1e-4)
    assert sorted(p.name for p in (data / "vox1").glob("trials_*")) == ["trials_H_cleaned", "trials_O"]
    trials = read_trials(data / "vox1" / "trials_O", vox1.feats)
    assert trials.labels.tolist() == [1, 0] and trials.enroll[0] == vox1.utts[0]
    vox2 = (data / "vox2_dev" / "wav.scp").read_text().splitlines()
    assert len(vox2) == 2 and vox2[0].startswith("id00012-abc-00001 ffmpeg ") and vox2[0].endswith(" - |")
    assert (data / "vox2_dev" / "spk2utt").read_text() == "id00012 id00012-abc-00001\nid00015 id00015-abc-00001\n"


def test_bad_official_trials_name_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "veri_test.txt"
    bad.write_text("1 a/b/1.wav a/b/2.wav\nyes a/b/1.wav a/b/3.wav\n")
    proc = subprocess.run(["python", str(RECIPE / "local" / "prepare.py"), "trials", str(bad), str(tmp_path / "out")],
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"stklia: error: {bad}:2: label 'yes' is not 0 or 1"
    assert not (tmp_path / "out").exists()
