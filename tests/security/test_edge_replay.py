"""Issue 18, finding 11 (and issue 16, item 10): replayed datagrams are refused and counted.

An attacker on the venue's network captures real signed datagrams on the wire (a packet socket
on one host's cable, in the bridge) and sends them again from another host. Before, replay
protection was per receiver: a datagram from bob to carol was accepted when replayed to alice,
and a receiver that restarted accepted captures for 300 s. Now every datagram is bound to its
receiver (its id, and its incarnation, which rises at every start above anything the node
announced), and the per-sender window refuses a replay to the same running receiver.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mesh._keys import write_key_file
from tests.harness import wait_until
from tests.netns import Host, Lan, Spawned
from tests.security.edge_netns import (
    GOSSIP_PORT,
    env,
    start,
    status,
    tool,
)

pytestmark = [pytest.mark.netns, pytest.mark.slow]


def capture(lan: Lan, cable: Host, src: Host, dst: Host, count: int = 4) -> list[str]:
    """Datagrams from *src* to *dst*'s gossip port, seen on *cable*'s side of the bridge."""
    argv = ["ip", "netns", "exec", lan.bridge_netns, sys.executable, "-m"]
    argv += ["tests.security.edge_tools", "sniff", cable.port, "--src", src.address]
    argv += ["--dst", dst.address, "--count", str(count), "--seconds", "20"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env(), check=True)
    found: list[str] = json.loads(out.stdout)
    assert len(found) == count, f"captured {len(found)} datagrams"
    return found


def refused(lan: Lan, host: Host, url: str, reason: str) -> int:
    return int(status(lan, host, url)["statistics"]["transport"]["rejected"].get(reason, 0))


def replay_refused(
    lan: Lan, attacker: Host, target: Host, url: str, datagrams: list[str], reason: str
) -> None:
    """Send *datagrams* from *attacker* to *target*; each must be refused for *reason*."""
    before = refused(lan, target, url, reason)
    tool(lan, attacker, "send", target.address, str(GOSSIP_PORT), *datagrams)
    wait_until(
        lambda: refused(lan, target, url, reason) >= before + len(datagrams),
        10,
        f"every replay refused ({reason})",
    )


def three_nodes(lan: Lan, tmp: Path) -> list[tuple[Host, str, Spawned]]:
    """Keyed nodes on hosts 0, 1 and 2 (alice, bob, carol), once they all know each other."""
    key = tmp / "federation.key"
    write_key_file(key)
    nodes = []
    for host in lan.hosts[:3]:
        proc, url = start(lan, host, tmp, "--no-mdns", "--key-file", str(key))
        nodes.append((host, url, proc))
    paths = {f"/o1/h{h.index}" for h in lan.hosts[:3]}

    def converged() -> bool:
        for host, url, _ in nodes:
            states = {m["path"]: m["state"] for m in status(lan, host, url)["members"]}
            if any(states.get(p) != "alive" for p in paths):
                return False
        return True

    wait_until(converged, 40, "membership across hosts")
    return nodes


def test_a_datagram_captured_on_its_way_to_one_node_is_refused_by_another(tmp_path: Path) -> None:
    with Lan(4) as lan:
        (alice, alice_url, _), (bob, _, _), (carol, _, _) = three_nodes(lan, tmp_path)
        attacker = lan.hosts[3]
        captured = capture(lan, bob, bob, carol)
        replay_refused(lan, attacker, alice, alice_url, captured, "misdirected")


def test_a_capture_replayed_to_its_receiver_is_refused_live_and_after_a_restart(
    tmp_path: Path,
) -> None:
    with Lan(4) as lan:
        (alice, alice_url, alice_proc), (bob, bob_url, _), (carol, carol_url, _) = three_nodes(
            lan, tmp_path
        )
        attacker = lan.hosts[3]
        captured = capture(lan, bob, bob, alice)
        # Issue 16, item 10: replayed to the running receiver, refused and counted.
        replay_refused(lan, attacker, alice, alice_url, captured, "replayed")
        # The receiver restarts (a new process: its replay window starts empty).
        old_incarnation = status(lan, alice, alice_url)["members"][0]["incarnation"]
        alice_proc.stop()
        key = tmp_path / "federation.key"
        _, alice_url = start(lan, alice, tmp_path, "--no-mdns", "--key-file", str(key))
        new_incarnation = status(lan, alice, alice_url)["members"][0]["incarnation"]
        assert new_incarnation > old_incarnation

        def settled() -> bool:  # the others know alice's new run: their traffic is bound to it
            for host, url in ((bob, bob_url), (carol, carol_url)):
                views = [m for m in status(lan, host, url)["members"] if m["path"] == "/o1/h0"]
                if not views or views[-1]["incarnation"] < new_incarnation:
                    return False
            return True

        wait_until(settled, 20, "alice's restart known")
        replay_refused(lan, attacker, alice, alice_url, captured, "stale receiver")
