"""Node-local staging of packed data dirs (data.stage_to): copied once, checked by size and checksum, a corrupt copy
replaced, one line when the disk is too small, and a training run that reads the copies."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from stklia.core.errors import InputError
from stklia.data.features import Fbank
from stklia.data.kaldi import load_data_dir
from stklia.data.staging import stage, staged_path

from conftest import TINY_TRAINING, demo_data_overrides, packed_demo, require_system, run_stklia


@pytest.fixture(scope="module")
def packed(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return packed_demo(demo_root, tmp_path_factory.mktemp("packed"), "flac", archive_size="32K")


def copies(staged: Path) -> dict[str, tuple[int, int]]:
    """Each staged archive's (inode, modification time): a copy made again changes them."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(staged.glob("*.ark"))}


def test_staging_twice_copies_once_and_a_corrupt_copy_is_replaced(demo_root: Path, packed: Path, tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    src = packed / "train_wav"
    caplog.set_level(logging.INFO, "stklia.data.staging")
    staged = stage(src, tmp_path / "scratch")
    archives = sorted(p.name for p in src.glob("*.ark"))
    assert staged == staged_path(src, tmp_path / "scratch") and len(archives) > 3
    assert sorted(copies(staged)) == archives
    assert f"{len(archives)} of {len(archives)} archives copied" in caplog.text
    for name in archives:
        assert (staged / name).read_bytes() == (src / name).read_bytes()
    first = copies(staged)

    assert stage(src, tmp_path / "scratch") == staged  # a second run, a requeued job
    assert copies(staged) == first and f"0 of {len(archives)} archives copied" in caplog.text

    flipped, short = staged / archives[1], staged / archives[2]
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF  # the same size, another checksum
    flipped.write_bytes(bytes(data))
    os.truncate(short, short.stat().st_size - 10)
    stage(src, tmp_path / "scratch")
    assert f"2 of {len(archives)} archives copied" in caplog.text
    now = copies(staged)
    assert {name for name in archives if now[name] != first[name]} == {flipped.name, short.name}
    assert flipped.read_bytes() == (src / flipped.name).read_bytes() and short.read_bytes() == (src / short.name
                                                                                                  ).read_bytes()
    # the staged dir is the packed dir, read from the copies
    packed_data, staged_data = (load_data_dir(d, Fbank(num_mel_bins=40)) for d in (src, staged))
    assert all(str(staged) in staged_data.feats[utt] for utt in staged_data.utts)
    for utt in packed_data.utts:
        assert np.array_equal(packed_data.read_audio(utt), staged_data.read_audio(utt))


def test_a_damaged_packed_archive_is_not_staged(packed: Path, tmp_path: Path) -> None:
    src = Path(shutil.copytree(packed / "augment" / "rirs", tmp_path / "rirs"))
    ark = sorted(src.glob("*.ark"))[0]
    data = bytearray(ark.read_bytes())
    data[100] ^= 0xFF
    ark.write_bytes(bytes(data))
    with pytest.raises(InputError, match=f"^{ark}: its SHA-256 is not the one pack recorded in "):
        stage(src, tmp_path / "scratch")
    assert not list(staged_path(src, tmp_path / "scratch").glob("*.ark*"))  # nothing half-copied


def test_a_disk_too_small_is_one_line(packed: Path, tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)],
                             capture_output=True).returncode == 0
    require_system(mounted, "mounting a 64 KiB tmpfs needs root (CI runs as root)")
    try:
        with pytest.raises(InputError) as err:
            stage(packed / "train_wav", small)
        assert str(err.value).count("\n") == 0 and str(err.value).startswith(f"data.stage_to: {small} has ")
        assert f"free, and staging {packed / 'train_wav'} there needs " in str(err.value)
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_training_stages_its_packed_data_and_reuses_it(demo_root: Path, packed: Path, tmp_path: Path) -> None:
    """A run with data.stage_to trains from the copies of its packed train dir and augmentation sets; the next run
    (a requeued job) copies nothing."""
    run = [*demo_data_overrides(packed), *TINY_TRAINING, "num_iterations=2", "experiment=demo_aug", "data.eval=null",
           "data.test=null", f"data.stage_to={tmp_path / 'scratch'}"]
    run_stklia("train", *run, f"model_dir={tmp_path / 'first'}", cwd=tmp_path)
    log = (tmp_path / "first" / "train.log").read_text()
    for name in ("train_wav", "augment/noise", "augment/music", "augment/babble", "augment/rirs"):
        staged = staged_path(packed / name, tmp_path / "scratch")
        arks = len(list(staged.glob("*.ark")))
        assert f"staged {packed / name} to {staged}: {arks} of {arks} archives copied" in log
    run_stklia("train", *run, f"model_dir={tmp_path / 'second'}", cwd=tmp_path)
    assert log.count("archives copied") == (tmp_path / "second" / "train.log").read_text().count(" 0 of ") == 5


def test_one_process_per_node_stages(demo_root: Path, packed: Path, tmp_path: Path) -> None:
    """Local rank 0 of a node copies; the node's other processes only use its copies (after the run's barrier), and
    stop in one line where there are none (a stage_to that is not shared by the node's processes)."""
    from hydra import compose, initialize_config_dir

    from stklia.core.config import CONF_DIR, register_resolvers
    from stklia.training.distributed import World
    from stklia.training.loop import stage_run_data

    register_resolvers()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", [*demo_data_overrides(packed), "experiment=demo_aug",
                                f"data.stage_to={tmp_path / 'scratch'}"])
    cpu = torch.device("cpu")
    with pytest.raises(InputError, match="was not staged on this node"):
        stage_run_data(cfg, World(cpu, rank=1, size=1, local_rank=1))
    assert not list((tmp_path / "scratch").rglob("*.ark"))
    train, augment = stage_run_data(cfg, World(cpu, rank=2, size=1, local_rank=0))  # node main of another node
    assert train == [str(staged_path(packed / "train_wav", tmp_path / "scratch"))]
    assert augment.reverb.rirs == str(staged_path(packed / "augment" / "rirs", tmp_path / "scratch"))
    assert stage_run_data(cfg, World(cpu, rank=1, size=1, local_rank=1)) == (train, augment)
