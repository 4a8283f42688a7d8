"""Issue 18, finding 9: TCP exhaustion of a node's gossip port.

Before: 64 connection slots per node, first come first served, no per-source limit, so 1,000
idle connections from one host made every request time out; and frames were read whole (up to
16 MiB) before their signature was checked, so 64 connections with 16 MiB frames took a keyed
node from 48 to 800 MiB. Now a source gets a few slots (the rest are closed at once), a
connection must start its frame within a second, a frame is at most 1 MiB, and its (signed)
prefix is checked before a byte of it is read.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mesh._keys import write_key_file
from tests.harness import wait_until
from tests.netns import Lan
from tests.security.edge_netns import (
    node_id,
    rss_kib,
    start,
    status,
    tool,
    tool_spawn,
)

pytestmark = [pytest.mark.netns, pytest.mark.slow]


def test_idle_connections_and_oversized_frames_from_one_host_starve_nobody(
    lan: Lan, tmp_path: Path
) -> None:
    key = tmp_path / "federation.key"
    write_key_file(key)
    target, other, attacker = lan.hosts
    node, url = start(lan, target, tmp_path, "--no-mdns", "--key-file", str(key))
    to = "{}:{}".format(*node_id(lan, target, url))

    def ask() -> dict[str, object]:
        args = ("request", target.address, "7471", "--key-file", str(key), "--to", to)
        answer: dict[str, object] = tool(lan, other, *args, "--path", "/o1/h0")
        return answer

    assert ask()["ok"]  # a request from another host is served
    holder = tool_spawn(lan, attacker, "hold", target.address, "7471", "--count", "1000",
                        "--seconds", "60")  # fmt: skip
    holder.wait_for(lambda line: line.startswith("holding"), timeout=30)
    for _ in range(5):  # while one host holds (and keeps reopening) 1000 idle connections
        answer = ask()
        assert answer["ok"] and float(answer["seconds"]) < 2.0, answer  # type: ignore[arg-type]
        time.sleep(0.3)
    holder.stop()
    rejected = status(lan, target, url)["statistics"]["transport"]["rejected"]
    assert rejected.get("source stream limit", 0) >= 900
    assert rejected.get("handshake timeout", 0) >= 1

    # 64 connections announcing 4 MiB frames (above the limit, or with a made-up tag), each
    # then streaming 4 MiB: nothing of them is buffered.
    wait_until(lambda: rss_kib(node) > 0, 5, "memory readable")
    before = rss_kib(node)
    sent = tool(lan, attacker, "frames", target.address, "7471", "--count", "64",
                "--size", str(4 << 20))  # fmt: skip
    grown = rss_kib(node) - before
    assert grown < 20 * 1024, f"the node grew by {grown} KiB after {sent}"
    rejected = status(lan, target, url)["statistics"]["transport"]["rejected"]
    assert rejected.get("not stagemesh", 0) + rejected.get("bad tag", 0) >= 8
    assert ask()["ok"]
