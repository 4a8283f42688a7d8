"""Helpers shared by the wire-edge security tests that put nodes and attackers on different
hosts (network namespaces on a private bridge, :mod:`tests.netns`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.netns import Host, Lan, Spawned

__all__ = [
    "ROOT",
    "env",
    "node_id",
    "rss_kib",
    "start",
    "status",
    "tool",
    "tool_spawn",
]

ROOT = Path(__file__).resolve().parents[2]
GOSSIP_PORT = 7471


def env() -> dict[str, str]:
    """The environment of a process in a namespace: this checkout first on the path."""
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT)}


def start(lan: Lan, host: Host, tmp: Path, *flags: str) -> tuple[Spawned, str]:
    """A node ``/o1/h<index>`` on *host* (gossip port 7471 on all its addresses); returns the
    process and its status URL once it printed ``ready``."""
    proc = lan.spawn(
        host,
        sys.executable,
        "-m",
        "mesh",
        "node",
        "--bind",
        "0.0.0.0",
        "--port",
        str(GOSSIP_PORT),
        "--orchestra",
        "o1",
        "--name",
        f"h{host.index}",
        "--state-dir",
        str(tmp / f"state{host.index}"),
        *flags,
        env=env(),
    )
    line = proc.wait_for(lambda text: text.startswith("ready "), timeout=30)
    return proc, dict(part.split("=", 1) for part in line.split()[1:])["status"]


def status(lan: Lan, host: Host, url: str, timeout: float = 10.0) -> dict[str, Any]:
    """The node's ``/api/status``, read from inside its namespace (raises
    ``subprocess.TimeoutExpired`` if it does not answer within *timeout*)."""
    argv = lan.command(host, sys.executable, "-m", "mesh", "status", url, "--json")
    out = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=env(), check=True
    )
    doc: dict[str, Any] = json.loads(out.stdout)
    return doc


def node_id(lan: Lan, host: Host, url: str) -> tuple[str, int]:
    """The node's id and current incarnation."""
    own = status(lan, host, url)["members"][0]
    return str(own["id"]), int(own["incarnation"])


def tool(lan: Lan, host: Host, *args: str, timeout: float = 60.0) -> Any:
    """Run ``tests.security.edge_tools`` on *host*; its JSON answer."""
    argv = lan.command(host, sys.executable, "-m", "tests.security.edge_tools", *args)
    out = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=env(), cwd=ROOT, check=True
    )
    return json.loads(out.stdout.splitlines()[-1])


def tool_spawn(lan: Lan, host: Host, *args: str) -> Spawned:
    """Start ``tests.security.edge_tools`` on *host* (ended with the harness)."""
    return lan.spawn(host, sys.executable, "-m", "tests.security.edge_tools", *args, env=env())


def rss_kib(proc: Spawned) -> int:
    """Resident memory of a spawned process (``ip netns exec`` execs it: same pid)."""
    for line in Path(f"/proc/{proc.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")
