"""Batched extraction: padded, length-sorted batches give the embeddings of one utterance at a time.

The reference is the generator called on each utterance alone (no padding, no lengths), so the
masking in the ResNet, the pooling masks, the batching and the chunk averaging are all checked
against the plain forward pass.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from stklia.core.errors import InputError
from stklia.data.features import subtract_mean
from stklia.data.kaldi import load_data
from stklia.evaluation.embeddings import Extraction, embed_utterances, length_batches
from stklia.models.pooling import POOLINGS

from conftest import alone, tiny_resnet

CPU = torch.device("cpu")


def assert_close(a: np.ndarray, b: np.ndarray) -> None:
    """Equal to 1e-5 of the embeddings' scale (float32 convolutions of different batch shapes round differently)."""
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max())


@pytest.mark.parametrize(("pooling", "block"), [(p, "basic") for p in POOLINGS] + [("statistical", "bottleneck")])
def test_padded_batch_equals_one_by_one(pooling: str, block: str) -> None:
    # odd and even lengths: each stride-2 stage rounds the valid length up (L -> ceil(L / 2))
    lengths = [37, 64, 65, 100, 23, 129]
    rng = np.random.default_rng(1)
    feats = [rng.normal(size=(n, 40)).astype(np.float32) for n in lengths]
    model = tiny_resnet(pooling, block=block)
    batch = torch.from_numpy(rng.normal(size=(len(lengths), max(lengths), 40)).astype(np.float32))  # garbage padding
    for i, f in enumerate(feats):
        batch[i, : len(f)] = torch.from_numpy(f)
    given = batch.clone()
    with torch.inference_mode():
        batched = model(batch, torch.tensor(lengths)).numpy()
    assert_close(batched, np.stack([alone(model, f) for f in feats]))
    assert torch.equal(batch, given)  # the padding is zeroed in the model's copy, not in the caller's tensor


@pytest.mark.parametrize(("pooling", "block"), [(p, "basic") for p in POOLINGS] + [("statistical", "bottleneck")])
def test_embed_utterances_equals_one_by_one(pooling: str, block: str, demo_root: Path) -> None:
    # extraction runs a copy with the batch norms folded, in channels-last: the reference is the model as it is
    data = load_data(demo_root / "test")
    model = tiny_resnet(pooling, block=block)
    feats = {u: subtract_mean(data.load(u)) for u in data.utts}
    assert len({len(f) for f in feats.values()}) > 1  # the batch really mixes lengths
    utts = data.utts[::-1]  # any order in, the same order out
    batched = embed_utterances(model, data, utts, Extraction(CPU, True, progress=False, batch_frames=100_000))
    assert_close(batched, np.stack([alone(model, feats[u]) for u in utts]))
    assert model.training is False


def test_chunked_embeddings_average_the_chunks(demo_root: Path) -> None:
    data = load_data(demo_root / "test")
    model = tiny_resnet("statistical")
    max_frames = 40
    settings = Extraction(CPU, True, progress=False, batch_frames=300, max_frames=max_frames)
    got = embed_utterances(model, data, data.utts, settings)
    for utt, emb in zip(data.utts, got):
        feats = subtract_mean(data.load(utt))
        chunks = np.array_split(feats, math.ceil(len(feats) / max_frames))
        assert max(len(c) for c in chunks) <= max_frames and len(chunks) > 1
        assert_close(emb, np.mean([alone(model, c) for c in chunks], axis=0))


def test_embed_keeps_training_mode_layout_and_rejects_bad_sizes(demo_root: Path) -> None:
    data = load_data(demo_root / "test")
    model = tiny_resnet("mean").train()
    embed_utterances(model, data, data.utts[:2], Extraction(CPU, True, progress=False))
    assert model.training
    assert all(p.is_contiguous() for p in model.parameters())  # the channels-last copy is extraction's own
    with pytest.raises(InputError, match="must be positive"):
        Extraction(CPU, True, progress=False, batch_frames=0)


def test_length_batches_respect_the_frame_budget() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 500, size=3000).tolist() + [2500]  # one longer than the budget
    pieces = [(i, torch.zeros(n, 1)) for i, n in enumerate(lengths)]
    batches = list(length_batches(iter(pieces), batch_frames=2000))
    seen = sorted(i for batch in batches for i, _ in batch)
    assert seen == list(range(len(lengths)))  # every piece exactly once
    for batch in batches:
        padded = len(batch) * max(len(f) for _, f in batch)
        assert padded <= 2000 or len(batch) == 1
    # sorting by length keeps the padding small: < 5% of the frames computed
    computed = sum(len(b) * max(len(f) for _, f in b) for b in batches)
    assert computed < 1.05 * sum(lengths)


def test_no_warning_on_features_read_from_feats_scp(demo_root: Path) -> None:
    """kaldiio reads features into read-only arrays, and torch warns when a tensor is made of one (once per process,
    hence a process of its own): extraction and training with cmn=false would print it at every run."""
    code = ("import sys; from stklia.data.kaldi import load_data_dir; "
            "from stklia.data.datasets import TrainingCrops, Utterances; data = load_data_dir(sys.argv[1]); "
            "Utterances(data, data.utts[:1], cmn=False)[0]; TrainingCrops(data, 20, cmn=False)[0, 1]")
    subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", code, str(demo_root / "test")], check=True)


def test_windows_start_every_hop_until_one_reaches_the_end() -> None:
    from stklia.evaluation.embeddings import subsegment_key, window_spans

    assert window_spans(10, 4, 2) == [(0, 4), (2, 6), (4, 8), (6, 10)]
    assert window_spans(11, 4, 2) == [(0, 4), (2, 6), (4, 8), (6, 10), (8, 11)]
    assert window_spans(3, 4, 2) == [(0, 3)]  # shorter than one window: all of it
    assert window_spans(10, 3, 4) == [(0, 3), (4, 7), (8, 10)]  # a hop longer than the window leaves gaps
    assert window_spans(8, 3, 4) == [(0, 3), (4, 7)]
    assert subsegment_key("spk1-utt3", 0.75, 2.25) == "spk1-utt3-00000075-00000225"  # Kaldi's centiseconds
