"""The public names of each package are exactly what its ``__init__`` re-exports (httpx's
habit), every one documented, and the dependency direction of DESIGN.md holds."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

import mesh

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("package", ["mesh", "roles", "registry_bridge"])
def test_public_names_are_reexported_and_documented(package: str) -> None:
    module = importlib.import_module(package)
    public = [n for n in dir(module) if not n.startswith("_")]
    assert public, f"{package} exports nothing"
    for name in public:
        value = getattr(module, name)
        if inspect.ismodule(value):
            continue  # submodules imported as a side effect
        if inspect.isclass(value) or inspect.isfunction(value):
            assert value.__module__.startswith(package), (name, value.__module__)
            assert inspect.getdoc(value), f"{package}.{name} has no docstring"


def test_mesh_exports_the_node_api() -> None:
    for name in ("open_node", "NodeConfig", "Node", "MemberEvent", "Publication", "Extension"):
        assert hasattr(mesh, name)


def test_mesh_library_imports_neither_roles_nor_registry() -> None:
    """Only the composition root (mesh/__main__.py) wires the extensions in."""
    for path in (ROOT / "mesh").glob("*.py"):
        if path.name == "__main__.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                assert top not in ("roles", "registry_bridge"), f"{path.name} imports {name}"
