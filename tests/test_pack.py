"""`python -m stklia.pack` and training from Kaldi archives: crops, training runs and resumes equal to those of the
loose files; one handle per archive; resumable packing; one line for a bad source, a truncated archive or a bad
offset."""

from __future__ import annotations

import builtins
import dataclasses
import os
import shutil
import signal
from pathlib import Path

import kaldiio
import numpy as np
import pytest
import soundfile

from stklia.data import archives
from stklia.data.datasets import TrainingCrops
from stklia.data.features import Fbank
from stklia.data.kaldi import load_data_dir
from stklia.modeldir.checkpoints import load_checkpoint

from conftest import (
    AUGMENTED_RUN,
    PACKED,
    SR,
    N,
    assert_same_run,
    checkpoint_path,
    demo_augment,
    hooked,
    packed_demo,
    run_stklia,
    short_run,
)

FORMATS = ("wav", "flac")


@pytest.fixture(scope="module")
def packed(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The demo corpus with train_wav and the augmentation sets packed, as wav and as FLAC members, in archives of
    64 KiB (several archives per set)."""
    return {fmt: packed_demo(demo_root, tmp_path_factory.mktemp(f"packed_{fmt}"), fmt) for fmt in FORMATS}


def assert_same_crop(crop: object, expected: object) -> None:
    for field in dataclasses.fields(expected):
        got, want = getattr(crop, field.name), getattr(expected, field.name)
        if isinstance(want, np.ndarray):
            assert got.dtype == want.dtype and np.array_equal(got, want), field.name
        else:
            assert got == want, field.name


@pytest.mark.parametrize("fmt", FORMATS)
def test_crops_from_archives_are_those_of_the_loose_files(demo_root: Path, packed: dict[str, Path], fmt: str) -> None:
    """Every random choice and every sample of a training item (speed perturbation's source window, impulse
    response, noise windows: the augmentation sets packed too) is the same from wav or FLAC members as from the
    loose files."""
    loose = TrainingCrops(load_data_dir(demo_root / "train_wav", Fbank(num_mel_bins=40)), 60, True,
                          demo_augment(demo_root), on_device=True)
    root = packed[fmt]
    data = load_data_dir(root / "train_wav", Fbank(num_mel_bins=40))
    assert all(".ark:" in data.feats[utt] for utt in data.utts)
    crops = TrainingCrops(data, 60, True, demo_augment(root), on_device=True)
    speeds, rirs, noises = set(), 0, 0
    for index in range(len(crops)):
        for seed in range(6):
            crop = crops[index, seed]
            assert_same_crop(crop, loose[index, seed])
            speeds.add(crop.speed)
            rirs, noises = rirs + (crop.rir is not None), noises + (crop.noise is not None)
    assert speeds == {0, 1, 2} and rirs and noises


@pytest.mark.parametrize("fmt", FORMATS)
def test_kaldi_tools_read_the_members(demo_root: Path, packed: dict[str, Path], fmt: str) -> None:
    """kaldiio (and, for wav members, Kaldi's own programs: the same RIFF bytes after the key) reads what pack
    wrote: the loose files' samples."""
    loose = dict(line.split() for line in (demo_root / "train_wav" / "wav.scp").read_text().splitlines())
    for utt, (rate, samples) in kaldiio.load_scp_sequential(str(packed[fmt] / "train_wav" / "wav.scp")):
        expected, expected_rate = soundfile.read(loose[utt], dtype="int16" if fmt == "wav" else "float64")
        assert rate == expected_rate == SR and np.array_equal(samples, expected), utt


def test_a_training_process_opens_each_archive_once(packed: dict[str, Path]) -> None:
    """Items read through the archives' shared handles: no open per item (os.open and open counted)."""
    archives.close_archives()
    root = packed["flac"]
    crops = TrainingCrops(load_data_dir(root / "train_wav", Fbank(num_mel_bins=40)), 60, True, demo_augment(root),
                          on_device=True)
    opened: list[str] = []
    os_open, open_ = os.open, builtins.open

    def counting_os_open(path: object, *args: object, **kwargs: object) -> int:
        opened.append(str(path))
        return os_open(path, *args, **kwargs)

    def counting_open(path: object, *args: object, **kwargs: object) -> object:
        opened.append(str(path))
        return open_(path, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "open", counting_os_open)
        patch.setattr(builtins, "open", counting_open)
        for item in range(200):
            crops[item % len(crops), item]
    arks = [path for path in opened if path.endswith(".ark")]
    assert len(arks) == len(set(arks)) and set(arks) == set(opened), opened  # each archive once, nothing else
    held = {ark.rsplit("/", 2)[-2] for ark in arks}
    assert held <= {name.split("/")[-1] for name in PACKED} and "train_wav" in held


def test_a_crop_reads_its_window_of_a_member(tmp_path: Path) -> None:
    """A 200-frame crop of an 8 s member reads about its own bytes (wav) or its own compressed bytes and the FLAC
    frames around them, not the member (bytes counted by the kernel: /proc/self/io)."""
    rng = np.random.default_rng(0)
    samples = (np.sin(np.arange(8 * SR) * 0.05) * 8000 + rng.normal(0, 300, 8 * SR)).astype(np.int16)
    read: dict[str, float] = {}
    for fmt in FORMATS:
        src = tmp_path / f"src_{fmt}"
        src.mkdir()
        soundfile.write(src / "a.wav", samples, SR)
        (src / "wav.scp").write_text(f"spk-a {src / 'a.wav'}\n")
        (src / "utt2spk").write_text("spk-a spk\n")
        run_stklia("pack", str(src), str(tmp_path / fmt), f"format={fmt}", "progress=false", cwd=tmp_path)
        crops = TrainingCrops(load_data_dir(tmp_path / fmt, Fbank(num_mel_bins=80)), 200, True, on_device=True)
        crops[0, 0]  # the archive opened, the modules warm

        def rchar() -> int:
            return int(next(line for line in Path("/proc/self/io").read_text().splitlines()
                            if line.startswith("rchar")).split()[1])

        before = rchar()
        for seed in range(1, 21):
            crops[0, seed]
        read[fmt] = (rchar() - before) / 20 / (2 * crops.crop_samples)
    assert read["wav"] < 1.1, read  # the crop's samples and the member's header
    assert read["flac"] < 2.0, read  # a FLAC member's 8 s are ~250 KB: a window, not the member


def test_pack_resumes_after_a_bad_source_and_equals_a_straight_pack(demo_root: Path, tmp_path: Path) -> None:
    """A source that cannot be read stops the pack in one line naming it; the full archives stay, the one being
    written goes; run again (the source mended), the pack keeps the full archives and gives what a pack in one go
    gives. Packed already, it says so; other settings into the same dir are refused in one line."""
    src = Path(shutil.copytree(demo_root / "train_wav", tmp_path / "src"))
    lines = (src / "wav.scp").read_text().splitlines()
    broken = list(lines)
    utt, path = broken[15].split()
    broken[15] = f"{utt} cat {path}.missing |"
    (src / "wav.scp").write_text("\n".join(broken) + "\n")
    out, straight = tmp_path / "out", tmp_path / "straight"
    proc = run_stklia("pack", str(src), str(out), "archive_size=60K", "nj=2", "progress=false", cwd=tmp_path,
                      check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"stklia: error: {src / 'wav.scp'}:16: cannot read audio of '{utt}': command "
                                  "exited with status 1") and proc.stderr.count("\n") == 1, proc.stderr
    assert not (out / "wav.scp").exists()
    full = sorted(out.glob("audio.*.scp"))
    assert full and sorted(out.glob("audio.*.ark")) == [scp.with_suffix(".ark") for scp in full]  # no partial one
    kept = {scp.with_suffix(".ark"): os.stat(scp.with_suffix(".ark")).st_mtime_ns for scp in full}

    (src / "wav.scp").write_text("\n".join(lines) + "\n")
    resumed = run_stklia("pack", str(src), str(out), "archive_size=60K", "nj=2", cwd=tmp_path)
    assert {ark: os.stat(ark).st_mtime_ns for ark in kept} == kept  # not written again
    assert f"{out}: 24 utterances of {src} in " in resumed.stdout
    run_stklia("pack", str(src), str(straight), "archive_size=60K", cwd=tmp_path)
    names = sorted(p.name for p in straight.iterdir())
    assert names == sorted(p.name for p in out.iterdir()) and "audio.3.ark" in names
    for name in names:
        if name not in ("wav.scp", "pack.json"):
            assert (out / name).read_bytes() == (straight / name).read_bytes(), name
    assert (out / "wav.scp").read_text().replace(str(out), str(straight)) == (straight / "wav.scp").read_text()

    again = run_stklia("pack", str(src), str(out), "archive_size=60K", cwd=tmp_path)
    assert again.stdout.strip() == f"{out}: packed already (24 utterances)"
    other = run_stklia("pack", str(src), str(out), "format=wav", cwd=tmp_path, check=False)
    assert other.returncode == 1 and other.stderr.count("\n") == 1
    assert "holds a pack of another source or settings (format, archive_size differ)" in other.stderr


BREAKS = {"truncated archive": "the archive is truncated: the member ends at byte",
          "bad offset": "no audio member there (a wav `RIFF` or kaldiio's `AUDIO`), found b'"}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("damage", BREAKS)
def test_a_damaged_archive_is_one_line_naming_utterance_archive_and_offset(demo_root: Path, tmp_path: Path,
                                                                          fmt: str, damage: str) -> None:
    out = tmp_path / "packed"
    run_stklia("pack", str(demo_root / "train_wav"), str(out), f"format={fmt}", "archive_size=64K",
               "progress=false", cwd=tmp_path)
    lines = (out / "wav.scp").read_text().splitlines()
    if damage == "truncated archive":
        line = len(lines)  # the last member of the last archive
        utt, entry = lines[-1].split()
        ark, offset = entry.rsplit(":", 1)
        os.truncate(ark, os.path.getsize(ark) - 100)
    else:
        line = 3
        utt, entry = lines[2].split()
        ark, offset = entry.rsplit(":", 1)
        offset = str(int(offset) + 1)
        lines[2] = f"{utt} {ark}:{offset}"
        (out / "wav.scp").write_text("\n".join(lines) + "\n")
    proc = run_stklia("check_data", str(out), "progress=false", cwd=tmp_path, check=False)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"stklia: error: {out / 'wav.scp'}:{line}: cannot read audio of '{utt}': archive "
                                  f"{ark}, member at offset {offset}: {BREAKS[damage]}"), proc.stderr


def test_training_from_archives_is_training_from_the_loose_files_and_resumes_exactly(packed: dict[str, Path],
                                                                                    augmented_run: dict,
                                                                                    tmp_path: Path) -> None:
    """Audio and augmentation sets packed (FLAC members): the checkpoints are bitwise those of the loose files', and
    a packed run killed and resumed is bitwise the uninterrupted one (a loader worker reading the archives)."""
    run = [*short_run(packed["flac"]), *AUGMENTED_RUN, "num_workers=1"]
    run_stklia("train", *run, f"model_dir={tmp_path / 'packed'}", cwd=tmp_path)
    last = checkpoint_path(tmp_path / "packed", 2 * N)
    assert_same_run(load_checkpoint(last), augmented_run)

    killed = run_stklia("train", *run, *hooked("SIGKILL", N + 1), f"model_dir={tmp_path / 'resumed'}", cwd=tmp_path,
                        check=False)
    assert killed.returncode == -signal.SIGKILL
    run_stklia("train", *run, f"model_dir={tmp_path / 'resumed'}", "checkpoint=last", cwd=tmp_path)
    assert_same_run(load_checkpoint(checkpoint_path(tmp_path / "resumed", 2 * N)), load_checkpoint(last))
