"""The OSC bridge of live ``stagemesh node --osc`` processes on loopback, talked to by a real
OSC client (python-osc): time, publish/subscribe across nodes, scheduled delivery at a
federation time on a node with a skewed clock, garbage counted and answered, usage errors."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness import wait_for
from tests.livenodes import LiveNode, start_nodes
from tests.oscapp import OscApp

pytestmark = pytest.mark.slow


async def osc_port(node: LiveNode) -> int:
    doc = await node.status()
    return int(doc["osc"]["address"].rsplit(":", 1)[1])


async def app_for(node: LiveNode) -> OscApp:
    return OscApp("127.0.0.1", await osc_port(node))


async def federation_offset(app: OscApp, samples: int = 20) -> float:
    """federation time - time.monotonic() on this host, from the /stagemesh/time exchange with
    the shortest round trip."""
    best: tuple[float, float] | None = None
    for _ in range(samples):
        sent = time.monotonic()
        got = await app.ask("/stagemesh/time")
        rtt = got.at - sent
        offset = got.args[0] - (sent + got.at) / 2
        if best is None or rtt < best[0]:
            best = (rtt, offset)
    assert best is not None
    return best[1]


async def test_time_query_answers_the_nodes_federation_time(tmp_path: Path) -> None:
    async with start_nodes(tmp_path, ["a"], ["--no-mdns", "--osc", "127.0.0.1:0"]) as [node]:
        app = await app_for(node)
        try:
            assert node.client is not None
            before = (await node.client.get(node.status_url + "/api/clock")).json()
            got = await app.ask("/stagemesh/time")
            after = (await node.client.get(node.status_url + "/api/clock")).json()
        finally:
            app.close()
        t, bound, whole, fraction = got.args
        assert before["federation_time"] <= t <= after["federation_time"]
        assert bound >= 0.0  # a lone node is its own reference: bound 0
        assert whole == int(t) and fraction == pytest.approx(t - whole, abs=1e-6)


async def test_a_publication_from_one_node_reaches_an_osc_subscriber_on_another(
    tmp_path: Path,
) -> None:
    def flags(index: int, name: str) -> list[str]:
        return ["--no-mdns", "--osc", "127.0.0.1:0"]

    async with start_nodes(tmp_path, ["a", "b"], flags) as nodes:
        await wait_for(lambda: all_alive(nodes, 2), 20, "both nodes see each other", every=0.2)
        sender, listener = await app_for(nodes[0]), await app_for(nodes[1])
        try:
            ack = await listener.ask("/stagemesh/subscribe", "notes", reply="/stagemesh/subscribed")
            assert ack.args == ["notes"]
            await sender.send("/stagemesh/publish", "notes", 60, 0.5, "on")
            got = await listener.receive("/stagemesh/msg", timeout=10)
            assert got.args == ["notes", "/o1/a", 60, 0.5, "on"]
            members = await listener.ask("/stagemesh/members")
            assert members.args == [2]
            paths = {(await listener.receive("/stagemesh/member")).args[0] for _ in range(2)}
            assert paths == {"/o1/a", "/o1/b"}
        finally:
            sender.close()
            listener.close()


async def all_alive(nodes: list[LiveNode], count: int) -> bool:
    for node in nodes:
        states = await node.states()
        if sum(s == "alive" for s in states.values()) != count:
            return False
    return True


async def test_a_scheduled_message_arrives_at_its_federation_time_on_a_skewed_node(
    tmp_path: Path,
) -> None:
    def flags(index: int, name: str) -> list[str]:
        out = ["--no-mdns", "--osc", "127.0.0.1:0"]
        if name == "ref":
            return [*out, "--conductor"]
        return [*out, "--clock-skew", "1.7", "--clock-drift", "100"]

    async with start_nodes(tmp_path, ["ref", "skewed"], flags) as nodes:

        async def synced() -> bool:
            doc = await nodes[1].status()
            return doc["conductor"] == "/o1/ref" and doc["clock"]["synced"]

        await wait_for(synced, 30, "the skewed node synced to the conductor", every=0.2)
        ref, app = await app_for(nodes[0]), await app_for(nodes[1])
        try:
            offset = await federation_offset(ref)  # the reference's federation time
            lateness = []
            for i in range(10):
                now = (await app.ask("/stagemesh/time")).args[0]
                due = now + 0.2 + 0.01 * i
                await app.send("/stagemesh/schedule", due, "/note", i)
                got = await app.receive("/note", timeout=5)
                assert got.args == [i]
                lateness.append(got.at + offset - due)
            # Bundles with a federation-time timetag are honoured likewise.
            now = (await app.ask("/stagemesh/time")).args[0]
            due = now + 0.3
            await app.send_raw(bundle_at(due, "/chord"))
            got = await app.receive("/chord", timeout=5)
            lateness.append(got.at + offset - due)
        finally:
            ref.close()
            app.close()
        # Timed by the node's clock, which follows the federation's despite its 1.7 s skew (a
        # message timed by the node's own clock would be 1.7 s off); never early. The figures
        # (p50/p99) come from bench/osc.py: this upper bound only allows for a loaded machine
        # (50 ms was seen exceeded at load averages near 10).
        assert all(-0.005 < late < 0.5 for late in lateness), lateness


def bundle_at(t: float, address: str) -> bytes:
    from pythonosc.osc_bundle_builder import OscBundleBuilder
    from pythonosc.osc_message_builder import OscMessageBuilder
    from pythonosc.parsing import ntp

    from mesh._osc_core import federation_timetag

    builder = OscBundleBuilder(federation_timetag(t) / 2**32 - ntp._NTP_DELTA)  # type: ignore[arg-type]
    builder.add_content(OscMessageBuilder(address).build())
    return builder.build().dgram


async def test_garbage_datagrams_are_counted_and_answered_and_the_node_carries_on(
    tmp_path: Path,
) -> None:
    async with start_nodes(tmp_path, ["a"], ["--no-mdns", "--osc", "127.0.0.1:0"]) as [node]:
        app = await app_for(node)
        try:
            for i in range(30):
                await app.send_raw(b"\x00garbage" * (i + 1))
            await app.send("/no/such/address", 1)
            await app.send("/stagemesh/subscribe", 42)
            reasons = [(await app.receive("/stagemesh/error")).args[0] for _ in range(32)]
            assert sum("not an OSC message" in r for r in reasons) == 30
            assert any("unknown address '/no/such/address'" in r for r in reasons)
            assert any("usage: /stagemesh/subscribe" in r for r in reasons)
            doc = await node.status()
            assert doc["osc"]["errors"] == {
                "malformed": 30,
                "unknown address": 1,
                "bad arguments": 1,
            }
            assert len((await app.ask("/stagemesh/time")).args) == 4  # still serving
            assert node.process.returncode is None
        finally:
            app.close()


async def test_the_conductor_sets_the_tempo_over_osc_and_every_app_hears_it(
    tmp_path: Path,
) -> None:
    def flags(index: int, name: str) -> list[str]:
        extra = ["--conductor"] if name == "c" else []
        return ["--no-mdns", "--osc", "127.0.0.1:0", *extra]

    async with start_nodes(tmp_path, ["c", "p"], flags) as nodes:

        async def elected() -> bool:
            return all([(await n.status())["conductor"] == "/o1/c" for n in nodes])

        await wait_for(elected, 30, "the conductor elected", every=0.2)
        conductor, player = await app_for(nodes[0]), await app_for(nodes[1])
        try:
            assert (await player.ask("/stagemesh/tempo")).args == []
            await conductor.send("/stagemesh/tempo/start", 150.0, 3)
            pushed = await player.receive("/stagemesh/tempo", timeout=10)
            assert pushed.args[:2] == [150.0, 3]
            refused = await player.ask("/stagemesh/tempo/set", 90.0, reply="/stagemesh/error")
            assert "conductor" in refused.args[0]
            assert (await player.ask("/stagemesh/conductor")).args == ["/o1/c"]
            doc = await nodes[1].status()
            assert doc["osc"]["errors"] == {"refused": 1}
        finally:
            conductor.close()
            player.close()


def test_a_taken_osc_port_fails_the_node_with_one_line(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                *(sys.executable, "-m", "mesh", "node", "--bind", "127.0.0.1", "--port", "0"),
                *("--no-mdns", "--no-broadcast", "--state-dir", str(tmp_path / "s")),
                *("--osc", f"127.0.0.1:{port}"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "STAGEMESH_RUNTIME_DIR": str(tmp_path / "run")},
        )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert f"cannot open the OSC port 127.0.0.1:{port}" in last, result.stderr


def test_importing_mesh_loads_neither_python_osc_nor_link() -> None:
    code = (
        "import sys, mesh, mesh.__main__; mesh.__main__.node_extensions(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pythonosc', 'link')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"


async def test_member_and_conductor_changes_are_pushed_to_the_apps_watching_them(
    tmp_path: Path,
) -> None:
    def flags(index: int, name: str) -> list[str]:
        out = ["--no-mdns", "--osc", "127.0.0.1:0"]
        return [*out, "--conductor"] if name == "b" else out

    async with start_nodes(tmp_path, ["a", "b"], flags) as nodes:

        async def b_conducts() -> bool:
            return (await nodes[0].status())["conductor"] == "/o1/b"

        await wait_for(lambda: all_alive(nodes, 2), 20, "both nodes see each other", every=0.2)
        await wait_for(b_conducts, 20, "a sees b conduct", every=0.2)
        app = await app_for(nodes[0])
        try:
            assert (await app.ask("/stagemesh/conductor")).args == ["/o1/b"]
            assert (await app.ask("/stagemesh/members")).args == [2]
            nodes[1].terminate()  # b leaves: its departure and the conductor's are pushed
            while True:
                member = await app.receive("/stagemesh/member", timeout=30)
                if member.args[0] == "/o1/b" and member.args[1] in ("left", "dead"):
                    break
            pushed = await app.receive("/stagemesh/conductor", timeout=30)
            assert pushed.args != ["/o1/b"]
        finally:
            app.close()
