"""Elections and the clock across 3 hosts in network namespaces, with one host cut off and
healed: two conductors may exist only while it is cut off, one within the bound after."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.harness import wait_until
from tests.netns import Host, Lan
from tests.test_netns_nodes import start

pytestmark = [pytest.mark.netns, pytest.mark.slow]


def status(lan: Lan, host: Host, url: str) -> dict[str, Any]:
    out = lan.run(host, sys.executable, "-m", "mesh", "status", url, "--json").stdout
    doc: dict[str, Any] = json.loads(out)
    return doc


def test_cut_off_host_conducts_alone_then_one_conductor_after_heal(
    lan: Lan, tmp_path: Path
) -> None:
    nodes = [
        (host, start(lan, host, tmp_path, "--no-mdns", "--conductor")[1]) for host in lan.hosts
    ]

    def conductors() -> list[str | None]:
        return [status(lan, host, url)["conductor"] for host, url in nodes]

    def one_conductor() -> bool:
        seen = conductors()
        return len(set(seen)) == 1 and seen[0] is not None

    wait_until(one_conductor, 40, "one conductor on all hosts")
    first = conductors()[0]
    cut_host, cut_url = next((h, u) for h, u in nodes if f"/o1/h{h.index}" != first)
    lan.link_down(cut_host)
    # Cut off, the lone host sees the others dead and conducts its own part: allowed while cut.
    wait_until(
        lambda: status(lan, cut_host, cut_url)["conductor"] == f"/o1/h{cut_host.index}",
        30,
        "the cut-off host conducting alone",
    )
    rest = [(h, u) for h, u in nodes if h is not cut_host]
    assert {status(lan, h, u)["conductor"] for h, u in rest} == {first}
    lan.link_up(cut_host)
    healed = time.monotonic()
    wait_until(one_conductor, 40, "one conductor after the heal")
    took = time.monotonic() - healed
    assert conductors()[0] == first  # the longer tenure won
    # Clocks agree again: every follower synced within its bound.
    for host, url in nodes:
        clock = status(lan, host, url)["clock"]
        assert clock["synced"] or clock["is_reference"], clock
    print(f"one conductor {took:.1f} s after the heal")
