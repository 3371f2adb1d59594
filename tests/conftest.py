"""Shared fixtures: a tiny demo corpus, and a helper that runs stklia's command-line entry points."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import kaldiio
import numpy as np
import pytest
import soundfile
import torch

from stklia.data.augment import AddNoise, Augment, Reverb, SpecAugment, SpeedPerturb
from stklia.demo.corpus import SMALL_DEMO, make_demo
from stklia.modeldir.checkpoints import load_checkpoint
from stklia.models.resnet import ResNet

REPO = Path(__file__).resolve().parents[1]

# A schedule, and with the default ResNet a model, small enough for a CLI run in seconds on 2 CPU cores.
TINY_SCHEDULE = ["batch_size=8", "max_seq_len=40", "num_iterations=6", "checkpoint_interval=3", "log_interval=2",
                 "num_workers=0", "progress=false"]
TINY_TRAINING = ["model.layers=[1,1,1,1]", "model.num_filters=[4,8,8,8]", "model.emb_size=16", *TINY_SCHEDULE]
N = 4  # checkpoint interval of the short runs of the resume and distributed tests, which train 2N steps
SR = 16000  # sample rate of the generated recordings
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # processes that share 2 cores (torchrun's default too); same kernels


IN_CI = os.environ.get("CI", "").lower() in ("1", "true")  # .ci/run: every system dependency is installed


def require_system(available: bool, reason: str) -> None:
    """Tests that need a system binary or service (ffmpeg, a Slurm cluster) skip when it is absent, `reason`
    saying how to get it; under CI=true, which installs and starts them (.ci/run), its absence is a failure."""
    if not available:
        (pytest.fail if IN_CI else pytest.skip)(reason)


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small demo corpus (train/eval/test Kaldi dirs with trials), built once per test session."""
    return make_demo(tmp_path_factory.mktemp("demo") / "corpus", **SMALL_DEMO)


@pytest.fixture
def kaldi_dir(demo_root: Path, tmp_path: Path) -> Path:
    """A private copy of the small test data dir, for tests that break its files."""
    return Path(shutil.copytree(demo_root / "test", tmp_path / "data"))


def stklia_env(**extra: str) -> dict[str, str]:
    """The environment of the commands under test: this checkout's stklia, and tests/optim_hooks.py."""
    return {**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]),
            **extra}


def run_stklia(command: str, *overrides: str, cwd: Path, check: bool = True,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `python -m stklia.<command> overrides...` as a user would, in `cwd` (extra `env` variables)."""
    proc = subprocess.run([sys.executable, "-m", f"stklia.{command}", *overrides], cwd=cwd, env=stklia_env(**env or {}),
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"stklia.{command} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def without_module(module: str, root: Path) -> dict[str, str]:
    """The environment of a command in which `import <module>` fails as it does when it is not installed: a
    package of that name, first on PYTHONPATH (under root), raising ModuleNotFoundError."""
    package = root.joinpath(*module.split("."))
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(f"raise ModuleNotFoundError(\"No module named '{module}'\")\n")
    return {"PYTHONPATH": os.pathsep.join([str(root), stklia_env()["PYTHONPATH"]])}


def run_recipe(script: Path, *args: str, **env: str) -> None:
    """A recipe's run.sh with arguments and extra environment variables; it must succeed. Its stages run this
    interpreter (PYTHON), not a `python` found on PATH."""
    proc = subprocess.run([str(script), *args], env=stklia_env(PYTHON=sys.executable, **env), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"{script} {args} failed:\n{proc.stdout}\n{proc.stderr}"


def demo_data_overrides(root: Path) -> list[str]:
    """Point the demo data config at a given corpus, without regenerating it."""
    return [f"data.root={root}", "data.prepare=null"]


@pytest.fixture(scope="module")
def trained(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory from one tiny training run (6 steps, checkpoints at 3 and 6), one per test module."""
    model_dir = tmp_path_factory.mktemp("trained") / "model"
    run_stklia("train", *demo_data_overrides(demo_root), *TINY_TRAINING, f"model_dir={model_dir}",
               cwd=model_dir.parent)
    return model_dir


def make_enrollment(data_dir: Path, out: Path, per_speaker: int = 2) -> Path:
    """A Kaldi dir `out` enrolling each speaker of data_dir with its first `per_speaker` utterances, and
    `out/trials`: every enrolled speaker against every other utterance of data_dir (`<label> <speaker> <utt>`)."""
    out.mkdir(parents=True)
    feats = dict(line.split(maxsplit=1) for line in (data_dir / "feats.scp").read_text().splitlines())
    spk2utt = [line.split() for line in (data_dir / "spk2utt").read_text().splitlines()]
    enrolled = {spk: utts[:per_speaker] for spk, *utts in spk2utt}
    (out / "feats.scp").write_text("".join(f"{u} {feats[u]}\n" for us in enrolled.values() for u in us))
    (out / "utt2spk").write_text("".join(f"{u} {spk}\n" for spk, us in enrolled.items() for u in us))
    (out / "spk2utt").write_text("".join(f"{spk} {' '.join(us)}\n" for spk, us in enrolled.items()))
    tests = [(spk, u) for spk, *utts in spk2utt for u in utts[per_speaker:]]
    (out / "trials").write_text("".join(f"{int(spk == s)} {spk} {u}\n" for spk in enrolled for s, u in tests))
    return out


def results_written(proc: subprocess.CompletedProcess) -> tuple[Path, Path]:
    """The summary JSON and the results dir that `stklia.test` says it wrote (its last line)."""
    wrote = proc.stdout.strip().splitlines()[-1]
    assert wrote.startswith("wrote "), wrote
    summary, out = (Path(p.rstrip("/")) for p in wrote.removeprefix("wrote ").split(" and "))
    return summary, out


def table_rows(text: str) -> list[list[str]]:
    """The rows (header included) of the markdown tables in a command's output, cells stripped."""
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith("|") and not line.startswith("|-")]


