"""Imported models against the peers' own code (tests/peers.py: installed from PyPI, never copied): each
architecture built there with random weights and random batch norm statistics, saved in the peer's own file
layout, imported, and both whole pipelines run on the same audio files (0.5 to 20 s): file -> the peer's front end
-> the peer's model, and file -> stklia.load(model_dir).embed_batch (one padded batch of all the files). The
embeddings must agree to 1e-4 of their norm (docs/pretrained.md#parity); a failure names the first layer that
differs."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile
import torch
import yaml

import stklia
from stklia.core.config import build
from stklia.data.features import subtract_mean
from stklia.interop.importing import read_published, write_model_dir

from peers import first_differing_layer, randomised, require_peer, speech_like, wespeaker_module

SECONDS = (0.5, 3.0, 20.0)
TOLERANCE = 1e-4  # of the embedding's norm


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("audio")
    paths = [folder / f"utt{i}.wav" for i in range(len(SECONDS))]
    for i, (path, seconds) in enumerate(zip(paths, SECONDS)):
        soundfile.write(path, speech_like(seconds, seed=i), 16000, subtype="PCM_16")
    return paths


def to_peer_image(x: torch.Tensor) -> torch.Tensor:
    """stklia's (batch, channels, time, frequency) activations in WeSpeaker's (..., frequency, time) layout."""
    return x.transpose(-1, -2)


@dataclass
class Peer:
    """A peer's model, how it embeds a file (its whole pipeline) and computes its features, and the pairs of
    (peer layer, stklia layer, stklia -> peer layout) whose outputs must agree."""

    model: torch.nn.Module
    embed: Callable[[Path], np.ndarray]
    features: Callable[[Path], torch.Tensor]
    pairs: list


def wespeaker_features(path: Path) -> torch.Tensor:
    """WeSpeaker's front end as wespeaker/cli/speaker.py calls it: torchaudio.load(normalize=False) samples
    (the int16 values), kaldi.fbank with a Hamming window, the mean over frames subtracted."""
    import torchaudio.compliance.kaldi as kaldi

    samples, rate = soundfile.read(path, dtype="int16")
    feats = kaldi.fbank(torch.from_numpy(samples.astype(np.float32))[None], num_mel_bins=80, frame_length=25,
                        frame_shift=10, sample_frequency=rate, window_type="hamming")
    return feats - feats.mean(dim=0)


def wespeaker_peer(model: torch.nn.Module, pairs: list) -> Peer:
    def embed(path: Path) -> np.ndarray:
        with torch.no_grad():
            out = model(wespeaker_features(path)[None])
        return (out[-1] if isinstance(out, tuple) else out)[0].numpy()  # as Speaker.extract_embedding_from_pcm

    return Peer(model, embed, wespeaker_features, pairs)


def resnet_pairs(depths: list[int]) -> list:
    stages = [(f"layer{i + 1}.{n - 1}", f"stages.{i}.{n - 1}", to_peer_image) for i, n in enumerate(depths)]
    return [*stages, ("pool", "pooling", None), ("seg_1", "fc", None)]


CAMPPLUS_PAIRS = [("head", "front", None), ("xvector.tdnn", "tdnn", None),
                  *((f"xvector.transit{b}", f"blocks.{b - 1}", None) for b in (1, 2, 3)),
                  ("xvector.out_nonlinear", "out", None), ("xvector.stats", "pooling", None),
                  ("xvector.dense", "bn", None)]

# name, WeSpeaker's module and constructor call (small widths, the published depths), model_args, durations
# (the 20 s recording where it costs seconds: CAM++'s 2-D front end has a fixed width, the deep ResNets' depth)
WESPEAKER = {
    "ResNet18": ("resnet", lambda m: m.ResNet(m.BasicBlock, [2, 2, 2, 2], m_channels=8, feat_dim=80, embed_dim=32),
                 {}, SECONDS, resnet_pairs([2, 2, 2, 2])),
    "ResNet34": ("resnet", lambda m: m.ResNet(m.BasicBlock, [3, 4, 6, 3], m_channels=8, feat_dim=80, embed_dim=32),
                 {}, SECONDS, resnet_pairs([3, 4, 6, 3])),
    "ResNet50": ("resnet", lambda m: m.ResNet(m.Bottleneck, [3, 4, 6, 3], m_channels=4, feat_dim=80, embed_dim=32),
                 {}, SECONDS[:2], resnet_pairs([3, 4, 6, 3])),
    "ResNet101": ("resnet", lambda m: m.ResNet(m.Bottleneck, [3, 4, 23, 3], m_channels=4, feat_dim=80,
                                               embed_dim=32), {}, SECONDS[:2], resnet_pairs([3, 4, 23, 3])),
    "ResNet221": ("resnet", lambda m: m.ResNet(m.Bottleneck, [6, 16, 48, 3], m_channels=2, feat_dim=80,
                                               embed_dim=32), {}, SECONDS[:1], resnet_pairs([6, 16, 48, 3])),
    "ResNet293": ("resnet", lambda m: m.ResNet(m.Bottleneck, [10, 20, 64, 3], m_channels=2, feat_dim=80,
                                               embed_dim=32), {}, SECONDS[:1], resnet_pairs([10, 20, 64, 3])),
    "ECAPA_TDNN_GLOB_c512": ("ecapa_tdnn", lambda m: m.ECAPA_TDNN(channels=64, feat_dim=80, embed_dim=32,
                                                                  global_context_att=True), {}, SECONDS, None),
    "ECAPA_TDNN_c1024": ("ecapa_tdnn", lambda m: m.ECAPA_TDNN(channels=128, feat_dim=80, embed_dim=32, emb_bn=True),
                         {"emb_bn": True}, SECONDS, None),
    "CAMPPlus": ("campplus", lambda m: m.CAMPPlus(feat_dim=80, embed_dim=64, growth_rate=8, init_channels=32),
                 {"embed_dim": 64, "growth_rate": 8, "init_channels": 32}, SECONDS[:2], CAMPPLUS_PAIRS),
    "XVEC": ("tdnn", lambda m: m.XVEC(feat_dim=80, hid_dim=64, stats_dim=128, embed_dim=32),
             {"hid_dim": 64, "stats_dim": 128}, SECONDS, [*((f"frame_{i}", f"frame_layers.{i - 1}", None)
                                                            for i in range(1, 6)),
                                                          ("pool", "pooling", None), ("seg_1", "segment6", None),
                                                          ("seg_2", "segment7", None)]),
}
ECAPA_PAIRS = [("layer1", "layer1", None), *((f"layer{i}", f"blocks.{i - 2}", None) for i in (2, 3, 4)),
               ("conv", "mfa", None), ("pool", "pooling", None), ("bn", "pooling_bn", None),
               ("linear", "fc", None)]


def wespeaker_files(folder: Path, name: str, model: torch.nn.Module, args: dict) -> Path:
    """WeSpeaker's published layout: config.yaml (model, model_args, dataset_args) and avg_model.pt, with the
    training head (projection) that an exported checkpoint holds and the import leaves out."""
    folder.mkdir()
    config = {"model": name, "model_args": {"feat_dim": 80, "embed_dim": 32, **args},
              "dataset_args": {"resample_rate": 16000, "fbank_args": {"num_mel_bins": 80, "frame_shift": 10,
                                                                      "frame_length": 25, "dither": 1.0}},
              "projection_args": {"project_type": "arc_margin"}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    state = {**model.state_dict(), "projection.weight": torch.randn(7, 32)}
    torch.save(state, folder / "avg_model.pt")
    return folder


def assert_parity(model_dir: Path, peer: Peer, paths: list[Path]) -> None:
    model = stklia.load(model_dir)
    ours = model.embed_batch(paths)  # one padded batch: each file must embed as alone
    for path, mine in zip(paths, ours):
        theirs = peer.embed(path)
        difference = np.abs(mine - theirs).max() / np.linalg.norm(theirs)
        if difference > TOLERANCE:
            feats = peer.features(path)
            ours_feats = model.prepared(model.features_of(path), str(path))
            where = first_differing_layer(peer.model, model._model, peer.pairs, feats[None], ours_feats[None],
                                          lambda feats=feats: peer.model(feats[None]))
            pytest.fail(f"{path} ({len(soundfile.read(path)[0]) / 16000} s): embeddings differ by {difference:.2e} "
                        f"of their norm; first differing: {where}")


@pytest.mark.parametrize("name", WESPEAKER)
def test_wespeaker_models_embed_as_wespeaker_does(name: str, recordings: list[Path], tmp_path: Path) -> None:
    module_name, make, args, seconds, pairs = WESPEAKER[name]
    module = wespeaker_module(module_name)
    torch.manual_seed(0)
    model = randomised(make(module))
    published = wespeaker_files(tmp_path / "published", name, model, args)
    model_dir = write_model_dir(read_published("wespeaker", published), tmp_path / "model")
    assert_parity(model_dir, wespeaker_peer(model, pairs or ECAPA_PAIRS), recordings[: len(seconds)])


def test_wespeaker_hub_copy_imports(recordings: list[Path], tmp_path: Path) -> None:
    """The hub copies' layout: pytorch_model.bin holding the model under a `resnet.` prefix, and a config.yaml
    naming the model's class and its fbank settings (pyannote's form)."""
    module = wespeaker_module("resnet")
    torch.manual_seed(1)
    model = randomised(module.ResNet(module.BasicBlock, [3, 4, 6, 3], m_channels=8, feat_dim=80, embed_dim=256))
    published = tmp_path / "hub"
    published.mkdir()
    torch.save({f"resnet.{key}": value for key, value in model.state_dict().items()}, published / "pytorch_model.bin")
    (published / "config.yaml").write_text(yaml.safe_dump({"model": {
        "_target_": "pyannote.audio.models.embedding.WeSpeakerResNet34", "sample_rate": 16000, "num_channels": 1,
        "num_mel_bins": 80, "frame_length": 25, "frame_shift": 10, "dither": 0.0, "window_type": "hamming",
        "use_energy": False}}))
    model_dir = write_model_dir(read_published("wespeaker", published), tmp_path / "model")
    assert_parity(model_dir, wespeaker_peer(model, resnet_pairs([3, 4, 6, 3])), recordings[:2])


SPEECHBRAIN_HPARAMS = """\
# spkrec-ecapa-voxceleb's hyperparams.yaml, its sizes small (channels, attention, embedding)
pretrained_path: {folder}
n_mels: 80
compute_features: !new:speechbrain.lobes.features.Fbank
    n_mels: !ref <n_mels>
