"""Discovery between "hosts": network namespaces on a private bridge (tests/netns.py, root).

A discovery-only program (tests/discovery_probe.py) runs in each namespace and prints its hints
as JSON lines; every host must hear of every other one, by broadcast beacons and by mDNS, at
the address it has on the bridge. Nothing here touches the machine's real interfaces.
"""

from __future__ import annotations

import json
import secrets
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.netns import Lan, NetnsError, Spawned, list_namespaces

pytestmark = pytest.mark.netns

PROBE = str(Path(__file__).with_name("discovery_probe.py"))


def _start(lan: Lan, index: int, federation: str, *extra: str) -> tuple[Spawned, str]:
    node_id = secrets.token_hex(16)
    proc = lan.spawn(
        lan.hosts[index],
        sys.executable,
        PROBE,
        "--federation",
        federation,
        "--name",
        f"h{index}",
        "--orchestra",
        "lab",
        "--port",
        str(7471 + index),
        "--node-id",
        node_id,
        *extra,
    )
    proc.wait_for(lambda line: '"ready"' in line, timeout=20)
    return proc, node_id


def _hint(line: str) -> dict[str, Any] | None:
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) and obj.get("event") == "hint" else None


def _wait_for_hints(proc: Spawned, node_ids: set[str], timeout: float) -> dict[str, dict[str, Any]]:
    """Collect hints from *proc* until every id in *node_ids* was hinted (already-read lines
    count too); return the first hint per id."""
    seen: dict[str, dict[str, Any]] = {}
    for line in proc.lines:
        hint = _hint(line)
        if hint and hint["node_id"] in node_ids:
            seen.setdefault(hint["node_id"], hint)

    def wanted(line: str) -> bool:
        hint = _hint(line)
        if hint and hint["node_id"] in node_ids:
            seen.setdefault(hint["node_id"], hint)
        return set(seen) == node_ids

    if set(seen) != node_ids:
        proc.wait_for(wanted, timeout)
    return seen


@pytest.mark.parametrize(
    ("source", "options"),
    [("beacon", ["--no-mdns", "--bind", "{address}"]), ("mdns", ["--no-broadcast"])],
    ids=["broadcast", "mdns"],
)
def test_hosts_discover_each_other(lan: Lan, source: str, options: list[str]) -> None:
    federation = f"net-{secrets.token_hex(3)}"
    started = [
        _start(lan, i, federation, *(o.format(address=h.address) for o in options))
        for i, h in enumerate(lan.hosts)
    ]
    ids = [node_id for _, node_id in started]
    for i, (proc, own) in enumerate(started):
        others = set(ids) - {own}
        hints = _wait_for_hints(proc, others, timeout=15)
        for j, other in enumerate(ids):
            if other != own:
                assert hints[other]["source"] == source
                assert hints[other]["address"] == [lan.hosts[j].address, 7471 + j], (i, j)
                assert hints[other]["name"] == f"h{j}"
                assert hints[other]["orchestra"] == "lab"
        # no host is ever pointed at a loopback address of another host
        hinted = [h for h in map(_hint, proc.lines) if h is not None]
        assert hinted and not [h for h in hinted if h["address"][0].startswith("127.")]


def test_an_unplugged_host_hears_nothing_until_plugged_back(lan: Lan) -> None:
    federation = f"net-{secrets.token_hex(3)}"
    options = ["--no-mdns"]
    (_, a), (p1, b) = _start(lan, 0, federation, *options), _start(lan, 1, federation, *options)
    p2, _ = _start(lan, 2, federation, *options)
    _wait_for_hints(p2, {a, b}, timeout=15)

    lan.link_down(lan.hosts[2])
    _, newcomer = _start(lan, 0, federation, *options)  # a second node on host 0
    _wait_for_hints(p1, {newcomer}, timeout=15)  # it is beaconing: host 1 hears it
    with pytest.raises(TimeoutError):
        _wait_for_hints(p2, {newcomer}, timeout=2.5)  # but host 2 is unplugged

    lan.link_up(lan.hosts[2])
    _wait_for_hints(p2, {newcomer}, timeout=10)


def test_the_harness_cleans_up_even_when_a_test_fails() -> None:
    with pytest.raises(RuntimeError, match="boom"), Lan(2) as made:
        names = made.namespaces
        assert set(names) <= set(list_namespaces())
        sleeper = made.spawn(made.hosts[0], "sleep", "60")
        assert made.run(made.hosts[1], "ip", "-4", "-o", "addr", "show", "eth0").stdout.count(
            made.hosts[1].address
        )
        raise RuntimeError("boom")
    assert not set(names) & set(list_namespaces())
    assert sleeper.process.poll() is not None
    with pytest.raises(NetnsError, match="exited"):
        sleeper.wait_for(lambda line: True, timeout=1)
