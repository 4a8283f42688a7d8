"""Each ``STAGEMESH_`` variable belongs to the commands whose flag it sets (the table of
``docs/node.md``): every documented variable is tried with every command, and the ones that
broke ``node``, ``status`` and ``keygen`` (``STAGEMESH_SEED``, ``STAGEMESH_BIND``) also run
with the real processes."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mesh.__main__ import COMMANDS
from mesh._cli import UsageError, build_parser, environment_variable
from tests.harness import wait_for
from tests.livenodes import start_nodes

ROOT = Path(__file__).resolve().parent.parent
ROW = re.compile(r"^\| `(STAGEMESH_\w+)` \| (.+?) \| (.+?) \| `(.*)` \|$")
EVERY = "every command"

# Each command with the arguments it needs to parse; roles once per action, so that each of its
# flags exists in at least one of them.
VARIANTS: dict[str, list[list[str]]] = {
    "node": [["node"]],
    "status": [["status"]],
    "keygen": [["keygen", "new.key"]],
    "sim": [["sim"]],
    "registry": [["registry"]],
    "roles": [
        ["roles", "show"],
        ["roles", "start", "--station", "/a/b"],
        ["roles", "logs", "--station", "/a/b", "--role", "r", "--uuid", "u"],
        ["roles", "push", "f.json", "--station", "/a/b"],
    ],
    "demo": [["demo"]],
}


def documented() -> dict[str, tuple[str | None, set[str], str]]:
    """variable -> (flag or None, command names, example) from the table of docs/node.md."""
    rows: dict[str, tuple[str | None, set[str], str]] = {}
    for line in (ROOT / "docs" / "node.md").read_text().splitlines():
        match = ROW.match(line)
        if match:
            variable, sets, owners, example = match.groups()
            flag = re.fullmatch(r"`(--[\w-]+)`", sets)
            names = {n.strip() for n in owners.split(",")}
            commands = {c.name for c in COMMANDS} if owners == EVERY else names
            rows[variable] = (flag[1] if flag else None, commands, example)
    return rows


def _walk(parser: argparse.ArgumentParser) -> list[tuple[argparse.ArgumentParser, str | None]]:
    out: list[tuple[argparse.ArgumentParser, str | None]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                out += [(child, None), *_walk(child)]
    return out


def from_parsers() -> dict[str, tuple[str, set[str]]]:
    """variable -> (flag, command names), from the real parsers of every command."""
    found: dict[str, tuple[str, set[str]]] = {}

    def add(parser: argparse.ArgumentParser, command: str, names: Any) -> None:
        for action in parser._actions:
            variable = environment_variable(action, names)
            if variable is not None:
                flag = action.option_strings[-1]
                owners = found.setdefault(variable, (flag, set()))[1]
                assert found[variable][0] == flag, f"{variable} sets two flags"
                owners.add(command)

    top = build_parser(COMMANDS)
    for entry in COMMANDS:
        add(top, entry.name, None)
        command = entry.load()
        parser = argparse.ArgumentParser(prog=entry.name)
        command.configure(parser)
        add(parser, entry.name, getattr(command, "environment", None))
        for child, _ in _walk(parser):
            add(child, entry.name, None)
    return found


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in [n for n in os.environ if n.startswith("STAGEMESH_")]:
        monkeypatch.delenv(name)
    return monkeypatch


def parse(argv: list[str]) -> dict[str, Any]:
    namespace = build_parser(COMMANDS).parse_args(argv)
    return {k: v for k, v in vars(namespace).items() if k != "_command"}


def test_the_table_lists_every_variable_of_every_flag(clean_env: pytest.MonkeyPatch) -> None:
    assert set(VARIANTS) == {c.name for c in COMMANDS}, "add the new command to VARIANTS"
    table = {v: (flag, owners) for v, (flag, owners, _) in documented().items() if flag}
    assert table == from_parsers()


@pytest.mark.parametrize("variable", sorted(documented()))
def test_a_variable_sets_its_commands_flag_and_no_other(
    variable: str, clean_env: pytest.MonkeyPatch
) -> None:
    flag, owners, example = documented()[variable]
    for command, variants in VARIANTS.items():
        changed = []
        for argv in variants:
            clean_env.delenv(variable, raising=False)
            before = parse(argv)
            clean_env.setenv(variable, example)
            after = parse(argv)  # no UsageError: the example fits, or is not read
            changed += [k for k in before if before[k] != after[k]]
        if flag is not None and command in owners:
            assert changed, f"{variable}={example} does not set {command} {flag}"
        else:
            assert not changed, f"{variable} changes {command} {changed}"


def test_the_seed_list_is_the_nodes_and_a_flag_replaces_it(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("STAGEMESH_SEED", "10.0.0.1:7471, 10.0.0.2:7471")
    assert parse(["node"])["seed"] == ["10.0.0.1:7471", "10.0.0.2:7471"]
    assert parse(["node", "--seed", "10.0.0.3"])["seed"] == ["10.0.0.3"]
    assert parse(["sim"])["seed"] == 1
    clean_env.setenv("STAGEMESH_SIM_SEED", "7")
    assert parse(["sim"])["seed"] == 7


@pytest.mark.parametrize(
    ("variable", "value", "argv"),
    [
        ("STAGEMESH_PORT", "abc", ["node"]),
        ("STAGEMESH_NO_MDNS", "maybe", ["node"]),
        ("STAGEMESH_PROFILE", "moon", ["node"]),
        ("STAGEMESH_SIM_SEED", "x", ["sim"]),
        ("STAGEMESH_LOG_LEVEL", "loud", ["status"]),
    ],
)
def test_a_bad_value_names_the_variable(
    variable: str, value: str, argv: list[str], clean_env: pytest.MonkeyPatch
) -> None:
    clean_env.setenv(variable, value)
    with pytest.raises(UsageError, match=f"{variable}='{value}'"):
        parse(argv)


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mesh", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


def test_node_variables_do_not_break_the_other_commands(tmp_path: Path) -> None:
    env = {
        "STAGEMESH_SEED": "10.0.0.1:7471,10.0.0.2:7471",
        "STAGEMESH_BIND": "127.0.0.1:7480",
        "STAGEMESH_RUNTIME_DIR": str(tmp_path / "run"),
    }
    status = _run("status", env=env)
    assert status.returncode == 1
    assert status.stderr.strip() == (
        "error: no running node found on this machine; give its status URL"
    )
    keygen = _run("keygen", str(tmp_path / "k"), env=env)
    assert keygen.returncode == 0, keygen.stderr
    sim = _run("sim", "--nodes", "3", env=env)
    assert sim.returncode == 0, sim.stderr
    assert re.search(r"^seed +1$", sim.stdout, re.M), sim.stdout


async def test_node_reads_its_seed_list_and_ignores_the_registrys_bind(tmp_path: Path) -> None:
    quiet = ["--no-mdns", "--no-broadcast"]
    async with start_nodes(tmp_path, ["a"], quiet) as (a,):
        env = {
            "STAGEMESH_BIND": "127.0.0.1:7480",  # the registry's, from its docs
            "STAGEMESH_NODE_BIND": "127.0.0.1",
            "STAGEMESH_SEED": f"127.0.0.1:{a.gossip[1]},127.0.0.1:1",
            "STAGEMESH_NO_MDNS": "1",
            "STAGEMESH_NO_BROADCAST": "yes",
        }
        async with start_nodes(tmp_path, ["b"], env=env, bind=None) as (b,):
            assert b.gossip[0] == "127.0.0.1"

            async def b_sees_a() -> bool:
                return (await b.states()).get("/o1/a") == "alive"

            await wait_for(b_sees_a, 20, "b joins a through STAGEMESH_SEED")