mean_var_norm: !new:speechbrain.processing.features.InputNormalization
    norm_type: sentence
    std_norm: False
embedding_model: !new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN
    input_size: !ref <n_mels>
    channels: [64, 64, 64, 64, 192]
    kernel_sizes: [5, 3, 3, 3, 1]
    dilations: [1, 2, 3, 4, 1]
    attention_channels: 32
    lin_neurons: 24
mean_var_norm_emb: !new:speechbrain.processing.features.InputNormalization
    norm_type: global
    std_norm: False
modules:
    compute_features: !ref <compute_features>
    mean_var_norm: !ref <mean_var_norm>
    embedding_model: !ref <embedding_model>
    mean_var_norm_emb: !ref <mean_var_norm_emb>
pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        embedding_model: !ref <embedding_model>
        mean_var_norm_emb: !ref <mean_var_norm_emb>
    paths:
        embedding_model: !ref <pretrained_path>/embedding_model.ckpt
        mean_var_norm_emb: !ref <pretrained_path>/mean_var_norm_emb.ckpt
"""
SPEECHBRAIN_PAIRS = [("blocks.0", "layer1", None), *((f"blocks.{i}", f"blocks.{i - 1}", None) for i in (1, 2, 3)),
                     ("mfa", "mfa_bn", None), ("asp", "pooling", None), ("asp_bn", "pooling_bn", None),
                     ("fc", "fc", None)]


@pytest.mark.parametrize("embedding_mean", [False, True])
def test_speechbrain_ecapa_embeds_as_speechbrain_does(embedding_mean: bool, recordings: list[Path],
                                                       tmp_path: Path) -> None:
    """SpeechBrain's own EncoderClassifier, built from the hyperparams.yaml, against the imported model; with
    embedding_mean, its encode_batch(normalize=True) (the embedding mean of mean_var_norm_emb.ckpt subtracted)."""
    require_peer("speechbrain")
    from speechbrain.inference.speaker import EncoderClassifier
    from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN

    published = tmp_path / "spkrec"
    published.mkdir()
    torch.manual_seed(2)
    network = randomised(ECAPA_TDNN(80, channels=[64, 64, 64, 64, 192], attention_channels=32, lin_neurons=24))
    torch.save(network.state_dict(), published / "embedding_model.ckpt")
    torch.save({"count": 5, "glob_mean": torch.randn(24), "glob_std": torch.ones(24)},
               published / "mean_var_norm_emb.ckpt")
    (published / "hyperparams.yaml").write_text(SPEECHBRAIN_HPARAMS.format(folder=published))
    classifier = EncoderClassifier.from_hparams(source=str(published), savedir=str(tmp_path / "savedir"))
    mods = classifier.mods

    def waveform(path: Path) -> torch.Tensor:
        return torch.from_numpy(soundfile.read(path, dtype="float32")[0])[None]  # torchaudio.load's [-1, 1]

    def embed(path: Path) -> np.ndarray:
        return classifier.encode_batch(waveform(path), normalize=embedding_mean)[0, 0].numpy()

    def features(path: Path) -> torch.Tensor:
        with torch.no_grad():
            return mods.mean_var_norm(mods.compute_features(waveform(path)), torch.ones(1))[0]

    model_dir = write_model_dir(read_published("speechbrain", published, embedding_mean), tmp_path / "model")
    assert_parity(model_dir, Peer(mods.embedding_model, embed, features, SPEECHBRAIN_PAIRS), recordings)


def test_3dspeaker_campplus_embeds_as_modelscope_does(recordings: list[Path], tmp_path: Path) -> None:
    """ModelScope's SpeakerVerificationCAMPPlus (3D-Speaker's CAM++, full size: the class takes no widths) with
    its configuration.json and campplus_voxceleb.bin, through its own forward (Kaldi fbank + mean subtraction)."""
    require_peer("modelscope")
    from modelscope.models.audio.sv.DTDNN import CAMPPlus, SpeakerVerificationCAMPPlus

    published = tmp_path / "speech_campplus_sv_en_voxceleb_16k"
    published.mkdir()
    torch.manual_seed(3)
    torch.save(randomised(CAMPPlus(80, 512)).state_dict(), published / "campplus_voxceleb.bin")
    config = {"framework": "pytorch", "task": "speaker-verification",
              "model": {"type": "cam++-sv", "model_config": {"sample_rate": 16000, "fbank_dim": 80, "emb_size": 512},
                        "pretrained_model": "campplus_voxceleb.bin"}}
    (published / "configuration.json").write_text(json.dumps(config))
    verifier = SpeakerVerificationCAMPPlus(str(published), config["model"]["model_config"],
                                           pretrained_model="campplus_voxceleb.bin", device="cpu")

    def waveform(path: Path) -> torch.Tensor:
        return torch.from_numpy(soundfile.read(path, dtype="float32")[0])[None]  # its pipeline's sf.read

    def features(path: Path) -> torch.Tensor:
        return verifier._SpeakerVerificationCAMPPlus__extract_feature(waveform(path))[0]

    model_dir = write_model_dir(read_published("3dspeaker", published), tmp_path / "model")
    peer = Peer(verifier.embedding_model, lambda path: verifier(waveform(path))[0].numpy(), features, CAMPPLUS_PAIRS)
    assert_parity(model_dir, peer, recordings[:2])  # full size (the class takes no widths): 20 s costs a minute


def test_a_parity_failure_names_the_first_differing_layer(recordings: list[Path], tmp_path: Path) -> None:
    """One weight of the third stage changed after the import: the parity check fails there, not before."""
    module = wespeaker_module("resnet")
    torch.manual_seed(0)
    model = randomised(module.ResNet(module.BasicBlock, [2, 2, 2, 2], m_channels=8, feat_dim=80, embed_dim=32))
    published = wespeaker_files(tmp_path / "published", "ResNet18", model, {})
    imported = read_published("wespeaker", published)
    imported.generator["stages.2.1.conv2.weight"] = imported.generator["stages.2.1.conv2.weight"] * 1.5
    model_dir = write_model_dir(imported, tmp_path / "model")
    with pytest.raises(pytest.fail.Exception, match=r"first differing: peer layer 'layer3.1' vs stklia layer "
                                                    r"'stages.2.1'"):
        assert_parity(model_dir, wespeaker_peer(model, resnet_pairs([2, 2, 2, 2])), recordings[1:2])


@pytest.mark.parametrize("preset", ["wespeaker", "3dspeaker", "speechbrain"])
def test_front_end_presets_compute_the_peers_features(preset: str, recordings: list[Path]) -> None:
    """Each front end against the peer's own feature code on the same file: torchaudio's kaldi.fbank as WeSpeaker
    calls it, ModelScope's CAM++ feature extraction, SpeechBrain's Fbank and sentence normalisation."""
    require_peer("torchaudio")
    from stklia.interop.presets import features_config

    path = recordings[1]
    int16, _ = soundfile.read(path, dtype="int16")
    ours = subtract_mean(build(features_config(preset))(int16.astype(np.float32)))
    unit = torch.from_numpy(soundfile.read(path, dtype="float32")[0])[None]
    if preset == "wespeaker":
        theirs = wespeaker_features(path)
    elif preset == "3dspeaker":
        require_peer("modelscope")
        from modelscope.models.audio.sv.DTDNN import SpeakerVerificationCAMPPlus

        # its own feature extraction (it reads only self.feature_dim): Kaldi fbank, then the mean subtracted
        extract = SpeakerVerificationCAMPPlus._SpeakerVerificationCAMPPlus__extract_feature
        theirs = extract(SimpleNamespace(feature_dim=80), unit)[0]
    else:
        require_peer("speechbrain")
        from speechbrain.lobes.features import Fbank
        from speechbrain.processing.features import InputNormalization

        with torch.no_grad():
            theirs = InputNormalization(norm_type="sentence", std_norm=False)(Fbank(n_mels=80)(unit),
                                                                              torch.ones(1))[0]
    assert ours.shape == tuple(theirs.shape)
    assert np.abs(ours - theirs.numpy()).max() <= 2e-3  # float32 log energies of two implementations
