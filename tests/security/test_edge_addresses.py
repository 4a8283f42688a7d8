"""Issue 18, finding 6: no name from the network is ever resolved, and a slow resolver never
stalls a node.

The node's host has a resolver that never answers (its ``resolv.conf`` names an address on the
test's private network where nothing listens: every lookup of a name waits for its timeouts).
Before, a gossiped member record whose address was a host name made every node look the name
up inside ``sendto`` on its event loop whenever it probed that member: the whole node stalled
(its status API answered after 40 s) and live members were declared dead. Now addresses on the
wire must be IP literals (the record is refused and counted), and a ``--seed`` name is looked up
once, at start, in a worker thread with a time limit.
"""

from __future__ import annotations

import json
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh._keys import write_key_file
from tests.harness import wait_until
from tests.netns import Lan
from tests.security.edge_netns import node_id, start, status, tool

pytestmark = [pytest.mark.netns, pytest.mark.slow]

SLOW_NAME = "stall.stagemesh.test"


@pytest.fixture
def slow_resolver(lan: Lan) -> Iterator[Lan]:
    """Host 0 of *lan* resolves names through a server that never answers (``ip netns exec``
    puts ``/etc/netns/<ns>/resolv.conf`` in place of the host's)."""
    folder = Path("/etc/netns") / lan.hosts[0].netns
    folder.mkdir(parents=True)
    try:
        (folder / "resolv.conf").write_text(
            "nameserver 10.77.0.250\noptions timeout:3 attempts:2\n"
        )
        yield lan
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_host_name_on_the_wire_is_refused_and_never_stalls_a_node(
    slow_resolver: Lan, tmp_path: Path
) -> None:
    lan = slow_resolver
    key = tmp_path / "federation.key"
    write_key_file(key)
    flags = ("--no-mdns", "--key-file", str(key))
    target, other, attacker = lan.hosts
    started = time.monotonic()
    proc, url = start(lan, target, tmp_path, *flags, "--seed", f"{SLOW_NAME}:7471")
    assert time.monotonic() - started < 15  # the seed's lookup did not hold the start up
    _, other_url = start(lan, other, tmp_path, *flags)

    def both_alive() -> bool:
        states = {m["path"]: m["state"] for m in status(lan, target, url, timeout=2)["members"]}
        return states.get("/o1/h0") == states.get("/o1/h1") == "alive"

    wait_until(both_alive, 30, "the two nodes know each other")
    to = "{}:{}".format(*node_id(lan, target, url))
    record = [1, secrets.token_hex(16), "x", "o1", [SLOW_NAME, 7471], 0, {}, 0]
    tool(lan, attacker, "gossip", target.address, "7471", "--key-file", str(key), "--to", to,
         "--update", json.dumps(record))  # fmt: skip
    # For the next 15 s the node answers at once, and keeps its live peer alive.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        asked = time.monotonic()
        assert both_alive(), "the live peer was declared dead"
        assert time.monotonic() - asked < 2, "the node stalled"
        time.sleep(0.2)
    stats = status(lan, target, url)["statistics"]["transport"]["rejected"]
    assert stats.get("malformed", 0) >= 1
    members = status(lan, target, url)["members"]
    assert all(SLOW_NAME not in m["address"] for m in members)
    assert status(lan, other, other_url)["members"][0]["state"] == "alive"
    # The seed's name was given up once its time limit ran out, and said so.
    wait_until(lambda: f"seed {SLOW_NAME} does not resolve" in proc.stderr(), 10, "seed logged")
