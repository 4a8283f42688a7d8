"""A datagram flood from a stranger at a live node, and what the node does about it.

Used by ``tests/security/test_flood.py`` (20,000 datagrams) and ``bench/flood.py`` (10^6).
One run (:func:`run_flood`):

1. Five keyed ``stagemesh node`` processes on loopback (beacons on a port of the run's own,
   no mDNS) until each sees the five alive and every clock is synced. The first is the target.
2. **Capture**: a packet socket on ``lo`` (root) records real signed datagrams on their way to
   the target and to another node, as a stranger on a shared Wi-Fi would.
3. **Junk** (:func:`junk_pool`): random bytes (some longer than a datagram may be), random
   bytes behind a valid header, the captures truncated and with one bit flipped, the captures
   replayed as they are (to the target: ``replayed``; meant for another node:
   ``misdirected``), member lists bound to the target signed with a key of the stranger's own
   (short ones: ``bad tag``; longer than a datagram: ``too large``), key ids the federation
   does not have (``unknown key``) and unsigned messages (``unsigned``).
4. **Baseline** (*baseline_seconds*), then **flood**: during both, the target's
   ``/api/status`` is read over and over (its latency), every node's view and every clock
   (federation time minus host time, read at one instant in each node; the nodes share the
   host's clock) are sampled. The flood comes from another process, bound to ``127.0.0.2`` (a
   stranger is another host; on ``lo`` every address of 127/8 is this machine), sending the
   pool round and round as fast as one core can (:func:`send_flood`).
5. **After**: every node still sees the five alive for a few seconds (no death came late),
   and the target's counters are read: datagrams it received and refused by reason, RSS.

Nothing here sleeps to synchronise: waits for a state use :func:`tests.livenodes.wait_for`
with a deadline; sleeps only pace the samplers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import socket
import statistics
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import trio

from mesh._keys import load_keyring, write_key_file
from mesh._wire import (
    MAX_DATAGRAM,
    Gossip,
    Keyring,
    MemberRecord,
    Ping,
)
from tests.harness import wait_for
from tests.livenodes import LiveNode, start_nodes
from tests.security.edge_tools import forge, sniff

__all__ = [
    "FLOOD_SOURCE",
    "KINDS",
    "FloodResult",
    "junk_pool",
    "run_flood",
    "send_flood",
]

FLOOD_SOURCE = "127.0.0.2"
"""The stranger's address: another address than the nodes' 127.0.0.1."""

KINDS = (
    "random",
    "random behind a header",
    "truncated",
    "bit flipped",
    "replayed",
    "replayed to another node",
    "member list, stranger's key",
    "member list, oversized",
    "wrong key id",
    "unsigned",
)
"""The kinds of junk in the pool, in equal shares."""

NODES = ("target", "n1", "n2", "n3", "n4")


def _flip(rng: random.Random, data: bytes) -> bytes:
    i = rng.randrange(len(data) * 8)
    out = bytearray(data)
    out[i // 8] ^= 1 << (i % 8)
    return bytes(out)


def _members(rng: random.Random, count: int) -> Gossip:
    return Gossip(
        tuple(
            MemberRecord(
                f"{rng.getrandbits(128):032x}",
                f"m{i}",
                "o1",
                ("127.0.0.1", 1024 + rng.randrange(60000)),
                rng.randrange(100),
            )
            for i in range(count)
        )
    )


def junk_pool(
    rng: random.Random,
    size: int,
    *,
    captured: Sequence[bytes],
    captured_elsewhere: Sequence[bytes],
    target: tuple[str, int],
    federation: str = "default",
) -> list[tuple[str, bytes]]:
    """*size* junk datagrams for the node *target* (id, incarnation), ``(kind, data)``, the
    kinds of :data:`KINDS` in turn. *captured* are real datagrams on their way to the target,
    *captured_elsewhere* to another node of its federation."""
    own_key = Keyring.single(rng.randbytes(32))
    out: list[tuple[str, bytes]] = []
    for i in range(size):
        kind = KINDS[i % len(KINDS)]
        real = rng.choice(captured)
        if kind == "random":
            data = rng.randbytes(rng.randrange(1, MAX_DATAGRAM + 200))
        elif kind == "random behind a header":
            data = real[:5] + rng.randbytes(rng.randrange(1, MAX_DATAGRAM - 5))
        elif kind == "truncated":
            data = real[: rng.randrange(1, len(real))]
        elif kind == "bit flipped":
            data = _flip(rng, real)
        elif kind == "replayed":
            data = real
        elif kind == "replayed to another node":
            data = rng.choice(captured_elsewhere)
        elif kind == "member list, stranger's key":
            body = _members(rng, rng.randrange(1, 12))
            data = forge(body, federation=federation, keyring=own_key, to=target)
        elif kind == "member list, oversized":
            body = _members(rng, rng.randrange(20, 400))
            data = forge(body, federation=federation, keyring=own_key, to=target)
        elif kind == "wrong key id":
            wrong = Keyring.single(rng.randbytes(32), rng.randrange(2, 256))
            data = forge(Ping(1, target[0]), federation=federation, keyring=wrong, to=target)
        else:
            data = forge(Ping(1, target[0]), federation=federation, keyring=None, to=target)
        out.append((kind, data))
    return out


def send_flood(
    address: tuple[str, int], pool: Sequence[bytes], count: int, source: str = FLOOD_SOURCE
) -> dict[str, Any]:
    """Send *count* datagrams of *pool* (round and round) to *address* from *source*, as fast
    as this process can. Returns what was sent, in how long, and how often the kernel pushed
    back."""
    sent = blocked = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        s.setblocking(False)
        send = s.sendto
        started = time.perf_counter()
        n = len(pool)
        while sent < count:
            try:
                send(pool[sent % n], address)
                sent += 1
            except BlockingIOError:
                blocked += 1
            except OSError:  # ECONNREFUSED from an earlier ICMP, or a datagram too long
                sent += 1
        seconds = time.perf_counter() - started
    return {"sent": sent, "seconds": seconds, "blocked": blocked}


@attrs.frozen
class PhaseFigures:
    """What was sampled during one phase (baseline or flood)."""

    seconds: float
    status_ms: list[float]
    """Latency of each ``GET /api/status`` of the target."""
    clock_us: list[float]
    """|federation time of the target - that of each other node|, read at one instant each."""
    not_alive: list[str]
    """``observer: path state`` for every sample in which a node saw one of the five not
    alive."""
    unsynced: int
    """Samples in which the target's clock was not synced."""

    def summary(self) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "status_ms": _percentiles(self.status_ms),
            "clock_us": _percentiles(self.clock_us),
            "not_alive": self.not_alive[:20],
            "not_alive_count": len(self.not_alive),
            "unsynced": self.unsynced,
        }


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]

    return {
        "n": len(ordered),
        "p50": at(0.5),
        "p99": at(0.99),
        "max": ordered[-1],
        "mean": statistics.fmean(ordered),
    }


