"""A wheel installed (not editable) into a fresh virtual environment runs from any directory:
the Hydra configs ship inside the package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from conftest import REPO, TINY_TRAINING, demo_data_overrides, stklia_env


def run(*command: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{command} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_wheel_installs_and_runs_train_test_extract_from_anywhere(demo_root: Path, tmp_path: Path) -> None:
    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info/ into the source tree
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__", "exp",
                                                                "multirun", "outputs", ".*_cache"))
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist",
        source, cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("stklia-*.whl"))
    # The venv sees the packages of the environment running the tests (torch, hydra, pip, ...) through a .pth file
    # of plain paths (whose own .pth files, e.g. an editable stklia's, stay unread), and gets stklia from the wheel
    # alone. (--system-site-packages would show the base interpreter's packages instead: none in a fresh venv.)
    run(sys.executable, "-m", "venv", "--without-pip", tmp_path / "venv", cwd=tmp_path)
    python = tmp_path / "venv" / "bin" / "python"
    site_packages = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                             cwd=tmp_path).strip())
    here = sysconfig.get_paths()
    (site_packages / "tested_environment.pth").write_text(f"{here['purelib']}\n{here['platlib']}\n")
    run(python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", wheel, cwd=tmp_path)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "HYDRA_FULL_ERROR")}
    package = Path(run(python, "-c", "import stklia; print(stklia.__file__)", cwd=elsewhere, env=env).strip()).parent
    assert package.is_relative_to(tmp_path / "venv") and (package / "conf" / "train.yaml").is_file()

    model_dir = elsewhere / "model"
    run(python, "-m", "stklia.train", *demo_data_overrides(demo_root), *TINY_TRAINING, "num_iterations=3",
        f"model_dir={model_dir}", cwd=elsewhere, env=env)
    tested = run(python, "-m", "stklia.test", f"model_dir={model_dir}", "progress=false", cwd=elsewhere, env=env)
    assert "Test results of" in tested
    run(python, "-m", "stklia.extract", f"model_dir={model_dir}", "format=pt", "progress=false", cwd=elsewhere,
        env=env)
    assert (model_dir / "embeddings" / "test" / "embeddings.pt").is_file()
    plugin = run(python, "-c", "import hydra_plugins.stklia_optuna_sweeper as p; print(p.__file__)", cwd=elsewhere,
                 env=env)
    assert Path(plugin.strip()).is_relative_to(tmp_path / "venv")  # the Optuna sweeper ships in the wheel
    assert "OptunaSweeper" in run(python, "-m", "stklia.train", "--info", "plugins", cwd=elsewhere, env=env)


def test_own_config_dirs_join_through_hydra_searchpath(tmp_path: Path) -> None:
    (tmp_path / "my_conf" / "model").mkdir(parents=True)
    (tmp_path / "my_conf" / "model" / "my_model.yaml").write_text("defaults:\n  - resnet\n  - _self_\nemb_size: 77\n")
    composed = run(sys.executable, "-m", "stklia.train", f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]",
                   "model=my_model", "--cfg", "job", cwd=tmp_path, env=stklia_env())
    model = composed.split("\nmodel:\n", 1)[1]
    assert "_target_: stklia.models.resnet.ResNet" in model and "emb_size: 77" in model
