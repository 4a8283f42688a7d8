"""Every Python snippet and shell command of ``docs/`` runs (or, marked ``no-run``, is at least
checked), so none can rot. Which blocks run and how: ``tests/docsnippets.py``.

Each runnable block runs in a new network namespace that holds only loopback (root, as the
other namespace tests): nothing it starts can reach another host, and the default ports are
free whatever else runs on this machine.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mesh.__main__ import COMMANDS
from mesh._cli import build_parser
from tests.docsnippets import Snippet, commands, snippets, spec, stagemesh_argv

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md"))
ALL = [s for path in DOCS for s in snippets(path)]


def _ids(blocks: list[Snippet]) -> list[str]:
    return [b.id for b in blocks]


RUNS = [s for s in ALL if s.runs]
CHECKED = [s for s in ALL if s.checked]


def test_the_docs_have_blocks_that_run() -> None:
    files = {Path(s.file).name for s in RUNS}
    assert {"node.md", "simulator.md", "registry.md"} <= files, files


@pytest.mark.netns
@pytest.mark.slow
@pytest.mark.timeout(660)  # its own bound, 600 s, speaks first
@pytest.mark.parametrize("snippet", RUNS, ids=_ids(RUNS))
def test_block_runs(snippet: Snippet, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(spec(snippet, work, ROOT))
    driver = ROOT / "tests" / "docsnippets.py"
    done = subprocess.run(
        [
            *("unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"),
            *(sys.executable, str(driver), str(spec_file)),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]


@pytest.mark.parametrize("snippet", CHECKED, ids=_ids(CHECKED))
def test_no_run_block_is_checked(snippet: Snippet, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``no-run`` sketch still compiles, and its ``stagemesh`` commands still parse."""
    if snippet.lang == "python":
        compile(snippet.text, snippet.id, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        return
    for name in [n for n in os.environ if n.startswith("STAGEMESH_")]:
        monkeypatch.delenv(name)
    for argv in [a for a in (stagemesh_argv(line) for line in commands(snippet.text)) if a]:
        build_parser(COMMANDS).parse_args(argv)


def test_the_readme_try_it_is_a_block_the_docs_run() -> None:
    """README.md is not run (its Quick start installs); its "Try it" commands are the start of
    a block of docs/node.md that does run, so they cannot rot on their own."""
    readme = snippets(ROOT / "README.md")
    text = (ROOT / "README.md").read_text()
    start = text.index("## Try it")
    line = text[:start].count("\n") + 1
    try_it = next(s for s in readme if s.line > line and s.lang == "sh")
    node_md = [s for s in RUNS if Path(s.file).name == "node.md" and s.lang == "sh"]
    assert any(
        commands(s.text)[: len(commands(try_it.text))] == commands(try_it.text) for s in node_md
    )


def test_the_docs_stand_alone() -> None:
    """A user has the repository, not the design notes or reference folders it grew from: no
    page of ``docs/`` (nor the README) sends them to a file outside it."""
    outside = ("DESIGN.md", "../shared", "reference/")
    offenders = [
        f"{path.name}:{number}: {line.strip()}"
        for path in [*DOCS, ROOT / "README.md"]
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if any(name in line for name in outside)
    ]
    assert not offenders, "\n".join(offenders)
