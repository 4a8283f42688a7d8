"""One laptop of the orchestra: a node, the conductor's tempo, notes on the federation clock.

    python3 examples/laptop_orchestra/player.py --orchestra cmu --name ada --conductor \\
        --players 4 --out concert-out

Every player runs a stagemesh node (embedded: ``mesh.open_node``) and the tempo helper
(``mesh.open_tempo``). The conductor (a ``--conductor`` player the federation elected) waits
until ``--players`` players are there, then sets the tempo, the meter and the federation time
of beat 0 a few seconds ahead. Each player then plays one note per beat for ``--bars`` bars:
it wakes ``--forward-delay`` seconds before the beat (as audio software schedules its output a
buffer ahead) and places the note at the instant its clock says the beat is due. It logs each
onset on the host's monotonic clock (the one clock every process of this machine shares), and
when the piece ends renders its notes to a WAV file and writes its onset log (``music.py``).

``--clock-skew``/``--clock-drift`` give this player's clock an error on purpose (seconds, ppm),
as unsynchronised laptops have: the federation clock hides it. Everything binds to
``--bind`` (127.0.0.1 by default: mDNS and beacons stay on this machine).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio
from music import render_wav, write_log

import mesh

READY_TIMEOUT = 60.0


def host_instant(node: mesh.Node) -> tuple[float, float]:
    """``(host monotonic, federation time)`` read at one instant: the two reads are retried
    until no more than 0.2 ms lie between them (a preemption would skew the pair)."""
    best: tuple[float, float, float] | None = None
    for _ in range(20):
        before = time.monotonic()
        federation = node.now()
        after = time.monotonic()
        if best is None or after - before < best[0]:
            best = (after - before, (before + after) / 2, federation)
        if after - before < 0.0002:
            break
    assert best is not None
    return best[1], best[2]


def node_config(args: argparse.Namespace, state: Path) -> mesh.NodeConfig:
    """The embedded node's configuration, from the flags."""
    extensions: tuple[mesh.Extension, ...] = ()
    if args.registry:
        from registry_bridge import RegistryBridge

        extensions = (RegistryBridge(args.registry),)
    seeds = tuple(mesh.parse_seed(s) for s in args.seed)
    return mesh.NodeConfig(
        federation=args.federation,
        orchestra=args.orchestra,
        name=args.name,
        bind=args.bind,
        port=0,
        port_is_default=False,
        mdns=not args.no_mdns,
        broadcast=True,
        beacon_port=args.beacon_port,
        seeds=seeds,
        registry=args.registry,
        extensions=extensions,
        supernode=args.supernode,
        conductor=args.conductor,
        clock_skew=args.clock_skew,
        clock_drift=args.clock_drift,
        profile="loopback" if args.bind.startswith("127.") else "lan",
        state_dir=state / "state",
        runtime_dir=state / "run",
    )


READY_TOPIC = "laptop-orchestra.ready"


async def conduct(
    node: mesh.Node,
    tempo: mesh.TempoKeeper,
    args: argparse.Namespace,
    ready: trio.MemoryReceiveChannel[mesh.Publication],
) -> None:
    """As the conductor: wait until ``--players`` players said their clock is ready (or
    :data:`READY_TIMEOUT` passed), then set the tempo, meter and beat 0."""
    players: set[str] = set()
    with trio.move_on_after(READY_TIMEOUT):
        async for message in ready:
            players.add(message.origin)  # the node id: one per player
            if len(players) >= args.players:
                break
    if len(players) < args.players:
        print(f"conductor {node.path}: only {len(players)} of {args.players} players ready")
    origin = round(node.now() + args.lead, 3)
    tempo.start(bpm=args.bpm, meter=args.meter, origin=origin)
    print(f"conductor {node.path}: {args.bpm:g} bpm in {args.meter}, beat 0 at t={origin:.3f}")


async def tune(node: mesh.Node, tempo: mesh.TempoKeeper, args: argparse.Namespace) -> None:
    """Wait until this player's clock follows the federation's reference with an error
    bound of ``--max-error`` seconds at most (or its best after ``--tune-time`` seconds),
    then say so to the conductor (again every half second until the tempo is known: a
    publication reaches the nodes that are there when it is sent)."""

    def following() -> bool:
        # A player alone at first is its own time reference; it is tuned only once it
        # follows the federation's reference (unless it is the conductor, the reference).
        clock = node.clock
        return clock.synced and (not clock.is_reference or node.conductor == node.path)

    with trio.move_on_after(READY_TIMEOUT / 2):
        while not following():  # noqa: ASYNC110 (the clock has no event of its own)
            await trio.sleep(0.02)
    if not following():  # play all the same: the spread will say how far off it is
        clock = node.clock
        print(
            f"not tuned {node.path}: synced={clock.synced} reference={clock.reference} "
            f"is_reference={clock.is_reference} conductor={node.conductor}",
            flush=True,
        )
    with trio.move_on_after(args.tune_time):
        while not (following() and node.clock.error_bound <= args.max_error):  # noqa: ASYNC110
            await trio.sleep(0.02)
    print(f"tuned {node.path}: clock error bound {node.clock.error_bound * 1000:.3f} ms")
    while tempo.current is None:
        node.publish(READY_TOPIC, {"error_bound": node.clock.error_bound})
        with trio.move_on_after(0.5):
            await tempo.wait()


