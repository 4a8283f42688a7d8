"""A laptop-orchestra metronome on one machine: four players, one conductor, one beat.

Four nodes start on loopback (nothing leaves this machine) in two orchestras, as two sites of a
concert would. The conductor is elected among the two ``--conductor`` candidates; it publishes
the tempo and the federation time of the first downbeat, and every player computes its beats from
the shared federation clock, so all of them tick together whatever their local clocks say
(each player's clock is skewed and drifting here on purpose).

The onsets are measured on one clock all players share on this host (its monotonic clock), not
on each player's own: the spread printed for a beat is how far apart the players really ticked,
and the period is the time between two beats as the host saw it (250 ms at 240 bpm). A busy
machine wakes a player late now and then (all four alike: they share this process); how late,
on federation time, is printed too, and the clock's period is the time between the two
instants federation time reached the two beats, as the host saw it: that is the tempo, however
late a player woke.

With ``--registry`` the players also join a registry (run here, on loopback) and halfway through
an organiser resets it: federation time belongs to the federation, so the tempo does not change
and the players stay together (the registry learns the federation's time back).

    python3 examples/concert/metronome.py [--beats 8] [--registry]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import trio

import mesh
from registry_bridge import RegistryBridge, RegistryStore, create_app, serve_registry

PLAYERS = [("cmu", "rbd", True, 1.5), ("cmu", "alice", False, -0.7),
           ("colorado", "bob", True, -1.9), ("colorado", "carol", False, 0.4)]  # fmt: skip
BPM = 240


def config(tmp: Path, orchestra: str, name: str, conductor: bool, skew: float,
           seed: tuple[str, int] | None, registry: str | None) -> mesh.NodeConfig:  # fmt: skip
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
        registry=registry,
        extensions=(RegistryBridge(registry, interval=0.5, max_backoff=2.0),) if registry else (),
    )


@asynccontextmanager
async def local_registry(tmp: Path) -> AsyncIterator[tuple[str, RegistryStore]]:
    """A registry on loopback (a free port), its database in *tmp*."""
    store = RegistryStore(tmp / "registry.db")
    stop = trio.Event()
    try:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(
                lambda task_status: serve_registry(
                    create_app(store, None),
                    "127.0.0.1:0",
                    shutdown_trigger=stop.wait,
                    task_status=task_status,
                )
            )
            try:
                yield url, store
            finally:
                stop.set()
    finally:
        store.close()


async def player(
    node: mesh.Node,
    beats: int,
    onsets: dict[str, list[tuple[float, float]]],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Wait for the tempo, then tick on every beat of federation time; note each onset on the
    host's monotonic clock (the one reference all players on this host share), with how late
    on federation time the player woke for it."""
    async with node.subscribe("tempo") as tempo:
        task_status.started()
        message = await tempo.receive()
    payload = message.payload
    assert isinstance(payload, dict)
    bpm, start = payload["bpm"], payload["start"]
    assert isinstance(bpm, int | float) and isinstance(start, int | float)
    period = 60.0 / bpm
    mine = onsets.setdefault(node.path, [])
    for beat in range(beats):
        due = start + beat * period
        await trio.sleep(max(0.0, due - node.now()))  # federation time drives the schedule
        onset = time.monotonic()
        mine.append((onset, node.now() - due))


async def reset_halfway(store: RegistryStore, at: float, node: mesh.Node) -> None:
    """An organiser resets the registry's federation at federation time *at*."""
    await trio.sleep(max(0.0, at - node.now()))
    await trio.to_thread.run_sync(store.reset_federation, "metronome")
    print(f"the registry was reset at federation time {node.now():.3f}")


async def main(beats: int, with_registry: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with AsyncExitStack() as stack:
            url: str | None = None
            store: RegistryStore | None = None
            if with_registry:
                url, store = await stack.enter_async_context(local_registry(Path(tmp)))
            nodes: list[mesh.Node] = []
            for orchestra, name, candidate, skew in PLAYERS:
                seed = nodes[0].address if nodes else None
                cfg = config(Path(tmp), orchestra, name, candidate, skew, seed, url)
                nodes.append(await stack.enter_async_context(mesh.open_node(cfg)))
            with trio.fail_after(30):
                # The clock's synced flag has no event of its own: poll it (and the election).
                while not all(n.conductor and n.clock.synced for n in nodes):  # noqa: ASYNC110
                    await trio.sleep(0.05)
            conductor = next(n for n in nodes if n.conductor == n.path)
            print(f"conductor: {conductor.path}; supernodes: "
                  f"{nodes[0].supernode('cmu')}, {nodes[0].supernode('colorado')}")  # fmt: skip
            onsets: dict[str, list[tuple[float, float]]] = {}
            period = 60.0 / BPM
            async with trio.open_nursery() as nursery:
                for node in nodes:
                    await nursery.start(player, node, beats, onsets)  # subscribed when it returns
                start = math.ceil(conductor.now()) + 1.0
                conductor.publish("tempo", {"bpm": BPM, "start": start})
                if store is not None:
                    middle = start + (beats // 2 - 0.5) * period  # between two beats
                    nursery.start_soon(reset_halfway, store, middle, conductor)
            for beat in range(beats):
                print(beat_line(beat, list(onsets.values())))


def beat_line(beat: int, onsets: list[list[tuple[float, float]]]) -> str:
    """What the players did on *beat*: how far apart they ticked and, after the first, the
    period on the host's clock, the clock's period (each onset less how late its player woke)
    and how late the players woke (the latest)."""
    ticks = [times[beat][0] for times in onsets]
    line = f"beat {beat}: {len(ticks)} players, spread {(max(ticks) - min(ticks)) * 1000:.2f} ms"
    if beat:
        gaps = [times[beat][0] - times[beat - 1][0] for times in onsets]
        clock_gaps = [
            (times[beat][0] - times[beat][1]) - (times[beat - 1][0] - times[beat - 1][1])
            for times in onsets
        ]
        late = max(times[beat][1] for times in onsets)
        line += (
            f", period {sum(gaps) / len(gaps) * 1000:.1f} ms"
            f" (clock {sum(clock_gaps) / len(clock_gaps) * 1000:.1f} ms,"
            f" woke {late * 1000:.1f} ms late)"
        )
    return line


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--beats", type=int, default=8)
    parser.add_argument(
        "--registry", action="store_true", help="join a registry and reset it halfway"
    )
    args = parser.parse_args()
    trio.run(main, args.beats, args.registry)
