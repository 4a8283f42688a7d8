"""A laptop-orchestra metronome on one machine: four players, one conductor, one beat.

Four nodes start on loopback (nothing leaves this machine) in two orchestras, as two sites of a
concert would. The conductor is elected among the two ``--conductor`` candidates; it publishes
the tempo and the federation time of the first downbeat, and every player computes its beats from
the shared federation clock, so all of them tick together whatever their local clocks say
(each player's clock is skewed and drifting here on purpose).

    python3 examples/concert/metronome.py [--beats 8]
"""

from __future__ import annotations

import argparse
import math
import tempfile
from contextlib import AsyncExitStack
from pathlib import Path

import trio

import mesh

PLAYERS = [("cmu", "rbd", True, 1.5), ("cmu", "alice", False, -0.7),
           ("colorado", "bob", True, -1.9), ("colorado", "carol", False, 0.4)]  # fmt: skip


def config(tmp: Path, orchestra: str, name: str, conductor: bool, skew: float,
           seed: tuple[str, int] | None) -> mesh.NodeConfig:  # fmt: skip
    return mesh.NodeConfig(
        federation="metronome",
        orchestra=orchestra,
        name=name,
        bind="127.0.0.1",
        port=0,
        port_is_default=False,
        mdns=False,
        broadcast=False,
        seeds=(seed,) if seed else (),
        conductor=conductor,
        clock_skew=skew,
        clock_drift=50.0 if skew > 0 else -50.0,
        profile="loopback",
        state_dir=tmp / "state",
        runtime_dir=tmp / "run",
    )


async def player(
    node: mesh.Node,
    beats: int,
    ticks: list[tuple[str, int, float]],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Wait for the tempo, then tick on every beat of federation time."""
    async with node.subscribe("tempo") as tempo:
        task_status.started()
        message = await tempo.receive()
    payload = message.payload
    assert isinstance(payload, dict)
    bpm, start = payload["bpm"], payload["start"]
    assert isinstance(bpm, int | float) and isinstance(start, int | float)
    period = 60.0 / bpm
    for beat in range(beats):
        due = start + beat * period
        await trio.sleep(max(0.0, due - node.now()))  # federation time drives the schedule
        ticks.append((node.path, beat, node.now() - due))


async def main(beats: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with AsyncExitStack() as stack:
            nodes: list[mesh.Node] = []
            for orchestra, name, candidate, skew in PLAYERS:
                seed = nodes[0].address if nodes else None
                cfg = config(Path(tmp), orchestra, name, candidate, skew, seed)
                nodes.append(await stack.enter_async_context(mesh.open_node(cfg)))
            with trio.fail_after(20):
                # The clock's synced flag has no event of its own: poll it (and the election).
                while not all(n.conductor and n.clock.synced for n in nodes):  # noqa: ASYNC110
                    await trio.sleep(0.05)
            conductor = next(n for n in nodes if n.conductor == n.path)
            print(f"conductor: {conductor.path}; supernodes: "
                  f"{nodes[0].supernode('cmu')}, {nodes[0].supernode('colorado')}")  # fmt: skip
            ticks: list[tuple[str, int, float]] = []
            async with trio.open_nursery() as nursery:
                for node in nodes:
                    await nursery.start(player, node, beats, ticks)  # subscribed when it returns
                start = math.ceil(conductor.now()) + 1.0
                conductor.publish("tempo", {"bpm": 240, "start": start})
            for beat in range(beats):
                late = [t for p, b, t in ticks if b == beat]
                spread = (max(late) - min(late)) * 1000
                print(f"beat {beat}: {len(late)} players, spread {spread:.2f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--beats", type=int, default=8)
    trio.run(main, parser.parse_args().beats)