@attrs.frozen
class FloodResult:
    """One run of :func:`run_flood`."""

    count: int
    sender: dict[str, Any]
    """What :func:`send_flood` reported: sent, seconds, blocked."""
    received: int
    """Datagrams the target's gossip socket handed to the node during the flood."""
    rejected: dict[str, int]
    """The target's refusals during the flood, by reason (``statistics.transport.rejected``)."""
    accepted: int
    """Datagrams received during the flood that passed every check (its peers' traffic)."""
    window: float
    """Seconds between the two readings of the target's counters (the flood, and the time its
    queue took to be read after it)."""
    kernel_drops: int
    """Datagrams the kernel dropped for the target's socket during the flood (queue full), as
    the node reports them (``statistics.transport.receive_drops``)."""
    cpu_seconds: float
    """CPU time the target used during the flood (user + system)."""
    kinds: dict[str, int]
    """The pool's composition."""
    rss_before_kib: int
    rss_after_kib: int
    baseline: PhaseFigures
    flood: PhaseFigures
    after_not_alive: list[str]
    deaths_declared: int
    """``deaths_declared`` summed over the five nodes' statistics, from before the baseline
    to the end."""
    exited: list[str]

    def summary(self) -> dict[str, Any]:
        seconds = max(self.sender["seconds"], 1e-9)
        return {
            "count": self.count,
            "offered_per_s": self.sender["sent"] / seconds,
            "received": self.received,
            "absorbed_per_s": self.received / seconds,
            "rejected": self.rejected,
            "rejected_total": sum(self.rejected.values()),
            "accepted": self.accepted,
            "window_s": self.window,
            "kernel_drops": self.kernel_drops,
            "cpu_seconds": self.cpu_seconds,
            "cpu_share": self.cpu_seconds / max(self.flood.seconds, 1e-9),
            "kinds": self.kinds,
            "rss_before_kib": self.rss_before_kib,
            "rss_after_kib": self.rss_after_kib,
            "rss_growth_kib": self.rss_after_kib - self.rss_before_kib,
            "baseline": self.baseline.summary(),
            "flood": self.flood.summary(),
            "after_not_alive": self.after_not_alive[:20],
            "deaths_declared": self.deaths_declared,
            "exited": self.exited,
            "sender": self.sender,
        }


