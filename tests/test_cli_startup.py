"""``stagemesh --help``, ``status`` and ``keygen`` start fast because they import only what they
use (the figures are in ``bench/startup.py``; here, the imports that would make them slow)."""

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

IMPORTS_OF = textwrap.dedent(
    """
    import contextlib, io, json, sys
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


def top_modules_after(*argvs: list[str]) -> set[str]:
    """The top-level modules a fresh interpreter holds after ``import mesh.__main__`` and
    running ``stagemesh ARGV`` for each of *argvs*."""
    done = subprocess.run(
        [sys.executable, "-c", IMPORTS_OF, json.dumps(argvs)],
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
