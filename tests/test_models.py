"""The model family (conf/model/): sizes against the published figures, padded batches, export, bf16, bad configs,
and each family through the commands (DDP training on gloo, test, extract, export).

Parameter counts and FLOPs come from the presets at full size, built on the meta device (no memory,
no computation). Everything else runs each family at a tiny size.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from stklia.core.config import build
from stklia.core.errors import InputError
from stklia.data.kaldi import load_data_dir
from stklia.inference.export import export_onnx, export_torchscript
from stklia.inference.model import StandaloneGenerator
from stklia.models.complexity import count_parameters, forward_flops

from conftest import REPO, TINY_SCHEDULE, demo_data_overrides, run_stklia, torchrun

CONF = REPO / "stklia" / "conf"
FEATURES = 40  # the demo's filterbanks

# preset: (parameters at 80 dims, published parameters in M, published GMACs for 200 frames x 80, tolerance on
# the GMACs). Published: WeSpeaker's examples/voxceleb/v2/README.md (params, thop "FLOPs" = multiply-accumulates);
# ECAPA-TDNN 6.2 M / 14.7 M and CAM++ 7.18 M also in their papers. docs/models.md has the table and the sources.
SIZES = {
    "resnet": (6_634_848, 6.63, 4.55, 0.03),
    "resnet34": (6_634_848, 6.63, 4.55, 0.03),
    "resnet221": (23_792_736, 23.79, 21.29, 0.03),
    "resnet293": (28_626_528, 28.62, 28.10, 0.03),
    "ecapa_tdnn": (6_191_104, 6.19, 1.04, 0.03),
    "ecapa_tdnn_c1024": (14_657_472, 14.65, 2.65, 0.03),
    "campplus": (7_176_224, 7.18, 1.15, 0.03),
    # WeSpeaker's frame layers do not pad: 196, 192, 186, 186 and 186 of the 200 frames, 6% fewer than here
    "xvector": (4_610_524, 4.61, 0.53, 0.07),
    # no published figure (WeSpeaker's resnet.py defines them, its tables do not list them)
    "resnet18": (4_105_952, None, None, None),
    "resnet50": (11_131_872, None, None, None),
    "resnet101": (15_892_960, None, None, None),
    "resnet_small": (635_312, None, None, None),
    # the demo's scale of each family (docs/models.md: 0.3-0.6 M parameters at the demo's 40 dims)
    "resnet34_small": (498_584, None, None, None),
    "ecapa_tdnn_small": (639_568, None, None, None),
    "campplus_small": (619_816, None, None, None),
    "xvector_small": (330_880, None, None, None),
}

# Each family at a size that runs in milliseconds. The ResNet is a Bottleneck one (tests/test_embeddings.py and
# test_model_tools.py check BasicBlock ResNets).
TINY = {
    "resnet": ["model.layers=[1,1,1,1]", "model.num_filters=[4,8,8,8]", "+model.block=bottleneck",
               "model.emb_size=16"],
    "ecapa_tdnn": ["model.channels=16", "model.scale=4", "model.se_channels=8", "model.mfa_channels=24",
                   "model.emb_size=16"],
    "campplus": ["model.front_channels=4", "model.front_blocks=[1]", "model.channels=16", "model.block_layers=[2,1]",
                 "model.dilations=[1,2]", "model.growth_rate=8", "model.bottleneck_scale=2",
                 "model.segment_frames=16", "model.emb_size=16"],
    "xvector": ["model.channels=[16,16,16,16,32]", "model.segment_channels=16", "model.emb_size=16"],
}


def model_config(preset: str, *overrides: str, features: int = FEATURES) -> DictConfig:
    with initialize_config_dir(str(CONF), version_base="1.3"):
        # ~recipe: the preset as it is (a recipe found for a combination may set its pooling or embedding size)
        return compose("train", overrides=[f"model={preset}", f"data.features_per_frame={features}", "~recipe",
                                           *overrides]).model


def tiny_model(preset: str, *overrides: str, seed: int = 0) -> torch.nn.Module:
    """A tiny model in eval mode whose batch norms have non-trivial statistics and biases (with the defaults,
    padded zeros would stay zero through every layer and forgetting to re-zero them would go unnoticed)."""
    torch.manual_seed(seed)
    model = build(model_config(preset, *TINY[preset], *overrides))
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            if m.affine:
                m.bias.data.normal_(0, 0.5)
    return model.eval()


def test_every_preset_has_its_size_pinned() -> None:
    assert sorted(SIZES) == sorted(p.stem for p in (CONF / "model").glob("*.yaml"))


@pytest.mark.parametrize("preset", SIZES)
def test_size_and_flops_match_the_published_figures(preset: str) -> None:
    parameters, published, published_gmacs, tolerance = SIZES[preset]
    with torch.device("meta"):
        model = build(model_config(preset, features=80))
    assert count_parameters(model) == parameters
    if published is not None:
        assert abs(parameters / 1e6 - published) <= 0.01  # the published figure's last digit
        gmacs = forward_flops(model, frames=200) / 2e9
        assert abs(gmacs / published_gmacs - 1) <= tolerance, f"{gmacs:.3f} GMACs, published {published_gmacs}"


@pytest.mark.parametrize("preset", TINY)
def test_padded_batch_equals_one_by_one(preset: str) -> None:
    # odd and even lengths (strides round the valid length up), several CAM++ segments of 16 frames
    lengths = [37, 64, 65, 100, 23, 129]
    rng = np.random.default_rng(1)
    feats = [rng.normal(size=(n, FEATURES)).astype(np.float32) for n in lengths]
    batch = torch.from_numpy(rng.normal(size=(len(lengths), max(lengths), FEATURES)).astype(np.float32) * 10)
    for i, f in enumerate(feats):
        batch[i, : len(f)] = torch.from_numpy(f)  # the rest is garbage that must not leak in
    model = tiny_model(preset)
    with torch.inference_mode():
        batched = model(batch, torch.tensor(lengths)).numpy()
        alone = np.stack([model(torch.from_numpy(f)[None]).numpy()[0] for f in feats])
    np.testing.assert_allclose(batched, alone, rtol=0, atol=1e-5 * np.abs(alone).max())


@pytest.mark.parametrize("pooling", ["statistical", "attentive", "channel_context_attentive", "std_kurtosis"])
@pytest.mark.parametrize("preset", ["ecapa_tdnn", "campplus", "xvector"])
def test_every_pooling_mode_fits_every_model(preset: str, pooling: str) -> None:
    model = tiny_model(preset, f"model.pooling={pooling}")
    lengths = torch.tensor([30, 17])
    with torch.inference_mode():
        batched = model(torch.randn(2, 30, FEATURES), lengths)
    assert batched.shape == (2, model.emb_size) and torch.isfinite(batched).all()


@pytest.mark.parametrize("preset", TINY)
def test_exported_models_match_pytorch(preset: str, tmp_path: Path) -> None:
    import onnxruntime

    embedder = StandaloneGenerator(tiny_model(preset), cmn=True)
    export_torchscript(embedder, tmp_path / "model.pt")
    export_onnx(embedder, tmp_path / "model.onnx", FEATURES)
    scripted = torch.jit.load(str(tmp_path / "model.pt"))
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    rng = np.random.default_rng(0)
    for frames in (8, 37, 200, 513):
        feats = rng.normal(size=(2, frames, FEATURES)).astype(np.float32) * 3 + 5
        with torch.inference_mode():
            expected = embedder(torch.from_numpy(feats)).numpy()
            np.testing.assert_allclose(scripted(torch.from_numpy(feats)).numpy(), expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(session.run(None, {"feats": feats})[0], expected, rtol=1e-4,
                                   atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("preset", TINY)
def test_bf16_autocast_trains_with_finite_values(preset: str) -> None:
    model = tiny_model(preset).train()
    feats = torch.randn(4, 60, FEATURES)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emb = model(feats)
    emb.float().pow(2).mean().backward()
    assert torch.isfinite(emb).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    with torch.inference_mode():
        full = model.eval()(feats)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model(feats).float()
    cosine = torch.nn.functional.cosine_similarity(full, half)
    assert (cosine > 0.98).all(), cosine  # bf16 keeps about 3 significant digits


@pytest.mark.parametrize(("preset", "overrides", "message"), [
    ("ecapa_tdnn", ["model.channels=100"], "model.channels: 100 channels are not divisible by the Res2Net scale 8"),
    ("ecapa_tdnn", ["model.scale=1"], "model.scale: the Res2Net scale must be at least 2"),
    ("ecapa_tdnn", ["model.pooling=attention"], "model.pooling: unknown pooling 'attention', choose one of: min,"),
    ("campplus", ["model.dilations=[1,2]"], "model.block_layers: [12, 24, 16] and dilations [1, 2] must give"),
    ("campplus", ["model.kernel_size=4"], "model.kernel_size: [4]: kernel sizes must be odd"),
    ("campplus", ["model.segment_frames=0"], "model.segment_frames: must be at least 1, not 0"),
    ("xvector", ["model.kernel_sizes=[5,3,3,2,1]"], "model.kernel_sizes: [5, 3, 3, 2, 1]: kernel sizes must be odd"),
    ("xvector", ["model.dilations=[1,2,3]"], "model.channels: [512, 512, 512, 512, 1500], kernel_sizes"),
    ("resnet", ["model.num_filters=[32,64]"], "model.layers: [3, 4, 6, 3] and num_filters [32, 64] must give"),
    ("resnet", ["model.layers=[3,0,6,3]"], "model.layers: [3, 0, 6, 3]: every stage needs at least one block"),
    ("resnet", ["+model.block=wide"], "model.block: unknown block 'wide', choose one of: basic, bottleneck"),
    ("resnet34", ["model.pooling=avg"], "model.pooling: unknown pooling 'avg'"),
])
def test_a_config_that_cannot_work_names_its_key(preset: str, overrides: list[str], message: str) -> None:
    with torch.device("meta"), pytest.raises(InputError) as error:
        build(model_config(preset, *overrides))
    assert str(error.value).startswith(message)


@pytest.mark.parametrize("preset", ["ecapa_tdnn", "campplus", "xvector"])  # ResNets: test_cli.py, test_distributed.py
def test_each_family_trains_with_ddp_then_tests_extracts_and_exports(preset: str, demo_root: Path,
                                                                     tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    proc = torchrun(*demo_data_overrides(demo_root), *TINY_SCHEDULE, f"model={preset}", *TINY[preset],
                    f"model_dir={model_dir}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "distributed run: 2 processes (gloo)" in (model_dir / "train.log").read_text()
    trials = json.loads((model_dir / "results" / "step_00000006.json").read_text())["results"][0]["num_trials"]
    assert trials > 0  # the run tested its final model
    proc = run_stklia("test", f"model_dir={model_dir}", "checkpoint=3", "progress=false", cwd=tmp_path)
    assert "min_dcf@0.01" in proc.stdout
    run_stklia("extract", f"model_dir={model_dir}", "data=test", "format=pt", f"out_dir={tmp_path / 'emb'}",
               "progress=false", cwd=tmp_path)
    run_stklia("export", f"model_dir={model_dir}", "format=torchscript", f"out={tmp_path / 'generator.pt'}",
               cwd=tmp_path)
    extracted = torch.load(tmp_path / "emb" / "embeddings.pt", weights_only=True)
    exported = torch.jit.load(str(tmp_path / "generator.pt"))
    data = load_data_dir(demo_root / "test")
    for utt in data.utts[:3]:  # the exported generator embeds as extract did (a padded batch, masked)
        got = exported(torch.tensor(data.load(utt))[None])[0].detach()
        torch.testing.assert_close(got, extracted[utt], rtol=1e-4, atol=1e-4 * extracted[utt].abs().max().item())


def test_a_model_that_cannot_work_stops_with_one_line(demo_root: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    proc = run_stklia("train", *demo_data_overrides(demo_root), *TINY_SCHEDULE, "model=ecapa_tdnn",
                      "model.channels=100", f"model_dir={model_dir}", cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == ("stklia: error: model.channels: 100 channels are not divisible "
                                                    "by the Res2Net scale 8")
    assert not model_dir.exists() or not {p.name for p in model_dir.iterdir()} & {"config.yaml", "checkpoints"}
