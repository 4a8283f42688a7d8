"""Machines for the roles security tests: real ``stagemesh node`` processes, each in its own
network namespace (``tests/netns.py``), the ``stagemesh`` command run as an operator would on
that machine, and the hostile guest of ``roles_guest.py``; and for a station on loopback
(``tests/livenodes.py``), its flags and its API secret."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import attrs

from tests.harness import wait_until
from tests.livenodes import LiveNode
from tests.netns import Host, Lan, Spawned

GUEST = Path(__file__).with_name("roles_guest.py")
FEDERATION = "venue"


@attrs.define
class Machine:
    """One node process on one namespace host."""

    host: Host
    proc: Spawned
    url: str
    gossip: str
    runtime: Path
    path: str


def start(
    lan: Lan,
    host: Host,
    tmp: Path,
    path: str,
    *flags: str,
    env: dict[str, str] | None = None,
) -> Machine:
    """Start ``stagemesh node`` for *path* on *host* (its own state and runtime folders;
    *env* adds ``STAGEMESH_<FLAG>`` settings)."""
    _, orchestra, name = path.split("/")
    home = tmp / f"host{host.index}-{name}"
    runtime = home / "run"
    env = {**_environ(), "STAGEMESH_RUNTIME_DIR": str(runtime), **(env or {})}
    proc = lan.spawn(
        host,
        sys.executable,
        "-m",
        "mesh",
        "node",
        "--federation",
        FEDERATION,
        "--bind",
        "0.0.0.0",
        "--orchestra",
        orchestra,
        "--name",
        name,
        "--no-mdns",
        "--state-dir",
        str(home / "state"),
        *flags,
        env=env,
    )
    line = proc.wait_for(lambda text: text.startswith("ready "), timeout=60)
    ready = dict(part.split("=", 1) for part in line.split()[1:])
    gossip = ready["gossip"].rpartition(":")[2]
    return Machine(host, proc, ready["status"], f"{host.address}:{gossip}", runtime, path)


def conducting(lan: Lan, machine: Machine, timeout: float = 20.0) -> None:
    """Return once *machine* holds the conductor post in its own view (a lone candidate
    claims it within a second of being ready)."""
    wait_until(
        lambda: status(lan, machine)["conductor"] == machine.path,
        timeout,
        f"{machine.path} conducting",
        every=0.1,
    )


def _environ() -> dict[str, str]:
    import os

    return dict(os.environ)


def status(lan: Lan, machine: Machine) -> dict[str, Any]:
    """The node's ``/api/status``, read on its own machine (``stagemesh status URL --json``)."""
    out = lan.run(
        machine.host, sys.executable, "-m", "mesh", "status", machine.url, "--json"
    ).stdout
    doc: dict[str, Any] = json.loads(out)
    return doc


def stagemesh(lan: Lan, machine: Machine, *argv: str) -> tuple[int, str, str]:
    """Run ``stagemesh ARGV`` on *machine*'s host as its operator (its runtime folder)."""
    done = lan.run(
        machine.host,
        "env",
        f"STAGEMESH_RUNTIME_DIR={machine.runtime}",
        sys.executable,
        "-m",
        "mesh",
        "--log-level",
        "warning",
        *argv,
        check=False,
        timeout=90,
    )
    return done.returncode, done.stdout, done.stderr


def guest(
    lan: Lan,
    host: Host,
    tmp: Path,
    *,
    seed: Machine,
    target: str,
    requests: list[dict[str, Any]],
    key_file: Path | None = None,
    conduct: bool = False,
    name: str = "guest",
    retry_on: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """Run the hostile guest on *host*; return its answers, one per request."""
    spec = {
        "federation": FEDERATION,
        "name": name,
        "seed": seed.gossip,
        "target": target,
        "key_file": str(key_file) if key_file is not None else None,
        "conduct": conduct,
        "retry_on": list(retry_on),
        "state_dir": str(tmp / f"guest-{name}"),
        "requests": requests,
    }
    done = lan.run(host, sys.executable, str(GUEST), json.dumps(spec), check=False, timeout=120)
    answers = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(answers) == len(requests), done.stderr[-3000:]
    return answers


def station_args(tmp: Path) -> list[str]:
    """``stagemesh node`` flags for a station with no roles yet, on loopback only."""
    station = tmp / "station.json"
    station.write_text(json.dumps({"roles": {}}))
    return ["--no-mdns", "--roles", str(station)]


def secret_of(node: LiveNode) -> str:
    """The node's API secret, as ``stagemesh roles`` reads it (its runtime folder); empty if
    the node wrote none."""
    found = sorted((node.tmp / "run").glob(f"api-secret-{node.node_id}"))
    return found[0].read_text().strip() if found else ""
