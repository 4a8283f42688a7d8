"""OSC bridge benchmark: how late a scheduled message reaches the local app, in federation time.

The figure is the one the OSC bridge's issue asks for: the lateness of messages scheduled with
``/stagemesh/schedule`` (p50/p99), against the target p99 <= 2 ms after the message's
federation time, beside a baseline measured in the same run on the same machine.

Bridge: two ``stagemesh node`` processes on loopback, the conductor (the federation's time
reference) and a player whose clock is skewed by 1.7 s and drifts by 100 ppm, running the OSC
bridge (``--osc``). Once the player's clock has synced, an OSC app (python-osc) in this process
schedules a message on the player every 50 ms, each 0.3 s ahead
(``/stagemesh/schedule <federation time> /note <n>``, the time as a float64). Each arrival is
stamped by the kernel as the datagram reaches the app's socket (``SO_TIMESTAMPNS``: the
delivery), and again when the app's receiving thread reads it (what a Python app on this
loaded machine adds). The federation time of an arrival is read through the conductor: the
``/stagemesh/time`` exchange with the shortest round trip gives federation time minus this
host's monotonic clock (measured again for each block). Lateness = arrival in federation
time - the message's federation time (negative: early). The bridge's own send lateness by the
node's clock (``/api/status`` ``osc.send_lateness_ms``) is printed too.

Baseline: the same schedule served by a bare process running the bridge's own code
(``OscBridge.serve``: the same socket handling, scheduler and wake-up rule) on a clock that is
just ``time.monotonic()``, without a node: how late this machine, as loaded as it is, delivers
a scheduled message at all. The two alternate in blocks of ``--block`` seconds, so both see
the same load; the ratio bridge/baseline is what the node itself adds.

Prints p50/p99/max of both, the ratio, the target, the machine's load (``uptime``) before and
after and the priority the bench ran at, and writes ``bench/results/osc.json``. The nodes, the
baseline and the app inherit this process's priority: to measure with a higher one, start the
bench as ``nice -n -5 python3 bench/osc.py`` or, for real-time priority as audio programs
run, ``chrt -f 10 python3 bench/osc.py`` (root), and say so beside the figures (the JSON
records the niceness and the scheduling policy).

    python3 bench/osc.py [--duration 60] [--block 10]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from pythonosc.osc_message import OscMessage

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mesh._osc import OscBridge  # noqa: E402
from mesh._tempo import Tempo  # noqa: E402
from mesh._wire import Value  # noqa: E402
from tests.harness import wait_for  # noqa: E402
from tests.livenodes import LiveNode, start_nodes  # noqa: E402
from tests.oscapp import OscApp  # noqa: E402

SPACING = 0.05
AHEAD = 0.3
TARGET_P99_MS = 2.0


def flags(index: int, name: str) -> list[str]:
    out = ["--no-mdns", "--osc", "127.0.0.1:0"]
    if name == "conductor":
        return [*out, "--conductor"]
    return [*out, "--clock-skew", "1.7", "--clock-drift", "100"]


async def app_for(node: LiveNode) -> OscApp:
    doc = await node.status()
    return OscApp("127.0.0.1", int(doc["osc"]["address"].rsplit(":", 1)[1]))


async def offset(app: OscApp, samples: int = 30) -> tuple[float, float]:
    """(federation time - time.monotonic(), round trip) from the best of *samples* exchanges."""
    best = (float("inf"), 0.0)
    for _ in range(samples):
        sent = time.monotonic()
        got = await app.ask("/stagemesh/time")
        rtt = got.at - sent
        if rtt < best[0]:
            best = (rtt, got.args[0] - (sent + got.at) / 2)
    return best[1], best[0]


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


_SO_TIMESTAMPNS = 35
"""Linux: the kernel stamps each datagram as it reaches the socket (CLOCK_REALTIME, ns)."""


def realtime_minus_monotonic() -> float:
    """time.time() - time.monotonic(), from the tightest of a few readings."""
    best = (float("inf"), 0.0)
    for _ in range(50):
        a = time.monotonic()
        r = time.time()
        b = time.monotonic()
        best = min(best, (b - a, r - (a + b) / 2))
    return best[1]


def receive_notes(sock: socket.socket, count: int) -> dict[int, tuple[float, float]]:
    """*count* ``/note <n>`` messages: n -> (when the kernel queued it on the socket, when this
    thread read it), both on this host's monotonic clock."""
    rt_minus_mono = realtime_minus_monotonic()
    out: dict[int, tuple[float, float]] = {}
    sock.settimeout(10)
    while len(out) < count:
        data, ancillary, _, _ = sock.recvmsg(2048, socket.CMSG_SPACE(16))
        read = time.monotonic()
        arrived = read
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS:
                sec, nsec = struct.unpack("qq", value[:16])
                arrived = sec + nsec / 1e9 - rt_minus_mono
        message = OscMessage(data)
        if message.address == "/note":
            out[message.params[0]] = (arrived, read)
    return out


