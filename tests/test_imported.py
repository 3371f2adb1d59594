"""An imported model directory is a first-class model dir: `stklia.import_model` on WeSpeaker's published layout,
then test (cosine, AS-norm, PLDA), extract (whole utterances and windows), export (both ONNX conventions, the
front end in the graph), the Python API (paths, waveforms, features; batches; windows; bad inputs), and fine-tuning
(`init_from=` then `+stage=lmft`), on the demo corpus's audio; and bad published files stop in one line, nothing
written."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import kaldiio
import numpy as np
import pytest
import soundfile
import torch
import yaml
from omegaconf import OmegaConf
from scipy.signal import resample_poly

import stklia
from stklia.core.errors import InputError
from stklia.interop.files import sha256

from conftest import TINY_SCHEDULE, demo_data_overrides, results_written, run_stklia
from peers import randomised, wespeaker_module

EMB = 16  # below the 24 utterances of the small demo's training speakers, for the LDA of PLDA


def published_resnet34(folder: Path) -> Path:
    """WeSpeaker's layout (config.yaml + avg_model.pt) of a small ResNet34 of WeSpeaker's own code."""
    module = wespeaker_module("resnet")
    torch.manual_seed(0)
    model = randomised(module.ResNet(module.BasicBlock, [3, 4, 6, 3], m_channels=4, feat_dim=80, embed_dim=EMB))
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({
        "model": "ResNet34", "model_args": {"feat_dim": 80, "embed_dim": EMB, "pooling_func": "TSTP",
                                            "two_emb_layer": False},
        "dataset_args": {"resample_rate": 16000, "fbank_args": {"num_mel_bins": 80, "frame_length": 25,
                                                                "frame_shift": 10, "dither": 1.0}}}))
    torch.save(model.state_dict(), folder / "avg_model.pt")
    return folder


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return published_resnet34(tmp_path_factory.mktemp("published") / "voxceleb_resnet34")


@pytest.fixture(scope="module")
def imported(published: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model_dir = tmp_path_factory.mktemp("imported") / "resnet34"
    proc = run_stklia("import_model", "source=wespeaker", f"path={published}", f"model_dir={model_dir}",
                      cwd=model_dir.parent)
    assert proc.stdout.strip() == f"imported WeSpeaker ResNet34 (resnet34, features=wespeaker) into {model_dir}"
    return model_dir


@pytest.fixture(scope="module")
def audio(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The demo's test and training data as audio-only Kaldi dirs (the imported model has its own 80-bin
    front end: the demo's 40-bin feats.scp do not fit it)."""
    out = tmp_path_factory.mktemp("audio")
    dirs = {}
    for name, source in (("test", "test"), ("train", "train_wav")):
        dirs[name] = out / name
        dirs[name].mkdir()
        for table in ("wav.scp", "utt2spk", "spk2utt", "trials"):
            if (demo_root / source / table).exists():
                shutil.copy(demo_root / source / table, dirs[name] / table)
    return dirs


def test_the_import_writes_a_model_dir_with_its_sources(imported: Path, published: Path) -> None:
    config = OmegaConf.load(imported / "config.yaml")
    assert config.model._target_ == "stklia.models.resnet.resnet34" and config.model.emb_size == EMB
    assert config.data.features.window_type == "hamming" and config.data.cmn
    files = {Path(f.path).name: f.sha256 for f in config.imported.files}
    assert files == {name: sha256(published / name) for name in ("config.yaml", "avg_model.pt")}
    state = torch.load(imported / "checkpoints" / "step_00000000.pt", weights_only=True)
    assert state["step"] == 0 and "head" not in state and len(state["generator"]) > 100


def test_an_imported_model_is_tested_with_cosine_asnorm_and_plda(imported: Path, audio: dict[str, Path]) -> None:
    trials = f"test_trials=[{audio['test'] / 'trials'}]"
    proc = run_stklia("test", f"model_dir={imported}", f"test={audio['test']}", trials, f"cohort={audio['train']}",
                      "asnorm_top_n=5", "progress=false", cwd=imported)
    summary, _ = results_written(proc)
    results = json.loads(summary.read_text())["results"][0]
    assert 0 <= results["eer"] <= 100 and 0 <= results["asnorm_eer"] <= 100
    proc = run_stklia("test", f"model_dir={imported}", f"test={audio['test']}", trials, "scoring.backend=plda",
                      f"scoring.data={audio['train']}", "scoring.lda_dim=4", "progress=false", cwd=imported)
    summary, _ = results_written(proc)
    assert "plda" in summary.name and 0 <= json.loads(summary.read_text())["results"][0]["eer"] <= 100


