"""Real ``stagemesh node`` processes on loopback: discovery, failure detection, leave,
restart, keys and hostile input."""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path

import pytest
import trio

from mesh._keys import write_key_file
from tests.harness import wait_for
from tests.livenodes import LiveNode, start_nodes

NAMES = ["n1", "n2", "n3", "n4", "n5"]
pytestmark = pytest.mark.slow


async def everyone_sees(nodes: list[LiveNode], paths: set[str], state: str = "alive") -> bool:
    for node in nodes:
        states = await node.states()
        if any(states.get(p) != state for p in paths):
            return False
    return True


def all_paths(nodes: list[LiveNode]) -> set[str]:
    return {f"/o1/{n.name}" for n in nodes}


@pytest.mark.parametrize(
    "discovery",
    [
        pytest.param(["--no-mdns"], id="beacons-only"),
        pytest.param(["--no-broadcast"], id="mdns-only"),
    ],
)
async def test_five_nodes_find_each_other(tmp_path: Path, discovery: list[str]) -> None:
    async with start_nodes(tmp_path, NAMES, discovery) as nodes:
        took = await wait_for(
            lambda: everyone_sees(nodes, all_paths(nodes)), 20, what="full membership"
        )
        assert took < 20


async def test_five_nodes_find_each_other_by_seeds_alone(tmp_path: Path) -> None:
    # n1 starts first; the others know only its address.
    async with start_nodes(tmp_path, ["n1"], ["--no-mdns", "--no-broadcast"]) as first:
        seed = f"127.0.0.1:{first[0].gossip[1]}"
        args = ["--no-mdns", "--no-broadcast", "--seed", seed]
        async with start_nodes(tmp_path, NAMES[1:], args) as rest:
            nodes = first + rest
            await wait_for(
                lambda: everyone_sees(nodes, all_paths(nodes)), 20, what="membership via seeds"
            )


async def test_kill_9_is_agreed_dead_and_sigterm_shows_left(tmp_path: Path) -> None:
    async with start_nodes(tmp_path, NAMES, ["--no-mdns"]) as nodes:
        await wait_for(lambda: everyone_sees(nodes, all_paths(nodes)), 20, what="membership")
        victim, rest = nodes[0], nodes[1:]
        victim.kill()
        took = await wait_for(
            lambda: everyone_sees(rest, {"/o1/n1"}, "dead"), 15, every=0.02, what="dead"
        )
        # The crash target (DESIGN.md: p99 <= 4 s); loopback profile, plus polling slack.
        assert took <= 5.0, took
        leaver, rest = rest[0], rest[1:]
        leaver.terminate()
        took = await wait_for(
            lambda: everyone_sees(rest, {"/o1/n2"}, "left"), 5, every=0.02, what="left"
        )
        assert took <= 1.0, took
        assert await leaver.process.wait() == 0


async def test_restarted_node_rejoins_with_higher_incarnation(tmp_path: Path) -> None:
    async with start_nodes(tmp_path, NAMES[:3], ["--no-mdns"]) as nodes:
        await wait_for(lambda: everyone_sees(nodes, all_paths(nodes)), 20, what="membership")
        before = {m["path"]: m for m in (await nodes[1].status())["members"]}["/o1/n1"]
        nodes[0].kill()
        await nodes[0].process.wait()
        await wait_for(lambda: everyone_sees(nodes[1:], {"/o1/n1"}, "dead"), 15, what="dead")
        async with start_nodes(
            tmp_path, ["n1"], ["--no-mdns"], beacon_port=nodes[0].beacon_port
        ) as again:
            assert again[0].node_id == nodes[0].node_id  # same identity from the state dir
            await wait_for(
                lambda: everyone_sees(nodes[1:], {"/o1/n1"}), 15, what="rejoin after restart"
            )
            after = {m["path"]: m for m in (await nodes[1].status())["members"]}["/o1/n1"]
            assert after["id"] == before["id"]
            assert after["incarnation"] > before["incarnation"]


async def test_second_process_with_same_path_is_refused(tmp_path: Path) -> None:
    async with start_nodes(tmp_path, ["n1"], ["--no-mdns", "--no-broadcast"]):
        process = await trio.run_process(
            [
                "python3",
                "-m",
                "mesh",
                "node",
                "--bind",
                "127.0.0.1",
                "--port",
                "0",
                "--orchestra",
                "o1",
                "--name",
                "n1",
                "--no-mdns",
                "--no-broadcast",
                "--state-dir",
                str(tmp_path / "state"),
            ],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        assert process.returncode == 1
        message = process.stderr.decode()
        assert "/o1/n1" in message and "already" in message, message


async def test_wrong_key_is_never_admitted(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.key", tmp_path / "bad.key"
    write_key_file(good)
    write_key_file(bad)

    def args(index: int, name: str) -> list[str]:
        return ["--no-mdns", "--key-file", str(bad if name == "intruder" else good)]

    async with start_nodes(tmp_path, ["n1", "n2", "intruder"], args) as nodes:
        keyed, intruder = nodes[:2], nodes[2]
        await wait_for(lambda: everyone_sees(keyed, {"/o1/n1", "/o1/n2"}), 20, what="keyed pair")

        async def rejected() -> bool:
            stats = (await keyed[0].status())["statistics"]
            transport = stats["transport"]["rejected"].get("bad tag", 0)
            beacons = stats["discovery"]["beacons"]["rejected"].get("bad tag", 0)
            return bool(transport + beacons)

        await wait_for(rejected, 10, what="intruder datagrams counted as rejected")
        for node in keyed:
            assert "/o1/intruder" not in await node.states()
        assert set(await intruder.states()) == {"/o1/intruder"}


async def test_garbage_datagrams_leave_the_node_serving(tmp_path: Path) -> None:
    async with start_nodes(tmp_path, NAMES[:3], ["--no-mdns"]) as nodes:
        await wait_for(lambda: everyone_sees(nodes, all_paths(nodes)), 20, what="membership")
        target = nodes[0].gossip
        rng = random.Random(7)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i in range(3000):
                size = rng.choice([0, 1, 3, 4, 5, 20, 200, 1199, 1200, 1500])
                data = bytes(rng.getrandbits(8) for _ in range(size))
                if i % 3 == 0:  # right magic and version: exercise the decoder, not the filter
                    data = b"SM\x01\x00" + data
                s.sendto(data, target)
        stats = (await nodes[0].status())["statistics"]["transport"]
        assert sum(stats["rejected"].values()) > 0
        # Still serving and still correct: membership intact, a newcomer gets in.
        assert await everyone_sees(nodes, all_paths(nodes))
        async with start_nodes(
            tmp_path, ["late"], ["--no-mdns"], beacon_port=nodes[0].beacon_port
        ) as late:
            everyone = nodes + late
            await wait_for(
                lambda: everyone_sees(everyone, all_paths(everyone)), 20, what="late join"
            )
        assert nodes[0].process.returncode is None
        os.kill(nodes[0].process.pid, 0)