async def perform(node: mesh.Node, tempo: mesh.TempoKeeper, args: argparse.Namespace) -> None:
    """Tune, let the conductor start the piece, play one note per beat; log and render."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(tune, node, tempo, args)
        if args.conductor:
            # Only a candidate reads the players' ready notices, and only while it may conduct:
            # a subscription nobody reads fills up and drops (and logs) every later notice.
            async with node.subscribe(READY_TOPIC) as ready:
                with trio.fail_after(READY_TIMEOUT):
                    while node.conductor is None:  # noqa: ASYNC110 (no election event here)
                        await trio.sleep(0.05)
                if node.conductor == node.path:
                    await conduct(node, tempo, args, ready)
    with trio.fail_after(READY_TIMEOUT):
        current = await tempo.wait()
    onsets: list[dict[str, Any]] = []
    late, meter = 0, current.meter_at(current.time_at_beat(0))
    for beat in itertools.count():
        current = tempo.current or current  # a change the conductor made applies at once
        due = current.time_at_beat(beat)
        if current.at(due).bar >= args.bars:
            break
        if due - node.now() < 0:
            continue  # joined after this beat
        await trio.sleep(max(0.0, due - args.forward_delay - node.now()))
        host, federation = host_instant(node)
        onset = host + (due - federation)  # where the note goes in this laptop's output
        if onset < host:  # woke too late to place it: it sounds now
            onset, late = host, late + 1
        position = current.at(due)
        meter = position.meter
        onsets.append(
            {
                "beat": beat,
                "bar": position.bar,
                "federation_time": due,
                "host": onset,
                "late": onset == host,
                "error_bound": node.clock.error_bound,
            }
        )
        print(f"onset {node.path} beat={beat} bar={position.bar} t={due:.4f} host={onset:.6f}")
    await trio.to_thread.run_sync(finish, node.path, args, onsets, current, late, meter)


def finish(
    path: str,
    args: argparse.Namespace,
    onsets: list[dict[str, Any]],
    current: mesh.Tempo,
    late: int,
    meter: int,
) -> None:
    """Render the notes to ``<orchestra>-<name>.wav`` and write the onset log."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    epoch = args.host_epoch if args.host_epoch is not None else onsets[0]["host"] - 0.5
    _, orchestra, name = path.split("/")
    wav = f"{orchestra}-{name}.wav"
    render_wav(out / wav, onsets, epoch, args.note, meter)
    doc = {
        "path": path,
        "bpm": current.bpm_at(current.time_at_beat(0)),
        "meter": meter,
        "origin": current.time_at_beat(0),
        "note": args.note,
        "clock_skew": args.clock_skew,
        "clock_drift": args.clock_drift,
        "forward_delay": args.forward_delay,
        "late": late,
        "host_epoch": epoch,
        "wav": wav,
        "onsets": onsets,
    }
    log = write_log(out, doc)
    print(f"done {path}: {len(onsets)} notes ({late} late), {out / wav}, {log}", flush=True)


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="laptop-") as tmp:
        async with (
            mesh.open_node(node_config(args, Path(tmp))) as node,
            mesh.open_tempo(node) as tempo,
        ):
            print(f"ready path={node.path} gossip={node.address[0]}:{node.address[1]}", flush=True)
            await perform(node, tempo, args)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The player's flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--federation", default="laptop-orchestra")
    add("--orchestra", default="cmu")
    add("--name", required=True)
    add("--bind", default="127.0.0.1", help="address to bind (default: loopback only)")
    add("--beacon-port", type=int, default=7470, help="this site's beacon port")
    add("--no-mdns", action="store_true", help="no mDNS (a site found only by its beacons)")
    add("--seed", action="append", default=[], help="a static peer HOST:PORT")
    add("--registry", default=None, help="registry URL (joins the sites)")
    add("--supernode", action="store_true")
    add("--conductor", action="store_true", help="a conductor candidate")
    add("--players", type=int, default=1, help="the conductor waits for this many players")
    add("--bpm", type=float, default=120.0)
    add("--meter", type=int, default=4)
    add("--bars", type=int, default=4)
    add("--lead", type=float, default=2.0, help="beat 0 this many seconds after the start")
    add("--max-error", type=float, default=0.001, help="play once the clock is this good")
    add("--tune-time", type=float, default=10.0, help="or once this many seconds passed")
    add("--forward-delay", type=float, default=0.25, help="schedule notes this far ahead")
    add("--note", type=int, default=60, help="MIDI note of this player")
    add("--host-epoch", type=float, default=None, help="host monotonic time of sample 0")
    add("--clock-skew", type=float, default=0.0, help="inject clock skew (seconds)")
    add("--clock-drift", type=float, default=0.0, help="inject clock drift (ppm)")
    add("--out", default="concert-out", help="folder for the WAV and the onset log")
    return parser.parse_args(argv)


if __name__ == "__main__":
    try:
        trio.run(main, parse())
    except KeyboardInterrupt:
        sys.exit(130)