def test_extract_writes_whole_utterances_and_kaldi_named_windows(imported: Path, audio: dict[str, Path],
                                                                 tmp_path: Path) -> None:
    model = stklia.load(imported)
    run_stklia("extract", f"model_dir={imported}", f"data={audio['test']}", "format=ark", f"out_dir={tmp_path / 'u'}",
               "progress=false", cwd=tmp_path)
    whole = kaldiio.load_scp(str(tmp_path / "u" / "embeddings.scp"))
    wavs = dict(line.split() for line in (audio["test"] / "wav.scp").read_text().splitlines())
    utt = sorted(wavs)[0]
    np.testing.assert_allclose(whole[utt], model.embed(wavs[utt]), rtol=0, atol=1e-5)

    run_stklia("extract", f"model_dir={imported}", f"data={audio['test']}", "format=txt", "window=0.5", "hop=0.25",
               f"out_dir={tmp_path / 'w'}", "progress=false", cwd=tmp_path)
    windows = dict(kaldiio.load_ark(str(tmp_path / "w" / "embeddings.txt")))
    subsegments = [line.split() for line in (tmp_path / "w" / "subsegments").read_text().splitlines()]
    assert [key for key, *_ in subsegments] == list(windows)
    embs, times = model.embed_windows(wavs[utt], window=0.5, hop=0.25)
    keys = [f"{utt}-{round(100 * start):08d}-{round(100 * end):08d}" for start, end in times]
    assert len(keys) >= 3 and times[0, 0] == 0 and np.allclose(np.diff(times[:, 0]), 0.25)
    for key, emb, (start, end) in zip(keys, embs, times):
        np.testing.assert_allclose(windows[key], emb, rtol=0, atol=1e-5)
        assert [utt, f"{start:.3f}", f"{end:.3f}"] == next(s[1:] for s in subsegments if s[0] == key)
    assert all(re.fullmatch(r".+-\d{8}-\d{8}", key) for key in windows)


def test_both_onnx_conventions_match_pytorch_on_several_lengths_in_one_session(imported: Path,
                                                                                tmp_path: Path) -> None:
    import onnx
    import onnxruntime

    model = stklia.load(imported)
    rng = np.random.default_rng(0)
    waveforms = [rng.normal(scale=0.1, size=int(16000 * s)).astype(np.float32) for s in (0.3, 1.0, 4.7)]
    # (stklia's own convention: tests/test_model_tools.py)
    for options, input_name in ((["convention=wespeaker"], "feats"),
                                (["convention=wespeaker", "frontend=true"], "wav")):
        out = tmp_path / f"{len(options)}.onnx"
        run_stklia("export", f"model_dir={imported}", "format=onnx", *options, f"out={out}", cwd=tmp_path)
        session = onnxruntime.InferenceSession(str(out))
        outputs = [o.name for o in session.get_outputs()]
        assert [i.name for i in session.get_inputs()] == [input_name]
        assert outputs == ["embs"]
        for batch, x in enumerate(waveforms, start=1):  # batches of 1 to 3 (the graph was traced with 2)
            expected = model.embed(x, sample_rate=16000)
            one = x if input_name == "wav" else model.features(x * 32768)
            for got in session.run(None, {input_name: np.stack([one] * batch)})[0]:
                np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * np.linalg.norm(expected))
        metadata = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
        assert metadata["framework"] == "wespeaker" and metadata["output_dim"] == str(EMB)
        assert metadata["sample_rate"] == "16000" and metadata["normalize_samples"] == "0"


def test_embed_takes_paths_waveforms_and_features_and_batches_equal_one_by_one(imported: Path,
                                                                             audio: dict[str, Path]) -> None:
    model = stklia.load(imported, device="auto")
    paths = sorted(line.split()[1] for line in (audio["test"] / "wav.scp").read_text().splitlines())[:6]
    one_by_one = np.stack([model.embed(p) for p in paths])
    np.testing.assert_allclose(model.embed_batch(paths), one_by_one, rtol=0, atol=1e-5)
    int16, rate = soundfile.read(paths[0], dtype="int16")
    np.testing.assert_array_equal(model.embed(int16, sample_rate=rate), one_by_one[0])
    np.testing.assert_allclose(model.embed(torch.from_numpy(int16 / 32768), sample_rate=rate), one_by_one[0],
                               rtol=0, atol=1e-5)
    np.testing.assert_allclose(model.embed(model.features_of(paths[0]), features=True), one_by_one[0], atol=1e-5)
    at_8k = resample_poly(int16 / 32768, 1, 2)  # 8 kHz audio is brought to the model's 16 kHz
    np.testing.assert_allclose(model.embed(at_8k, sample_rate=8000),
                               model.embed(resample_poly(at_8k, 2, 1), sample_rate=16000), rtol=0, atol=1e-5)
    assert model.score(paths[0], paths[0]) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(("given", "options", "message"), [
    (np.zeros(0, np.float32), {"sample_rate": 16000}, "input: is empty"),
    (np.zeros(16000, np.float32), {"sample_rate": 16000}, "input: is silent"),
    (np.full(16000, 0.1, np.float32) * np.r_[np.ones(8000), np.nan * np.ones(8000)], {"sample_rate": 16000},
     r"input: holds non-finite samples \(NaN or Inf\), first at sample 8000"),
    (np.full(300, 0.1, np.float32), {"sample_rate": 16000}, "input: is too short: 0 frames"),
    (np.ones((50, 80), np.float32), {"sample_rate": 16000}, "a waveform is 1-D, this has shape"),
    (np.ones(16000, np.float32) * 0.1, {}, "a waveform needs its sample_rate="),
    (np.ones((50, 40), np.float32), {"features": True}, r"features of shape \(50, 40\), expected \(frames, 80\)"),
])
def test_inputs_that_cannot_be_embedded_are_one_line(imported: Path, given: np.ndarray, options: dict,
                                                     message: str) -> None:
    model = stklia.load(imported)
    with pytest.raises(InputError, match=message) as raised:
        model.embed(given, **options)
    assert "\n" not in str(raised.value)


