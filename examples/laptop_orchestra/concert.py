"""A whole laptop-orchestra concert on this machine: N players, one conductor, one clock.

    python3 examples/laptop_orchestra/concert.py --players 4 --out concert-out
    python3 examples/laptop_orchestra/concert.py --players 4 --sites 2 --out concert-out
    python3 examples/laptop_orchestra/concert.py --players 4 --clock-skew 2 --clock-drift 100

Starts one ``player.py`` process per player (each a laptop with its own node), all bound to
127.0.0.1 with beacons on a free port private to this run (no mDNS). With ``--sites 2`` the
players form two orchestras whose beacons cannot hear each other, joined only through a
registry (one is started on a free loopback port unless ``--registry URL`` names one). With
``--clock-skew S --clock-drift PPM`` every player's clock is off by a different amount
between -S and +S seconds and drifts by +-PPM. When the piece ends it gathers the onset logs
(``gather.py``): the onset spread per beat, ``spread.png`` and ``mix.wav`` in ``--out``.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio
from gather import main as gather_main

HERE = Path(__file__).resolve().parent
NOTES = (60, 64, 67, 72, 62, 69, 74, 76, 79, 65, 71, 84)
NAMES = ("ada", "bela", "clara", "dmitri", "erik", "fanny", "gustav", "hilda", "igor",
         "johann", "kaija", "ludwig")  # fmt: skip
SITES = ("cmu", "colorado")


def free_udp_port() -> int:
    """A UDP port free on this machine now (the run's private beacon port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def player_argv(index: int, args: argparse.Namespace, beacons: list[int], registry: str | None,
                epoch: float) -> list[str]:  # fmt: skip
    """The command line of player *index*."""
    n = args.players
    site = index % args.sites
    skew = 0.0 if n == 1 else args.clock_skew * (2 * index / (n - 1) - 1)
    drift = args.clock_drift if index % 2 == 0 else -args.clock_drift
    name = NAMES[index] if index < len(NAMES) else f"player{index + 1}"
    argv = [
        *(sys.executable, str(HERE / "player.py"), "--federation", args.federation),
        *("--orchestra", SITES[site], "--name", name, "--bind", "127.0.0.1", "--no-mdns"),
        *("--beacon-port", str(beacons[site]), "--players", str(n), "--bars", str(args.bars)),
        *("--bpm", str(args.bpm), "--meter", str(args.meter), "--out", str(args.out)),
        *("--note", str(NOTES[index % len(NOTES)]), "--host-epoch", repr(epoch)),
        *("--clock-skew", repr(round(skew, 6)), "--clock-drift", repr(drift)),
        *("--forward-delay", str(args.forward_delay)),
    ]
    if index < args.sites:  # the first player of each site
        argv += ["--supernode", "--conductor"]
    if registry:
        argv += ["--registry", registry]
    return argv


async def start_registry(folder: Path) -> tuple[trio.Process, str]:
    """A registry on a free loopback port; returns it and its URL once it is ready."""
    process = await trio.lowlevel.open_process(
        [
            *(sys.executable, "-m", "mesh", "registry", "--bind", "127.0.0.1:0"),
            *("--db", str(folder / "registry.db")),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert process.stdout is not None
    line = b""
    with trio.fail_after(30):
        while not line.endswith(b"\n"):
            chunk = await process.stdout.receive_some(1)
            if not chunk:
                raise SystemExit("error: the registry stopped before it was ready")
            line += chunk
    text = line.decode()
    url = text.split()[1].removeprefix("registry=")
    print(f"registry ready: {url}", flush=True)
    return process, url


async def run_player(argv: list[str], verbose: bool, failures: list[str]) -> None:
    """Run one player to its end, echoing its ready/conductor/done lines."""
    process = await trio.lowlevel.open_process(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert process.stdout is not None
    lines: list[str] = []
    buf = b""
    try:
        while chunk := await process.stdout.receive_some(4096):
            buf += chunk
            while b"\n" in buf:
                raw, buf = buf.split(b"\n", 1)
                line = raw.decode(errors="replace")
                lines.append(line)
                if verbose or not line.startswith("onset "):
                    print(f"  {line}", flush=True)
        await process.wait()
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGKILL)
            with trio.CancelScope(shield=True):
                await process.wait()
    if process.returncode != 0:
        failures.append(f"{argv[argv.index('--name') + 1]}: exit {process.returncode}: "
                        + " | ".join(lines[-5:]))  # fmt: skip


async def concert(args: argparse.Namespace) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    for old in [*args.out.glob("*.json"), *args.out.glob("*.wav")]:
        old.unlink()  # a folder holds one concert
    beacons = [free_udp_port() for _ in range(args.sites)]
    epoch = time.monotonic() + 1.0
    registry_process = None
    registry = args.registry
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="concert-") as tmp:
        try:
            if args.sites == 2 and not registry:
                registry_process, registry = await start_registry(Path(tmp))
            duration = args.bars * args.meter * 60.0 / args.bpm
            with trio.fail_after(duration + 120):
                async with trio.open_nursery() as nursery:
                    for index in range(args.players):
                        argv = player_argv(index, args, beacons, registry, epoch)
                        nursery.start_soon(run_player, argv, args.verbose, failures)
        finally:
            if registry_process is not None:
                registry_process.send_signal(signal.SIGTERM)
                with trio.CancelScope(shield=True):
                    await registry_process.wait()
    if failures:
        for failure in failures:
            print(f"error: player {failure}", file=sys.stderr)
        return 1
    return gather_main([str(args.out), *(["--json"] if args.json else [])])


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--players", type=int, default=4, help="players (laptops), 2-32")
    add("--sites", type=int, default=1, choices=(1, 2), help="2: two sites and a registry")
    add("--registry", default=None, help="use this registry (two sites) instead of a new one")
    add("--federation", default="laptop-orchestra")
    add("--bars", type=int, default=4)
    add("--bpm", type=float, default=120.0)
    add("--meter", type=int, default=4)
    add("--forward-delay", type=float, default=0.25)
    add("--clock-skew", type=float, default=0.0, help="clocks off by -S..+S seconds")
    add("--clock-drift", type=float, default=0.0, help="clocks drifting by +-PPM")
    add("--out", type=Path, default=Path("concert-out"))
    add("--json", action="store_true", help="print the gathered figures as JSON")
    add("--verbose", action="store_true", help="echo every onset line")
    args = parser.parse_args(argv)
    if not 2 <= args.players <= 32:
        parser.error("--players must be 2-32")
    if args.players < args.sites:
        parser.error("each site needs a player")
    return args


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        sys.exit(trio.run(concert, parse()))
    except KeyboardInterrupt:
        sys.exit(130)
