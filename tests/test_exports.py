"""The public surface of each package: ``__all__`` is exactly what it exports (httpx's test),
every exported class and function is documented and shows its package as its module (trio's
and httpx's habit), each package's errors form one tree under ``mesh.MeshError``, the
dependency direction holds, and the sans-IO cores import no I/O."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest

import mesh
import roles

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["mesh", "roles", "registry_bridge"]


def public_names(package: str) -> set[str]:
    """What the lazy package exports: what ``<package>/_api.py`` imports (and nothing else
    public in the package's ``__init__.py`` itself)."""
    module = importlib.import_module(package)
    api = importlib.import_module(f"{package}._api")
    names = {n for n in vars(module) if not n.startswith("_")}
    exported = {n for n in vars(api) if not n.startswith("_")}
    assert names <= exported, f"public in {package}/__init__.py only: {sorted(names - exported)}"
    return {n for n in exported if not inspect.ismodule(getattr(api, n))}


@pytest.mark.parametrize("package", PACKAGES)
def test_all_is_exactly_the_public_names(package: str) -> None:
    module = importlib.import_module(package)
    assert len(module.__all__) == len(set(module.__all__)), "a name is listed twice"
    assert set(module.__all__) == public_names(package)
    assert set(module.__all__) <= set(dir(module))  # completion offers every name


@pytest.mark.parametrize("package", PACKAGES)
def test_exported_objects_show_their_package_and_are_documented(package: str) -> None:
    module = importlib.import_module(package)
    for name in module.__all__:
        value = getattr(module, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert value.__module__ == package, (name, value.__module__)
            assert inspect.getdoc(value), f"{package}.{name} has no docstring"


@pytest.mark.parametrize("package", PACKAGES)
def test_package_is_lazy_and_every_name_loads(package: str) -> None:
    module = importlib.import_module(package)
    api = importlib.import_module(f"{package}._api")
    for name in module.__all__:
        assert getattr(module, name) is vars(api)[name]
    with pytest.raises(AttributeError, match=f"module '{package}' has no attribute 'nothing'"):
        module.nothing  # noqa: B018
    assert "NodeEvent" in mesh.__all__ and "PathInUse" in mesh.__all__


ROOTS = {"mesh": "MeshError", "roles": "RolesError", "registry_bridge": "RegistryBridgeError"}
"""The one root error of each package."""


@pytest.mark.parametrize("package", PACKAGES)
def test_errors_form_one_tree_drawn_in_the_docstring(package: str) -> None:
    """``except <package>.<root>`` catches every error the package exports, each root is a
    ``mesh.MeshError`` (so that one ``except`` catches everything stagemesh raises), and the
    package's docstring draws each of them."""
    module = importlib.import_module(package)
    root = getattr(module, ROOTS[package])
    errors = [
        value
        for name in module.__all__
        if isinstance(value := getattr(module, name), type) and issubclass(value, BaseException)
    ]
    assert len(errors) >= 10
    assert issubclass(root, mesh.MeshError)
    assert module.__doc__ is not None
    assert re.search(rf"\n    {root.__name__}\b", module.__doc__), "the tree has no root"
    for error in errors:
        assert issubclass(error, root), error
        if error is not root:
            drawn = re.search(rf"── {error.__name__}\b", module.__doc__)
            assert drawn, f"{error.__name__} not in {package}'s tree"


def test_errors_keep_their_builtin_bases() -> None:
    """Older handlers still catch them."""
    assert issubclass(mesh.InvalidName, ValueError)
    assert issubclass(mesh.NoSuchMember, LookupError)
    assert issubclass(roles.SupervisorInUse, RuntimeError)


def test_mesh_library_imports_neither_roles_nor_registry() -> None:
    """Only the composition root (mesh/__main__.py) wires the extensions in."""
    for path in (ROOT / "mesh").glob("*.py"):
        if path.name == "__main__.py":
            continue
        for name in imported_modules(path):
            top = name.split(".")[0]
            assert top not in ("roles", "registry_bridge"), f"{path.name} imports {name}"


# ---------------------------------------------------------------------------------------------
# Sans-IO cores

MESH_CORES = [
    "_clock",
    "_election",
    "_errors",
    "_events",
    "_inbound",
    "_lineage",
    "_link_core",
    "_membership",
    "_names",
    "_nodecore",
    "_osc_core",
    "_profiles",
    "_sim",
    "_simqueue",
    "_simregistry",
    "_tempo",
    "_wire",
]
"""The protocol cores of ``mesh``, the simulator that drives them, and what they import."""
ROLES_CORES = ["_desired", "_history", "_instance", "_manager"]
"""The station's state machines: the instance, the manager, the desired and the kept state."""
NO_IO = {"trio", "time", "socket", "asyncio", "subprocess", "os", "signal", "threading", "select"}


def imported_modules(path: Path) -> set[str]:
    """Every module *path* imports (``from a.b import c`` counts as ``a.b``), anywhere in it."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize(
    "module", [f"mesh.{m}" for m in MESH_CORES] + [f"roles.{m}" for m in ROLES_CORES]
)
def test_the_cores_import_no_io(module: str) -> None:
    """Sans-IO: a core imports no trio, time, socket, process or thread module, so the
    simulator can drive it with a virtual clock and network. A ``mesh`` core imports, of
    ``mesh``, only other cores (so nothing reaches I/O through it); the station's cores share
    plain helpers (the order and config formats) with their drivers, and are held to their own
    imports."""
    package, name = module.split(".")
    imported = imported_modules(ROOT / package / f"{name}.py")
    assert not {m.split(".")[0] for m in imported} & NO_IO
    if package == "mesh":
        own = {m.split(".")[1] for m in imported if m.startswith("mesh.")}
        assert own <= set(MESH_CORES), f"{module} imports non-core {sorted(own - set(MESH_CORES))}"
