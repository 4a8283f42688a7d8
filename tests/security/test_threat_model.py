"""Issue 13, item 7: ``docs/security.md`` names, for every claim and every path that changes
state, the test that proves it. Those names must stay true: each test named there exists, and
every security test module is named there."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
DOC = ROOT / "docs" / "security.md"
REFERENCE = re.compile(r"(tests/[\w/]+\.py)?::(\w+)|(tests/[\w/]+\.py)")


def named_tests() -> list[tuple[str, str | None]]:
    """(file, test name or None) for each reference in the page, in order; a bare
    ``::name`` belongs to the file named last before it."""
    out: list[tuple[str, str | None]] = []
    last: str | None = None
    for match in REFERENCE.finditer(DOC.read_text()):
        path, name, bare = match.groups()
        if bare:
            last = bare
            out.append((bare, None))
            continue
        last = path or last
        assert last is not None, f"::{name} names no file before it"
        out.append((last, name))
    return out


def test_every_test_named_in_the_threat_model_exists() -> None:
    references = named_tests()
    assert len(references) > 60
    missing = []
    for path, name in references:
        source = ROOT / path
        if not source.is_file():
            missing.append(path)
        elif name and not re.search(rf"^(async )?def {name}\(", source.read_text(), re.M):
            missing.append(f"{path}::{name}")
    assert not missing, missing


def test_every_security_test_module_is_in_the_threat_model() -> None:
    named = {path for path, _ in named_tests()}
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "tests" / "security").glob("test_*.py")}
    assert modules - named == set()
