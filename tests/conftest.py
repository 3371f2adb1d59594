"""Shared fixtures: a tiny demo corpus, and a helper that runs stklia's command-line entry points."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stklia.data.demo import SMALL_DEMO, make_demo

REPO = Path(__file__).resolve().parents[1]

# A model and schedule small enough for a CLI run in seconds on 2 CPU cores.
TINY_TRAINING = [
    "model.layers=[1,1,1,1]", "model.num_filters=[4,8,8,8]", "model.emb_size=16",
    "batch_size=8", "max_seq_len=40", "num_iterations=6", "checkpoint_interval=3", "log_interval=2",
    "num_workers=0", "progress=false",
]


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


def demo_data_overrides(root: Path) -> list[str]:
    """Point the demo data config at a given corpus, without regenerating it."""
    return [f"data.root={root}", "data.prepare=null"]


def assert_same_run(state: dict, reference: dict) -> None:
    """Bitwise the same weights, buffers and optimizer state."""
    assert state["step"] == reference["step"]
    for part in ("generator", "head"):
        assert state[part].keys() == reference[part].keys()
        for name, tensor in reference[part].items():
            assert torch.equal(state[part][name], tensor), f"{part}.{name} differs"
    for index, buffers in reference["optimizer"]["state"].items():
        for name, tensor in buffers.items():
            assert torch.equal(state["optimizer"]["state"][index][name], tensor), f"optimizer {index}.{name} differs"
    assert state["scheduler"] == reference["scheduler"]
    assert state["best"] == reference["best"]