def kaldi_trial(line: str) -> str:
    """A `<1|0> <a> <b>` trial line in Kaldi's form, `<a> <b> target|nontarget`."""
    label, a, b = line.split()
    return f"{a} {b} {'target' if label == '1' else 'nontarget'}"


def poison_features(data_dir: Path, utt: str, value: float = math.nan) -> int:
    """Make frame 3 of `utt`'s features in data_dir/feats.scp hold `value` (a matrix of its own, in
    data_dir/poisoned.ark); return the scp's line of utt."""
    lines = (data_dir / "feats.scp").read_text().splitlines()
    index = next(i for i, line in enumerate(lines) if line.split()[0] == utt)
    mat = kaldiio.load_mat(lines[index].split(maxsplit=1)[1]).copy()
    mat[3, 5] = value
    kaldiio.save_ark(str(data_dir / "poisoned.ark"), {utt: mat}, scp=str(data_dir / "poisoned.scp"))
    lines[index] = (data_dir / "poisoned.scp").read_text().strip()
    (data_dir / "feats.scp").write_text("\n".join(lines) + "\n")
    return index + 1


def tiny_resnet(pooling: str, seed: int = 0, block: str = "basic") -> ResNet:
    """A small ResNet in eval mode whose 2-D batch norms have non-trivial statistics and biases.

    With the default ones (mean 0, var 1, bias 0) padded zeros would stay zero through every
    layer, and forgetting to re-zero them would go unnoticed.
    """
    torch.manual_seed(seed)
    model = ResNet(40, layers=[1, 2, 1, 1], num_filters=[4, 8, 8, 8], emb_size=16, pooling=pooling, block=block)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.bias.data.normal_(0, 0.5)
    return model.eval()


def alone(model: ResNet, feats: np.ndarray) -> np.ndarray:
    """The embedding of one utterance by itself: no padding, no lengths."""
    with torch.inference_mode():
        return model(torch.from_numpy(feats)[None]).numpy()[0]


def assert_same_run(state: dict, reference: dict, where: str = "checkpoint") -> None:
    """Bitwise the same checkpoint: weights, buffers, optimizer, scheduler, every random generator's state."""
    if isinstance(reference, torch.Tensor):
        assert torch.equal(state, reference), f"{where} differs"
    elif isinstance(reference, dict):
        assert state.keys() == reference.keys(), f"{where} has other keys"
        for key, value in reference.items():
            assert_same_run(state[key], value, f"{where}.{key}")
    elif isinstance(reference, (list, tuple)):
        assert len(state) == len(reference), f"{where} has another length"
        for index, (item, value) in enumerate(zip(state, reference)):
            assert_same_run(item, value, f"{where}[{index}]")
    else:
        assert state == reference, f"{where} differs"


def short_run(demo_root: Path) -> list[str]:
    """Overrides of a tiny run of 2N steps with checkpoints at N and 2N."""
    return [*demo_data_overrides(demo_root), *TINY_TRAINING, f"num_iterations={2 * N}", f"checkpoint_interval={N}"]


def checkpoint_path(model_dir: Path, step: int) -> Path:
    return model_dir / "checkpoints" / f"step_{step:08d}.pt"


def hooked(action: str, at_step: int, **options: object) -> list[str]:
    """Overrides for tests/optim_hooks.py: right after step `at_step` the run does `action` (a sweep's comma list
    works too); `options` are its other arguments (rank, out_dir, times)."""
    return ["optim._target_=optim_hooks.sgd_then", f"+optim.at_step={at_step}", f"+optim.action={action}",
            *(f"+optim.{key}={value}" for key, value in options.items())]


