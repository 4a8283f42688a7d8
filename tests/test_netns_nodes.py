"""Multi-host tests: one real ``stagemesh node`` per network namespace on a private bridge.

Each node binds ``0.0.0.0`` inside its own namespace (so discovery runs on that namespace's
interfaces only) and is watched through ``stagemesh status URL --json`` run in its namespace.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.harness import wait_until
from tests.netns import Host, Lan, Spawned

pytestmark = [pytest.mark.netns, pytest.mark.slow]


def start(lan: Lan, host: Host, tmp: Path, *flags: str) -> tuple[Spawned, str]:
    proc = lan.spawn(
        host,
        sys.executable,
        "-m",
        "mesh",
        "node",
        "--bind",
        "0.0.0.0",
        "--orchestra",
        "o1",
        "--name",
        f"h{host.index}",
        "--state-dir",
        str(tmp / f"state{host.index}"),
        *flags,
    )
    line = proc.wait_for(lambda text: text.startswith("ready "), timeout=30)
    url = dict(part.split("=", 1) for part in line.split()[1:])["status"]
    return proc, url


def states(lan: Lan, host: Host, url: str) -> dict[str, str]:
    out = lan.run(host, sys.executable, "-m", "mesh", "status", url, "--json").stdout
    return {m["path"]: m["state"] for m in json.loads(out)["members"]}


def views(lan: Lan, nodes: list[tuple[Host, str]]) -> list[dict[str, str]]:
    return [states(lan, host, url) for host, url in nodes]


def everyone_alive(lan: Lan, nodes: list[tuple[Host, str]], paths: set[str]) -> bool:
    return all(all(v.get(p) == "alive" for p in paths) for v in views(lan, nodes))


@pytest.mark.parametrize("discovery", [["--no-mdns"], ["--no-broadcast"]], ids=["beacon", "mdns"])
def test_three_hosts_discover_each_other(lan: Lan, tmp_path: Path, discovery: list[str]) -> None:
    nodes = []
    for host in lan.hosts:
        _, url = start(lan, host, tmp_path, *discovery)
        nodes.append((host, url))
    paths = {f"/o1/h{h.index}" for h in lan.hosts}
    wait_until(lambda: everyone_alive(lan, nodes, paths), 40, "membership across hosts")
    # Each saw the others at their namespace addresses, not at loopback.
    doc = json.loads(
        lan.run(lan.hosts[0], sys.executable, "-m", "mesh", "status", nodes[0][1], "--json").stdout
    )
    addresses = {m["path"]: m["address"].split(":")[0] for m in doc["members"]}
    assert addresses["/o1/h1"] == lan.hosts[1].address


def test_unplugged_host_is_declared_dead_and_rejoins(lan: Lan, tmp_path: Path) -> None:
    nodes = [(host, start(lan, host, tmp_path, "--no-mdns")[1]) for host in lan.hosts]
    paths = {f"/o1/h{h.index}" for h in lan.hosts}
    wait_until(lambda: everyone_alive(lan, nodes, paths), 40, "membership across hosts")
    cut = lan.hosts[2]
    lan.link_down(cut)
    rest = nodes[:2]
    wait_until(
        lambda: all(v.get("/o1/h2") == "dead" for v in views(lan, rest)),
        30,
        "the unplugged host declared dead",
    )
    lan.link_up(cut)
    wait_until(lambda: everyone_alive(lan, nodes, paths), 40, "the host rejoined everywhere")
