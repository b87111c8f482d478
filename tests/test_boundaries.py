"""The structure the code promises: the CLI uses the runtime only through its public names, and the server's
modules import without a cycle (every module loads on its own, the shared one without either API)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import dgemma_runtime
import pytest

CLI = Path(__file__).resolve().parents[1] / "dgemma_cli"


def runtime_imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) for every import of the runtime or kernel packages in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(("dgemma_runtime", "dgemma_kernels")):
            found.append((node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.startswith(("dgemma_runtime", "dgemma_kernels"))]
    return found


@pytest.mark.parametrize("path", sorted(CLI.rglob("*.py")), ids=lambda p: str(p.relative_to(CLI)))
def test_the_cli_imports_only_public_runtime_names(path):
    for module, names in runtime_imports(path):
        assert module == "dgemma_runtime", f"{module} is not the runtime's public API"
        assert set(names) <= set(dgemma_runtime.__all__), set(names) - set(dgemma_runtime.__all__)


@pytest.mark.parametrize("module", ["shared", "schema", "worker", "ollama", "openai", "app"])
def test_each_server_module_imports_first_without_a_cycle(module):
    # A fresh interpreter per module: an import cycle shows up as an ImportError when its module loads first.
    code = f"import importlib; importlib.import_module('dgemma_cli.serve.{module}')"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_the_shared_server_module_is_a_leaf():
    tree = ast.parse((CLI / "serve" / "shared.py").read_text())
    relative = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 1}
    assert relative <= {"schema", "worker"}, relative  # never the APIs or the app that mounts them
