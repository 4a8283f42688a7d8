"""``stagemesh status`` shows every node that answers and marks the ones that do not, shows the
registry and the federation's security, and no CLI call prints library log lines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio

from mesh._node_cli import format_status
from tests.harness import wait_for
from tests.livenodes import LiveNode, start_nodes
from tests.registries import start_registry


async def status(tmp: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """``stagemesh status ARGS`` for the nodes *tmp*'s tests started."""
    with trio.fail_after(60):
        return await trio.run_process(
            [sys.executable, "-m", "mesh", "status", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env={**os.environ, "STAGEMESH_RUNTIME_DIR": str(tmp / "run")},
        )


async def all_alive(nodes: list[LiveNode]) -> bool:
    for node in nodes:
        states = await node.states()
        if len(states) != len(nodes) or set(states.values()) != {"alive"}:
            return False
    return True


async def test_a_frozen_node_is_marked_and_the_others_are_shown(tmp_path: Path) -> None:
    async with start_nodes(tmp_path, ["n1", "n2", "n3"]) as nodes:
        await wait_for(lambda: all_alive(nodes), 20, "three nodes see each other")
        frozen = nodes[1]
        frozen.process.send_signal(signal.SIGSTOP)
        try:
            text = await status(tmp_path, "--timeout", "1")
            raw = await status(tmp_path, "--timeout", "1", "--json")
            for node in nodes:
                node.process.send_signal(signal.SIGSTOP)
            none = await status(tmp_path, "--timeout", "0.5")
        finally:
            for node in nodes:
                node.process.send_signal(signal.SIGCONT)
        out = text.stdout.decode()
        assert text.returncode == 0, text.stderr
        assert "/o1/n1  federation=default" in out and "/o1/n3  federation=default" in out
        assert f"/o1/n2  NOT ANSWERING at {frozen.status_url}: no answer within 1 s" in out
        assert text.stderr == b""
        docs: list[dict[str, Any]] = json.loads(raw.stdout)
        assert raw.returncode == 0
        assert [d.get("error") for d in docs].count("no answer within 1 s") == 1
        assert sorted(d["node"]["path"] for d in docs if "node" in d) == ["/o1/n1", "/o1/n3"]
        assert none.returncode == 1
        assert none.stdout.decode().count("NOT ANSWERING") == 3
        assert none.stderr.decode() == "error: none of the 3 nodes on this machine answered\n"


async def test_the_security_line_shows_an_open_federation(tmp_path: Path) -> None:
    async with start_nodes(tmp_path, ["n1"]) as (node,):
        doc = await node.status()
    assert "security=OPEN: no federation key" in format_status({**doc, "security": "open"})
    assert "security=keyed" in format_status({**doc, "security": "keyed"})
    if "security" in doc:  # once nodes report it, the open federation shows without help
        assert "security=OPEN" in format_status(doc)


async def test_the_registry_state_shows_and_no_library_log_lines(tmp_path: Path) -> None:
    registry, url = await start_registry(tmp_path / "registry.db")
    try:
        async with start_nodes(tmp_path, ["n1"], ["--registry", url]) as (node,):

            async def bridged() -> bool:
                reg = (await node.status()).get("registry") or {}
                return reg.get("state") == "connected" and reg.get("clock_samples", 0) >= 5

            await wait_for(bridged, 30, "the node talks to the registry")
            shown = await status(tmp_path)
            one = await status(tmp_path, node.status_url)
        assert shown.returncode == one.returncode == 0
        assert f"registry={url}  state=connected" in shown.stdout.decode()
        assert f"registry={url}  state=connected" in one.stdout.decode()
        logged = "".join(node.output)
        assert "HTTP Request" not in logged and "httpx" not in logged, logged
        assert shown.stderr == one.stderr == b""
    finally:
        registry.kill()
        with trio.move_on_after(10):
            await registry.wait()