def test_an_imported_model_fine_tunes_with_init_from_then_lmft(imported: Path, audio: dict[str, Path],
                                                              tmp_path: Path, demo_root: Path) -> None:
    """init_from an imported model: its model and front end, a new arcface head for the demo's speakers; then
    large-margin fine-tuning from that run (same speakers: its head carries over)."""
    data = [*demo_data_overrides(demo_root), f"data.train=[{audio['train']}]", "data.eval=null",
            f"data.test=[{audio['test']}]", f"data.test_trials=[{audio['test'] / 'trials'}]", "data.cohort=null"]
    tuned = tmp_path / "tuned"
    run_stklia("train", *data, *TINY_SCHEDULE, f"init_from={imported}", "head=arcface", f"model_dir={tuned}",
               cwd=tmp_path)
    assert "head (6 speakers) starts afresh" in (tuned / "train.log").read_text()
    config, source = OmegaConf.load(tuned / "config.yaml"), OmegaConf.load(imported / "config.yaml")
    assert config.model == source.model and config.data.features == source.data.features
    run_stklia("train", *data, *TINY_SCHEDULE, "+stage=lmft", f"init_from={tuned}", "head=arcface",
               "max_seq_len=60", "num_iterations=4", "checkpoint_interval=2", cwd=tmp_path)
    lmft = Path(f"{tuned}-lmft")
    assert re.search(r"initialised from .*tuned/checkpoints/step_00000006\.pt", (lmft / "train.log").read_text())
    assert (lmft / "checkpoints" / "step_00000004.pt").is_file()


def bad_config(folder: Path) -> str:
    (folder / "config.yaml").write_text("- just\n- a list\n")
    return rf"{folder / 'config.yaml'}: is not a YAML mapping \(it holds a list\)"


def unknown_architecture(folder: Path) -> str:
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": "Conformer_6_256", "model_args": {}}))
    return rf"{folder / 'config.yaml'}: model 'Conformer_6_256' is not an architecture this import knows"


def renamed_tensor(folder: Path) -> str:
    state = torch.load(folder / "avg_model.pt", weights_only=True)
    state["layer9.0.conv1.weight"] = state.pop("layer3.0.conv1.weight")
    torch.save(state, folder / "avg_model.pt")
    return rf"{folder / 'avg_model.pt'}: tensor 'layer9.0.conv1.weight' .* has no place in WeSpeaker ResNet34"


def reshaped_tensor(folder: Path) -> str:
    state = torch.load(folder / "avg_model.pt", weights_only=True)
    state["seg_1.weight"] = state["seg_1.weight"][:, :-2]
    torch.save(state, folder / "avg_model.pt")
    return rf"{folder / 'avg_model.pt'}: tensor 'seg_1.weight' has shape \({EMB}, \d+\), WeSpeaker ResNet34 as its"


def missing_checkpoint(folder: Path) -> str:
    (folder / "avg_model.pt").unlink()
    return rf"{folder}: no WeSpeaker checkpoint found \(looked for avg_model.pt, pytorch_model.bin, final_model.pt\)"


def not_a_checkpoint(folder: Path) -> str:
    (folder / "avg_model.pt").write_text("not a checkpoint")
    return rf"{folder / 'avg_model.pt'}: not a readable checkpoint"


@pytest.mark.parametrize("spoil", [bad_config, unknown_architecture, renamed_tensor, reshaped_tensor,
                                   missing_checkpoint, not_a_checkpoint])
def test_bad_published_files_stop_in_one_line_and_write_nothing(spoil, published: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(published, tmp_path / "published"))
    expected = spoil(folder)
    proc = run_stklia("import_model", "source=wespeaker", f"path={folder}", f"model_dir={tmp_path / 'model'}",
                      cwd=tmp_path, check=False)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert re.fullmatch(f"stklia: error: {expected}.*", proc.stderr.strip()), proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["published"]  # no model dir, no staging folder


def test_a_speechbrain_yaml_of_another_architecture_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "hyperparams.yaml").write_text("embedding_model: !new:speechbrain.lobes.models.Xvector.Xvector\n"
                                               "    in_channels: 24\n")
    from stklia.interop.importing import read_published

    with pytest.raises(InputError, match=r"hyperparams.yaml: 'embedding_model' is '!new:speechbrain.lobes.models."
                                         r"Xvector.Xvector', not !new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN"):
        read_published("speechbrain", tmp_path)