async def schedule_notes(
    app: OscApp, fed_minus_mono: float, duration: float
) -> tuple[list[float], list[float]]:
    """Schedule a note every SPACING s, AHEAD s ahead, for *duration* s; the lateness of each
    (seconds, in the clock *fed_minus_mono* converts this host's monotonic clock to) as it
    reached the app's socket, and as the app's receiving thread read it."""
    sent: dict[int, float] = {}
    count = int(duration / SPACING)
    sock = app.client._sock
    sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
    got: dict[int, tuple[float, float]] = {}

    async def receive() -> None:
        got.update(await trio.to_thread.run_sync(receive_notes, sock, count))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive)
        base = time.monotonic() + fed_minus_mono
        for n in range(count):
            due = base + AHEAD + n * SPACING
            sent[n] = due
            # float64 times (python-osc would guess float32 for a Python float).
            sock.sendto(build_schedule(due, n).dgram, app.target)
            # Pace the sends (a load generator, not synchronisation).
            await trio.sleep(max(0.0, due - AHEAD - (time.monotonic() + fed_minus_mono)))
    arrived = [got[n][0] + fed_minus_mono - sent[n] for n in range(count)]
    read = [got[n][1] + fed_minus_mono - sent[n] for n in range(count)]
    return arrived, read


def build_schedule(due: float, n: int) -> Any:
    from pythonosc.osc_message_builder import OscMessageBuilder

    builder = OscMessageBuilder("/stagemesh/schedule")
    builder.add_arg(due, "d")
    builder.add_arg("/note")
    builder.add_arg(n)
    return builder.build()


def machine() -> dict[str, Any]:
    """The load and this process's priority (the nodes and the baseline inherit it)."""
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    policy = os.sched_getscheduler(0)
    names = {os.SCHED_OTHER: "SCHED_OTHER", os.SCHED_FIFO: "SCHED_FIFO", os.SCHED_RR: "SCHED_RR"}
    return {
        "uptime": uptime,
        "loadavg": os.getloadavg(),
        "cpus": os.cpu_count(),
        "nice": os.nice(0),
        "policy": names.get(policy, str(policy)),
    }


async def measure(duration: float, block: float) -> dict[str, Any]:
    before = machine()
    bridge: list[float] = []
    baseline: list[float] = []
    bridge_read: list[float] = []
    baseline_read: list[float] = []
    rtts: list[float] = []
    blocks: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        async with start_nodes(Path(tmp), ["conductor", "player"], flags) as nodes:

            async def synced() -> bool:
                doc = await nodes[1].status()
                clock = doc["clock"]
                return bool(
                    doc["conductor"] == "/o1/conductor"
                    and clock["synced"]
                    and (clock["error_bound"] or 1.0) < 0.002
                )

            await wait_for(synced, 60, "the player's clock synced", every=0.2)
            async with open_baseline() as bare:
                ref, app = await app_for(nodes[0]), await app_for(nodes[1])
                try:
                    done = 0.0
                    while done < duration:
                        part = min(block, duration - done)
                        fed_minus_mono, rtt = await offset(ref)
                        rtts.append(rtt)
                        one, one_read = await schedule_notes(app, fed_minus_mono, part)
                        other, other_read = await schedule_notes(bare, 0.0, part)
                        blocks.append({"load": os.getloadavg()[0], "bridge": summary(one),
                                       "baseline": summary(other)})  # fmt: skip
                        bridge += one
                        baseline += other
                        bridge_read += one_read
                        baseline_read += other_read
                        done += part
                    stats = (await nodes[1].status())["osc"]
                finally:
                    ref.close()
                    app.close()
    b, base = summary(bridge), summary(baseline)
    return {
        "figure": "lateness of /stagemesh/schedule deliveries in federation time",
        "target": f"p99 <= {TARGET_P99_MS:g} ms",
        "bridge": b,
        "baseline": base,
        "bridge_read_by_app": summary(bridge_read),
        "baseline_read_by_app": summary(baseline_read),
        "ratio_p99": b["p99_ms"] / base["p99_ms"] if base["p99_ms"] > 0 else None,
        "ratio_p50": b["p50_ms"] / base["p50_ms"] if base["p50_ms"] > 0 else None,
        "meets_target": b["p99_ms"] <= TARGET_P99_MS,
        "reference_rtt_us": min(rtts) * 1e6,
        "counters": {k: stats[k] for k in ("scheduled_sent", "late_on_arrival", "errors")},
        "bridge_send_lateness_ms": stats["send_lateness_ms"],
        "blocks": blocks,
        "duration_s": duration,
        "block_s": block,
        "machine_before": before,
        "machine_after": machine(),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
    }


