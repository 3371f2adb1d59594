"""The package's layers and what each may import (as import-linter's "layers" contract checks it): every import of
a stklia module, at the top of a file or inside a function, points down. docs/architecture.md draws the same
map; a new module that reaches up, or a new folder not placed here, fails."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

PACKAGE = REPO / "stklia"
# layer -> the layers below it that it may import (besides itself)
MAY_IMPORT = {
    "core": set(),
    "data": {"core"},
    "models": {"core"},
    "modeldir": {"core"},
    "evaluation": {"core", "data", "models", "modeldir"},
    "demo": {"core", "data", "evaluation"},
    "training": {"core", "data", "models", "modeldir", "evaluation"},
    "inference": {"core", "data", "models", "modeldir", "evaluation"},
    "interop": {"core", "data", "models", "modeldir"},
}
# modules that read Kaldi tables and audio for tools that never touch a model: no torch
WITHOUT_TORCH = ["stklia.data.tables", "stklia.data.rxfilename", "stklia.data.audio", "stklia.data.kaldi",
                 "stklia.data.trials", "stklia.core.errors", "stklia.core.atomic", "stklia.core.config"]


def layer_of(path: Path) -> str:
    """A module's layer: its folder under stklia/, or `commands` for the entry points stklia/<command>.py."""
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else "commands"


def stklia_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of a stklia module in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] if node.module != "stklia" else [f"stklia.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found += [(node.lineno, name) for name in names if name == "stklia" or name.startswith("stklia.")]
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


def test_every_folder_is_a_layer() -> None:
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert folders == set(MAY_IMPORT)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path: Path) -> None:
    layer = layer_of(path)
    if layer == "commands":  # the entry points may import any layer; nothing imports them but each other
        return
    for line, module in stklia_imports(path):
        target = module.split(".")[1] if module.count(".") else None
        assert target in MAY_IMPORT[layer] | {layer}, \
            f"{path.relative_to(REPO)}:{line}: the {layer} layer imports {module} ({target} is not below it)"


def test_nothing_imports_an_entry_point() -> None:
    commands = {f"stklia.{p.stem}" for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    for path in MODULES:
        for line, module in stklia_imports(path):
            assert module not in commands or layer_of(path) == "commands", f"{path}:{line}: imports {module}"


def test_the_kaldi_tables_are_read_without_torch() -> None:
    code = f"import sys; import {', '.join(WITHOUT_TORCH)}; sys.exit('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr or "torch was imported"


def test_the_layer_test_can_fail(tmp_path: Path) -> None:
    """The import scan sees an upward import inside a function too."""
    module = tmp_path / "upward.py"
    module.write_text("def f():\n    from stklia.training.loop import train\n")
    assert stklia_imports(module) == [(2, "stklia.training.loop")]