def udp_queue(host: str, port: int) -> int:
    """The bytes waiting in the receive queue of the UDP socket bound to *host*:*port*
    (``/proc/net/udp``)."""
    local = f"{socket.htonl(int.from_bytes(socket.inet_aton(host), 'big')):08X}:{port:04X}"
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local:
            return int(fields[4].split(":")[1], 16)
    raise RuntimeError(f"no UDP socket on {host}:{port}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time process *pid* has used (``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    """The resident set size of process *pid* (KiB, from ``/proc``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


async def _all_alive(nodes: Sequence[LiveNode]) -> list[str]:
    """``observer: path state`` for each member some node does not see alive (and each of
    the five some node does not list)."""
    paths = {f"/o1/{n.name}" for n in nodes}
    out = []
    for node in nodes:
        states = await node.states()
        out += [
            f"{node.name}: {p} {states.get(p, 'absent')}"
            for p in sorted(paths)
            if states.get(p) != "alive"
        ]
    return out


async def _ready(nodes: Sequence[LiveNode]) -> bool:
    if await _all_alive(nodes):
        return False
    for node in nodes:
        if not (await node.status())["clock"]["synced"]:
            return False
    return True


async def _clock_offsets(nodes: Sequence[LiveNode]) -> list[float]:
    """|target - other| in microseconds of ``federation_time - host_time``. A node reads the
    two one after the other, so a node descheduled in between (a loaded machine) reads its
    host time late: each node is read twice and the larger value kept."""
    assert nodes[0].client is not None
    readings = []
    for node in nodes:
        values = []
        for _ in range(2):
            doc = (await nodes[0].client.get(node.status_url + "/api/clock")).json()
            values.append(doc["federation_time"] - doc["host_time"])
        readings.append(max(values))
    return [abs(readings[0] - r) * 1e6 for r in readings[1:]]


async def _sample(nodes: Sequence[LiveNode], stop: trio.Event) -> PhaseFigures:
    """Sample the target's status latency, every view and the clocks until *stop*."""
    status_ms: list[float] = []
    clock_us: list[float] = []
    not_alive: list[str] = []
    unsynced = 0
    started = time.monotonic()

    async def status_loop() -> None:
        nonlocal unsynced
        while not stop.is_set():
            t = time.perf_counter()
            doc = await nodes[0].status()
            status_ms.append((time.perf_counter() - t) * 1e3)
            unsynced += not doc["clock"]["synced"]
            await trio.sleep(0.02)

    async def view_loop() -> None:
        while not stop.is_set():
            not_alive.extend(await _all_alive(nodes))
            clock_us.extend(await _clock_offsets(nodes))
            await trio.sleep(0.1)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(status_loop)
        nursery.start_soon(view_loop)
    return PhaseFigures(time.monotonic() - started, status_ms, clock_us, not_alive, unsynced)


async def _phase(nodes: Sequence[LiveNode], until: Callable[[], Awaitable[Any]]) -> PhaseFigures:
    """Sample while *until* (an async function) runs; return the figures."""
    stop = trio.Event()
    result: list[PhaseFigures] = []

    async def sampler() -> None:
        result.append(await _sample(nodes, stop))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sampler)
        try:
            await until()
        finally:
            stop.set()
    return result[0]


def _capture(port: int, count: int, seconds: float) -> list[bytes]:
    found = sniff("lo", "127.0.0.1", "127.0.0.1", port, count, seconds)
    return [bytes.fromhex(h) for h in found]


async def run_flood(
    tmp: Path,
    count: int,
    *,
    pool_size: int = 4096,
    seed: int = 13,
    settle: float = 3.0,
    baseline_seconds: float = 3.0,
    sender_nice: int = 19,
    progress: Callable[[str], None] = lambda _: None,
) -> FloodResult:
    """One flood of *count* datagrams (see the module docstring)."""
    key = tmp / "federation.key"
    write_key_file(key)
    keyring = load_keyring(key)
    assert keyring is not None
    rng = random.Random(seed)
    args = ["--no-mdns", "--key-file", str(key)]
    async with start_nodes(tmp, NODES, args) as nodes:
        target = nodes[0]
        await wait_for(lambda: _ready(nodes), 60, "five nodes alive and synced", every=0.2)
        progress("five nodes alive and synced")
        doc = await target.status()
        me = (doc["node"]["id"], doc["members"][0]["incarnation"])
        captured, elsewhere = await trio.to_thread.run_sync(
            lambda: (_capture(target.gossip[1], 16, 20), _capture(nodes[1].gossip[1], 8, 20))
        )
        assert captured and elsewhere, "captured nothing on lo"
        progress(f"captured {len(captured)} + {len(elsewhere)} datagrams")
        pool = junk_pool(rng, pool_size, captured=captured, captured_elsewhere=elsewhere, target=me)
        pool_file = tmp / "pool.bin"
        pool_file.write_bytes(b"".join(len(d).to_bytes(4, "big") + d for _, d in pool))

        deaths_before = [
            (await n.status())["statistics"]["membership"]["deaths_declared"] for n in nodes
        ]
        rss_before = rss_kib(target.process.pid)

        baseline = await _phase(nodes, partial(trio.sleep, baseline_seconds))
        progress(f"baseline {baseline.seconds:.1f} s; flood of {count} datagrams")
        before = (await target.status())["statistics"]["transport"]
        counted_from = time.monotonic()
        cpu_before = cpu_seconds(target.process.pid)
        sender: dict[str, Any] = {}

        async def flood() -> None:
            argv = ["nice", "-n", str(sender_nice), sys.executable, "-m", "tests.flood", "send"]
            argv += [*map(str, target.gossip)]
            argv += ["--pool", str(pool_file), "--count", str(count)]
            done = await trio.run_process(argv, capture_stdout=True, check=True)
            sender.update(json.loads(done.stdout))

        flooded = await _phase(nodes, flood)
        await wait_for(lambda: udp_queue(*target.gossip) == 0, 20, "the target's queue read")
        after = (await target.status())["statistics"]["transport"]
        window = time.monotonic() - counted_from
        drops = after["receive_drops"] - before["receive_drops"]
        cpu = cpu_seconds(target.process.pid) - cpu_before
        rss_after = rss_kib(target.process.pid)
        progress(f"flood over in {sender['seconds']:.2f} s")
        # A death the flood caused may be declared after it: watch a while longer.
        settled = await _phase(nodes, partial(trio.sleep, settle))
        deaths_after = [
            (await n.status())["statistics"]["membership"]["deaths_declared"] for n in nodes
        ]
        exited = [n.name for n in nodes if n.process.returncode is not None]
        rejected = {
            reason: n - before["rejected"].get(reason, 0)
            for reason, n in after["rejected"].items()
            if n - before["rejected"].get(reason, 0)
        }
        received = after["datagrams_received"] - before["datagrams_received"]
        return FloodResult(
            count=count,
            sender=sender,
            received=received,
            rejected=rejected,
            accepted=received - sum(rejected.values()),
            window=window,
            kernel_drops=drops,
            cpu_seconds=cpu,
            kinds=dict(Counter(kind for kind, _ in pool)),
            rss_before_kib=rss_before,
            rss_after_kib=rss_after,
            baseline=baseline,
            flood=flooded,
            after_not_alive=settled.not_alive,
            deaths_declared=sum(deaths_after) - sum(deaths_before),
            exited=exited,
        )


def _read_pool(path: Path) -> list[bytes]:
    data = path.read_bytes()
    out, i = [], 0
    while i < len(data):
        n = int.from_bytes(data[i : i + 4], "big")
        out.append(data[i + 4 : i + 4 + n])
        i += 4 + n
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="send a pool of datagrams round and round")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("send")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--pool", type=Path, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--source", default=FLOOD_SOURCE)
    args = parser.parse_args(argv)
    out = send_flood((args.host, args.port), _read_pool(args.pool), args.count, args.source)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
