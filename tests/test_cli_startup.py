"""``stagemesh --help``, ``status``, ``keygen`` and ``node --help`` start fast because they import
only what they use, and the three packages load their public names on first use (the figures
are in ``bench/startup.py``; here, the imports that would make them slow)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import mesh
from mesh.__main__ import COMMANDS
from mesh._cli import CommandEntry

HEAVY = ("hypercorn", "starlette", "zeroconf", "registry_bridge", "roles", "trio", "httpx")
SERVER_STACK = ("starlette", "granian", "hypercorn", "jinja2", "psycopg", "cryptography")
"""What only a running registry, station or node needs (the HTTP servers, the templates, the
database driver, the operator keys' signatures), never a look at the flags."""

IMPORTS_OF = textwrap.dedent(
    """
    import contextlib, importlib, io, json, sys
    for module in sys.argv[2:]:
        importlib.import_module(module)
    import mesh.__main__
    for argv in json.loads(sys.argv[1]):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            try:
                mesh.__main__.main(argv)
            except SystemExit:
                pass
    print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
    """
)


def top_modules_after(*argvs: list[str], imports: tuple[str, ...] = ()) -> set[str]:
    """The top-level modules a fresh interpreter holds after importing *imports* and
    ``mesh.__main__`` and running ``stagemesh ARGV`` for each of *argvs*."""
    done = subprocess.run(
        [sys.executable, "-c", IMPORTS_OF, json.dumps(argvs), *imports],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return set(json.loads(done.stdout))


def test_importing_the_entry_point_imports_no_heavy_stack() -> None:
    assert top_modules_after() & set(HEAVY) == set()


def test_help_status_and_keygen_import_no_heavy_stack(tmp_path: Path) -> None:
    loaded = top_modules_after(
        ["--help"],
        ["--version"],
        ["status", "http://127.0.0.1:9"],  # nothing listens on port 9: refused at once
        ["keygen", str(tmp_path / "federation.key")],
    )
    assert (tmp_path / "federation.key").exists()
    assert loaded & set(HEAVY) == set()


def test_node_help_imports_no_server_stack() -> None:
    """``stagemesh node --help`` lists the extensions' flags from their light plugins: the
    roles and registry packages are imported, what they run is not."""
    loaded = top_modules_after(["node", "--help"])
    assert {"roles", "registry_bridge"} <= loaded  # the plugins were asked for their flags
    assert loaded & {*SERVER_STACK, "trio", "zeroconf", "httpx"} == set()


def test_importing_the_packages_imports_no_server_stack() -> None:
    """``import mesh, roles, registry_bridge`` loads no public name until one is used."""
    loaded = top_modules_after(imports=("mesh", "roles", "registry_bridge"))
    assert loaded & {*SERVER_STACK, "trio", "zeroconf", "httpx"} == set()


@pytest.mark.parametrize("entry", COMMANDS, ids=[c.name for c in COMMANDS])
def test_each_summary_is_its_commands_help(entry: CommandEntry) -> None:
    assert entry.load().help == entry.help


def test_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mesh", "--version"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout == f"stagemesh {mesh.__version__}\n"


def test_help_lists_every_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mesh", "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    words = " ".join(done.stdout.split())
    for entry in COMMANDS:
        assert f"{entry.name} {entry.help}" in words
