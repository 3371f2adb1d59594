"""Tools on a trained model directory: checkpoint averaging, export, and the Python API."""

from __future__ import annotations

import json
from pathlib import Path

import kaldiio
import numpy as np
import pytest
import torch

from stklia.core.errors import InputError
from stklia.modeldir.checkpoints import load_checkpoint
from stklia.models.pooling import POOLINGS
from stklia.models.resnet import ResNet

from conftest import run_stklia, without_module


def assert_close(got: np.ndarray, expected: np.ndarray, tol: float) -> None:
    """Equal to `tol` relative to the embedding's scale (the BatchNorm statistics of a 6-step model make
    embedding values large)."""
    assert np.abs(got - expected).max() <= tol * np.abs(expected).max()


def test_average_is_the_elementwise_mean_and_usable_by_test_and_extract(trained: Path, tmp_path: Path) -> None:
    proc = run_stklia("average", f"model_dir={trained}", "last=2", cwd=tmp_path)
    path = trained / "checkpoints" / "avg_last2.pt"
    assert str(path) in proc.stdout
    a, b = (load_checkpoint(trained / "checkpoints" / f"step_0000000{s}.pt") for s in (3, 6))
    avg = load_checkpoint(path)
    assert avg["averaged_steps"] == [3, 6]
    for part in ("generator", "head"):
        assert set(avg[part]) == set(a[part])
        for key, value in avg[part].items():
            if value.is_floating_point():
                expected = (a[part][key].numpy().astype(np.float64) + b[part][key].numpy().astype(np.float64)) / 2
                np.testing.assert_allclose(value.numpy(), expected, rtol=1e-6, atol=1e-7)
            else:
                assert torch.equal(value, b[part][key])
    assert not torch.equal(a["generator"]["fc.weight"], b["generator"]["fc.weight"])  # a real average

    run_stklia("average", f"model_dir={trained}", "checkpoints=[3,last]", cwd=tmp_path)
    same = load_checkpoint(trained / "checkpoints" / "avg_3_6.pt")
    assert all(torch.equal(same["generator"][k], v) for k, v in avg["generator"].items())

    test = run_stklia("test", f"model_dir={trained}", "checkpoint=avg_last2", "progress=false", cwd=tmp_path)
    assert "avg_last2" in test.stdout
    saved = json.loads((trained / "results" / "avg_last2.json").read_text())
    assert saved["step"] == "avg_last2" and 0 <= saved["results"][0]["eer"] <= 100
    out = tmp_path / "emb"
    run_stklia("extract", f"model_dir={trained}", "checkpoint=avg_last2", "format=txt", f"out_dir={out}",
               "progress=false", "num_workers=0", cwd=tmp_path)
    assert len(dict(kaldiio.load_ark(str(out / "embeddings.txt")))) > 0


@pytest.mark.parametrize("args, message", [
    (["last=5"], "last=5 but 2 checkpoints are available"),
    (["checkpoints=[3,9]"], "no checkpoint for step 9"),
    ([], "give either last=N or checkpoints"),
    (["last=1", "name=best"], "'best' is reserved"),
])
def test_average_rejects_bad_requests(trained: Path, tmp_path: Path, args: list[str], message: str) -> None:
    before = sorted(p.name for p in (trained / "checkpoints").iterdir())
    proc = run_stklia("average", f"model_dir={trained}", *args, cwd=tmp_path, check=False)
    assert proc.returncode == 1 and proc.stderr.startswith("stklia: error: ") and message in proc.stderr
    assert sorted(p.name for p in (trained / "checkpoints").iterdir()) == before


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_exported_generator_matches_pytorch_for_any_length(trained: Path, tmp_path: Path, fmt: str) -> None:
    import stklia

    out = tmp_path / f"generator.{fmt}"
    proc = run_stklia("export", f"model_dir={trained}", f"format={fmt}", f"out={out}", cwd=tmp_path)
    # quiet: stklia's own log lines and the file written, no warning (training mode) or exporter logging
    assert [line for line in (proc.stdout + proc.stderr).splitlines()
            if "[stklia." not in line and line != f"wrote {out}"] == []
    model = stklia.load(trained)
    rng = np.random.default_rng(0)
    for frames in (37, 200, 513):
        feats = rng.normal(size=(frames, 40)).astype(np.float32) * 3 + 5
        expected = model.embed(feats, features=True)
        if fmt == "torchscript":
            got = torch.jit.load(str(out))(torch.from_numpy(feats)[None]).detach().numpy()[0]
        else:
            import onnxruntime

            session = onnxruntime.InferenceSession(str(out))
            got = session.run(None, {"feats": feats[None]})[0][0]
        assert_close(got, expected, 1e-4)


def test_onnx_export_without_the_export_extra_names_it(trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "generator.onnx"
    proc = run_stklia("export", f"model_dir={trained}", "format=onnx", f"out={out}", cwd=tmp_path, check=False,
                      env=without_module("onnxscript", tmp_path / "site"))
    assert proc.returncode == 1 and not out.exists()
    assert proc.stderr.strip() == ("stklia: error: format=onnx: needs onnxscript, which cannot be imported (No module "
                                   "named 'onnxscript'): pip install \"stklia[export]\"")


def test_python_api_embeds_audio_and_features_and_scores(trained: Path, demo_root: Path) -> None:
    import stklia
    from stklia.data.kaldi import load_data_dir
    from stklia.evaluation.embeddings import Extraction, embed_utterances

    model = stklia.load(trained, checkpoint=6)
    data = load_data_dir(demo_root / "test")
    wavs = dict(line.split() for line in (demo_root / "test" / "wav.scp").read_text().splitlines())
    a, b = data.utts[:2]
    reference = embed_utterances(model.network.generator, data, [a, b],
                                 Extraction(torch.device("cpu"), True, progress=False))
    assert_close(model.embed(data.load(a), features=True), reference[0], 1e-5)
    assert_close(model.embed(wavs[a]), reference[0], 1e-4)
    cosine = reference[0].astype(np.float64) @ reference[1] / np.linalg.norm(reference, axis=1).prod()
    assert model.score(wavs[a], wavs[b]) == pytest.approx(cosine, abs=1e-4)
    with pytest.raises(InputError, match=r"expected \(frames, 40\)"):
        model.embed(np.zeros((50, 80), dtype=np.float32), features=True)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_every_pooling_mode_can_be_scripted(pooling: str) -> None:
    """TorchScript export must not depend on the pooling mode."""
    torch.manual_seed(0)
    model = ResNet(40, layers=[1, 1, 1, 1], num_filters=[4, 8, 8, 8], emb_size=16, pooling=pooling).eval()
    feats = torch.randn(2, 37, 40)
    torch.testing.assert_close(torch.jit.script(model)(feats), model(feats))
