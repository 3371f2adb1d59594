"""Features and augmentation on the training device (features_on_device): the workers deliver raw crops and
the front end computes a whole batch; it must draw and compute what the CPU path does item by item."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from stklia.core.errors import InputError
from stklia.data.datasets import BatchSchedule, TrainingCrops, training_loader
from stklia.data.features import Fbank
from stklia.data.frontend import CPU_ROWS, AudioBatch
from stklia.data.kaldi import load_data, load_data_dir
from stklia.training.distributed import World
from stklia.training.loop import features_on_device

from conftest import TINY_TRAINING, demo_augment, demo_data_overrides, run_stklia


def test_the_device_path_draws_and_computes_what_the_cpu_path_does(demo_root: Path) -> None:
    data = load_data_dir(demo_root / "train_wav", Fbank(num_mel_bins=40))
    augment = demo_augment(demo_root)
    cpu = TrainingCrops(data, 60, True, augment)
    device = TrainingCrops(data, 60, True, augment, on_device=True)
    schedule = BatchSchedule(cpu.labels, batch_size=12, num_steps=3, seed=5)
    work = {"speed": 0, "reverb": 0, "noise": 0}
    for step in range(3):
        items = schedule.batch(step)
        expected = [cpu[item] for item in items]  # the CPU path: one item at a time, in the worker
        batch = device.collate([device[item] for item in items])
        assert isinstance(batch, AudioBatch)
        feats, labels = device.to_device(batch, torch.device("cpu"))
        assert labels.tolist() == [label for _, label in expected]
        np.testing.assert_allclose(feats.numpy(), torch.stack([f for f, _ in expected]).numpy(), rtol=0, atol=2e-3)
        assert torch.isfinite(feats).all() and feats.shape == (12, 60, 40)
        work["speed"] += sum(len(rows) for rows in batch.speed_rows.values())
        work["reverb"] += len(batch.reverb_rows)
        work["noise"] += len(batch.noise_rows)
    assert all(count > 0 for count in work.values()), work


def test_the_cpu_path_computes_a_batchs_features_together_each_as_it_is_alone(demo_root: Path) -> None:
    """A loader worker asks for a batch's items together (TrainingCrops.__getitems__), and on the CPU path the
    front end computes their audio items together (the waveforms at once, the features CPU_ROWS at a time): each
    item gets, in its place, the features and the label it gets alone, also when feats.scp and audio utterances
    share the batch."""
    data = load_data([demo_root / "test", demo_root / "train_wav"], Fbank(num_mel_bins=40))
    crops = TrainingCrops(data, 60, True, demo_augment(demo_root))
    items = BatchSchedule(crops.labels, batch_size=48, num_steps=1, seed=3, sampling="utterance").batch(0)
    is_audio = [data.utts[index] in data.audio for index, _ in items]
    assert sum(is_audio) > 2 * CPU_ROWS and not all(is_audio)
    together = crops.__getitems__(items)
    for item, (feats, label) in zip(items, together, strict=True):
        alone, alone_label = crops[item]
        assert label == alone_label
        np.testing.assert_allclose(feats.numpy(), alone.numpy(), rtol=0, atol=1e-3)


def test_the_front_end_never_reads_a_value_of_the_batch_on_the_host(demo_root: Path) -> None:
    """On a GPU, the host reading a value of the batch waits for the device. On the meta device (shapes, no
    values) any such read fails: the whole front end runs there, dither included. Its constants are copied to a
    device once, and a pickled front end (a loader worker's) holds none of those copies."""
    data = load_data_dir(demo_root / "train_wav", Fbank(num_mel_bins=40, dither=1.0))
    device = TrainingCrops(data, 60, True, demo_augment(demo_root), on_device=True)
    batch = device.collate([device[item] for item in BatchSchedule(device.labels, 12, 1, seed=5).batch(0)])
    assert batch.speed_rows and len(batch.reverb_rows) and len(batch.noise_rows)
    feats, labels = device.to_device(batch, torch.device("meta"))
    assert feats.device.type == labels.device.type == "meta" and feats.shape == (12, 60, 40)
    copies = {**device.frontend.features._copies, **device.frontend.speed._copies}
    assert {key[1].type for key in copies} == {"meta"}
    device.to_device(batch, torch.device("meta"))
    assert {**device.frontend.features._copies, **device.frontend.speed._copies}.keys() == copies.keys()
    unpickled = pickle.loads(pickle.dumps(device))
    assert not unpickled.frontend.features._copies and not unpickled.frontend.speed._copies


def assert_same_audio(batch: AudioBatch, expected: AudioBatch) -> None:
    for name in ("samples", "rirs", "noise", "offsets", "reverb_rows", "noise_rows", "zeroed", "labels"):
        assert torch.equal(getattr(batch, name), getattr(expected, name)), name
    assert batch.dither_seeds == expected.dither_seeds and batch.speed_max_offsets == expected.speed_max_offsets


def test_loader_workers_hand_batches_over_in_buffers_the_training_step_releases(demo_root: Path) -> None:
    """The device path's workers collate into shared-memory buffers made once (BatchSlots), which the training
    step hands back after the front end: in training every batch comes in one and holds what the same items
    collated in this process hold. A consumer that keeps its batches gets new memory once a worker's buffers
    are all held: none is written over, and nothing waits."""
    data = load_data_dir(demo_root / "train_wav", Fbank(num_mel_bins=40))
    crops = TrainingCrops(data, 60, True, demo_augment(demo_root), on_device=True)
    schedule = BatchSchedule(crops.labels, batch_size=12, num_steps=16, seed=5)
    expected = [crops.collate([crops[item] for item in schedule.batch(step)]) for step in range(16)]
    assert all(batch.slot is None for batch in expected)  # no buffers outside a loader's workers
    slots = []
    for step, batch in enumerate(training_loader(crops, schedule, num_workers=2, prefetch_factor=2,
                                                 pin_memory=False)):
        assert_same_audio(batch, expected[step])
        slots.append(batch.slot)
        feats, _ = crops.to_device(batch, torch.device("cpu"))
        assert batch.slot is None and torch.equal(feats, crops.to_device(expected[step], torch.device("cpu"))[0])
    assert None not in slots and len(set(slots)) == 2 * (2 + 2)  # every worker's prefetch_factor + 2 buffers

    kept = list(training_loader(crops, schedule, num_workers=2, prefetch_factor=2, pin_memory=False))
    for batch, reference in zip(kept, expected, strict=True):
        assert_same_audio(batch, reference)
    assert sum(batch.slot is not None for batch in kept) == 2 * (2 + 2)


def test_the_device_path_needs_audio_input(demo_root: Path, tmp_path: Path) -> None:
    data = load_data_dir(demo_root / "train")  # feats.scp
    with pytest.raises(InputError, match=r"feats.scp:1: features_on_device needs audio input"):
        TrainingCrops(data, 60, True, on_device=True)
    proc = run_stklia("train", *demo_data_overrides(demo_root), *TINY_TRAINING, "features_on_device=true",
                      f"model_dir={tmp_path / 'model'}", cwd=tmp_path, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().endswith("features_on_device needs audio input, but 'spk0000-0000' has precomputed "
                                        "features")
    assert not (tmp_path / "model" / "checkpoints").exists()


def test_cli_trains_with_the_device_path_and_loader_workers(demo_root: Path, tmp_path: Path) -> None:
    proc = run_stklia("train", f"data.root={demo_root}", "data.prepare=null", *TINY_TRAINING, "experiment=demo_aug",
                      "features_on_device=true", "num_workers=2", "prefetch_factor=3",
                      f"model_dir={tmp_path / 'model'}", cwd=tmp_path)
    assert "Test results" in proc.stdout
    log = (tmp_path / "model" / "train.log").read_text()
    assert "audio features and augmentation: on the training device (cpu)" in log


def test_auto_puts_features_on_the_device_when_training_audio_on_a_gpu(demo_root: Path) -> None:
    audio, feats = load_data_dir(demo_root / "train_wav", Fbank(num_mel_bins=40)), load_data_dir(demo_root / "train")
    gpu, cpu = World(torch.device("cuda")), World(torch.device("cpu"))
    assert features_on_device("auto", audio, gpu) and not features_on_device("auto", feats, gpu)
    assert not features_on_device("auto", audio, cpu)
    assert features_on_device(True, audio, cpu) and not features_on_device(False, audio, gpu)


def test_cpu_path_batches_do_not_depend_on_the_loader_workers(demo_root: Path) -> None:
    """Features computed in the training process (num_workers=0, torch on several threads) equal a loader worker's
    (one thread), so a run resumed with another num_workers stays exact."""
    data = load_data_dir(demo_root / "train_wav", Fbank(num_mel_bins=40))
    crops = TrainingCrops(data, 60, True, demo_augment(demo_root))
    schedule = BatchSchedule(crops.labels, batch_size=8, num_steps=4, seed=3)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        alone = list(training_loader(crops, schedule, 0, 2, False))
    finally:
        torch.set_num_threads(threads)
    with_worker = list(training_loader(crops, schedule, 1, 2, False))
    for (feats, labels), (expected, expected_labels) in zip(alone, with_worker):
        assert torch.equal(feats, expected) and torch.equal(labels, expected_labels)