@asynccontextmanager
async def open_baseline() -> AsyncIterator[OscApp]:
    """A bare process serving the bridge's schedule on ``time.monotonic()``; an app for it."""
    process = await trio.lowlevel.open_process(
        [sys.executable, __file__, "--serve-baseline"], stdout=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        port = int((await process.stdout.receive_some(64)).decode().split()[0])
        app = OscApp("127.0.0.1", port)
        try:
            yield app
        finally:
            app.close()
    finally:
        process.kill()
        await process.wait()


class BareClock:
    """A :class:`~mesh._osc_core.BridgeHost` whose federation time is this host's monotonic
    clock, with no node behind it (the baseline)."""

    def now(self) -> float:
        return time.monotonic()

    def error_bound(self) -> float | None:
        return 0.0

    def members(self) -> list[tuple[str, str]]:
        return []

    def conductor(self) -> str | None:
        return None

    def tempo(self) -> Tempo | None:
        return None

    def publish(self, topic: str, payload: Value) -> None:
        raise ValueError("the baseline has no node to publish through")

    def set_tempo(self, bpm: float, meter: int | None, at: float | None, restart: bool) -> None:
        raise ValueError("the baseline has no tempo")


async def serve_baseline() -> None:
    bridge = OscBridge.bind(("127.0.0.1", 0))
    print(bridge.address[1], flush=True)
    await bridge.serve(BareClock())


def summary(lateness: list[float]) -> dict[str, float]:
    ms = [x * 1000 for x in lateness]
    return {
        "messages": len(ms),
        "min_ms": min(ms),
        "p50_ms": quantile(ms, 0.5),
        "p99_ms": quantile(ms, 0.99),
        "max_ms": max(ms),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of scheduling "
                        "on each of the bridge and the baseline")  # fmt: skip
    parser.add_argument("--block", type=float, default=10.0, help="seconds of each block; "
                        "the bridge and the baseline alternate")  # fmt: skip
    parser.add_argument("--serve-baseline", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_baseline:
        trio.run(serve_baseline)
        return
    began = time.perf_counter()
    result = trio.run(measure, args.duration, args.block)
    result["wall_s"] = time.perf_counter() - began
    print(f"lateness of scheduled OSC messages in federation time; target {result['target']}")
    print(f"{'run':<42} {'messages':>8} {'min ms':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, key in (
        ("bridge (skewed node), at the app's socket", "bridge"),
        ("bare process baseline, at the app's socket", "baseline"),
        ("bridge, read by the app's thread", "bridge_read_by_app"),
        ("baseline, read by the app's thread", "baseline_read_by_app"),
    ):
        r = result[key]
        print(
            f"{name:<42} {r['messages']:>8} {r['min_ms']:>8.3f} {r['p50_ms']:>8.3f}"
            f" {r['p99_ms']:>8.3f} {r['max_ms']:>8.3f}"
        )
    print("p99 ms by block (bridge/baseline): " + ", ".join(
        f"{b['bridge']['p99_ms']:.1f}/{b['baseline']['p99_ms']:.1f}" for b in result["blocks"]))
    sent = result["bridge_send_lateness_ms"]
    if sent:
        print(f"the bridge's own send lateness (node clock, last 1000): p50 {sent['p50']:.3f} "
              f"p99 {sent['p99']:.3f} max {sent['max']:.3f} ms")  # fmt: skip
    ratio = result["ratio_p99"]
    print(f"p99 bridge/baseline: {'-' if ratio is None else f'{ratio:.2f}'}; target "
          f"{'met' if result['meets_target'] else 'NOT met'}")  # fmt: skip
    for when in ("before", "after"):
        m = result[f"machine_{when}"]
        print(f"{when}: {m['uptime']} ({m['cpus']} CPUs; nice {m['nice']}, {m['policy']})")
    print(f"federation time read through the conductor, best round trip "
          f"{result['reference_rtt_us']:.0f} us")  # fmt: skip
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "osc.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