def torchrun(*overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=2 -m stklia.train overrides...` (gloo on CPU)."""
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "stklia.train", *overrides], cwd=cwd, env=stklia_env(**ONE_THREAD),
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="session")
def ddp_run(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-process torchrun run of 2N steps; each rank also dumps its parameters after the last step."""
    model_dir = tmp_path_factory.mktemp("ddp") / "model"
    model_dir.mkdir()
    start = time.perf_counter()
    proc = torchrun(*short_run(demo_root), f"model_dir={model_dir}", *hooked("dump", 2 * N, out_dir=model_dir),
                    cwd=model_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    print(f"\n2-process gloo run of {2 * N} steps (torchrun): {time.perf_counter() - start:.1f} s")
    return model_dir


def write_list(folder: Path, name: str, recordings: list[np.ndarray]) -> Path:
    """folder/name: a list file of wav paths (the first line in `key path` form) for the given int16 recordings."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, x in enumerate(recordings):
        soundfile.write(folder / f"{name}{i}.wav", x.astype(np.int16), SR)
        lines.append(f"{name}{i} {folder / f'{name}{i}.wav'}" if i == 0 else str(folder / f"{name}{i}.wav"))
    (folder / name).write_text("\n".join(lines) + "\n")
    return folder / name


def segmented_copy(src: Path, dst: Path) -> Path:
    """A copy of the audio dir `src` (wav.scp) whose recordings each join two of its utterances, and whose
    segments file cuts them back into the same utterances (same ids, same samples: times half a sample past each
    boundary, which Kaldi's truncation to a sample brings back to it)."""
    dst.mkdir(parents=True)
    wavs = dict(line.split() for line in (src / "wav.scp").read_text().splitlines())
    utt2spk = dict(line.split() for line in (src / "utt2spk").read_text().splitlines())
    utts = sorted(wavs, key=lambda u: (utt2spk[u], u))
    recordings, segments = [], []
    for i in range(0, len(utts), 2):
        pair = utts[i : i + 2]
        audio = [soundfile.read(wavs[u], dtype="int16")[0] for u in pair]
        recording = f"rec{i // 2:03d}"
        soundfile.write(dst / f"{recording}.wav", np.concatenate(audio), SR)
        recordings.append(f"{recording} {dst / f'{recording}.wav'}")
        start = 0
        for utt, samples in zip(pair, audio):
            segments.append(f"{utt} {recording} {(start + 0.5) / SR:.7f} {(start + len(samples) + 0.5) / SR:.7f}")
            start += len(samples)
    (dst / "wav.scp").write_text("".join(f"{line}\n" for line in recordings))
    (dst / "segments").write_text("".join(f"{line}\n" for line in sorted(segments)))
    for name in ("utt2spk", "spk2utt", "trials"):
        if (src / name).exists():
            shutil.copy(src / name, dst / name)
    return dst


def demo_augment(demo_root: Path) -> Augment:
    """Every augmentation, each likely enough that a few batches exercise all of them together (the demo's sets of
    demo_root/augment)."""
    sets = demo_root / "augment"
    return Augment(SpeedPerturb(prob=0.7, factors=[0.9, 1.1], new_speakers=True), Reverb(sets / "rirs", prob=0.5),
                   AddNoise({"noise": {"list": sets / "noise", "snr": [0, 15]},
                             "babble": {"list": sets / "babble", "snr": [13, 20], "count": [3, 5]}}, prob=0.7),
                   SpecAugment(prob=0.6, num_time_masks=2))


PACKED = ("train_wav", "augment/noise", "augment/music", "augment/babble", "augment/rirs")  # what packed_demo packs


def packed_demo(demo_root: Path, out: Path, fmt: str, archive_size: str = "64K") -> Path:
    """A copy of the demo corpus whose train_wav and augmentation sets are packed (python -m stklia.pack's
    library function; the other dirs are links to demo_root's)."""
    from omegaconf import OmegaConf

    from stklia.data.pack import pack

    for name in PACKED:
        pack(OmegaConf.create({"src": str(demo_root / name), "out": str(out / name), "format": fmt,
                               "archive_size": archive_size, "sample_rate": SR, "nj": 1, "progress": False}))
    for path in demo_root.iterdir():
        if not (out / path.name).exists():
            (out / path.name).symlink_to(path)
    return out


AUGMENTED_RUN = ["experiment=demo_aug", "data.eval=null", "data.test=null"]  # audio + augmentation, no tests


@pytest.fixture(scope="session")
def augmented_run(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The last checkpoint of a short run on the demo's loose wav files with its augmentation (short_run +
    AUGMENTED_RUN): what the same run on segments, archives or a lhotse manifest of the same audio must give."""
    model_dir = tmp_path_factory.mktemp("augmented") / "model"
    run_stklia("train", *short_run(demo_root), *AUGMENTED_RUN, f"model_dir={model_dir}", cwd=model_dir.parent)
    return load_checkpoint(checkpoint_path(model_dir, 2 * N))

