"""OSC bridge benchmark: how late a scheduled message reaches the local app, in federation time.

Starts two ``stagemesh node`` processes on loopback: the conductor (the federation's time
reference) and a player whose clock is skewed by 1.7 s and drifts by 100 ppm, running the OSC
bridge (``--osc``). After the player's clock has synced, an OSC app (python-osc) on this host
schedules a message on the player every 50 ms, each 0.3 s ahead
(``/stagemesh/schedule <federation time> /note <n>``), and stamps each arrival with
``time.monotonic()``. The federation time of an arrival is read through the conductor: the
``/stagemesh/time`` exchange with the shortest round trip gives federation time minus this
host's monotonic clock. Lateness = arrival in federation time - the message's federation time.
Then the same schedule is served by a bare process (python-osc and trio with the bridge's
wake-up rule, no node), the baseline: how late this machine, as loaded as it is, wakes anyone.
Prints p50/p99/max of both beside the target (p99 <= 2 ms) and writes
``bench/results/osc.json``.

    python3 bench/osc.py [--duration 60]
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.livenodes import LiveNode, start_nodes, wait_for  # noqa: E402
from tests.oscapp import OscApp  # noqa: E402

SPACING = 0.05
AHEAD = 0.3


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


async def schedule_notes(app: OscApp, fed_minus_mono: float, duration: float) -> list[float]:
    """Schedule a note every SPACING s, AHEAD s ahead, for *duration* s; the lateness of each
    (seconds, in the clock *fed_minus_mono* converts this host's monotonic clock to)."""
    sent: dict[int, float] = {}
    lateness: list[float] = []
    count = int(duration / SPACING)

    async def receive() -> None:
        while len(lateness) < count:
            got = await app.receive("/note", timeout=10)
            lateness.append(got.at + fed_minus_mono - sent.pop(got.args[0]))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive)
        base = time.monotonic() + fed_minus_mono
        for n in range(count):
            due = base + AHEAD + n * SPACING
            sent[n] = due
            await app.send("/stagemesh/schedule", due, "/note", n)
            # Pace the sends (a load generator, not synchronisation).
            await trio.sleep(max(0.0, due - AHEAD - (time.monotonic() + fed_minus_mono)))
    return lateness


async def measure(duration: float) -> dict[str, Any]:
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
            ref, app = await app_for(nodes[0]), await app_for(nodes[1])
            try:
                fed_minus_mono, rtt = await offset(ref)
                bridge = await schedule_notes(app, fed_minus_mono, duration)
                stats = (await nodes[1].status())["osc"]
            finally:
                ref.close()
                app.close()
    baseline = await measure_baseline(duration)
    return {
        "bridge": summary(bridge),
        "baseline": summary(baseline),
        "reference_rtt_us": rtt * 1e6,
        "counters": {k: stats[k] for k in ("scheduled_sent", "late_on_arrival", "errors")},
    }


async def measure_baseline(duration: float) -> list[float]:
    """The same schedule served by a bare process (python-osc + trio, the bridge's wake-up
    rule, no node, times in this host's monotonic clock): how late this machine wakes anyone."""
    process = await trio.lowlevel.open_process(
        [sys.executable, __file__, "--serve-baseline"], stdout=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        port = int((await process.stdout.receive_some(64)).decode().split()[0])
        app = OscApp("127.0.0.1", port)
        try:
            return await schedule_notes(app, 0.0, duration)
        finally:
            app.close()
    finally:
        process.kill()
        await process.wait()


async def serve_baseline() -> None:
    from pythonosc.osc_message import OscMessage
    from pythonosc.osc_message_builder import OscMessageBuilder

    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    print(sock.getsockname()[1], flush=True)
    queue: list[tuple[float, int, tuple[str, int]]] = []
    wake = trio.Event()

    async def receive() -> None:
        nonlocal wake
        while True:
            data, src = await sock.recvfrom(8192)
            message = OscMessage(data)
            due, _, n = message.params
            heapq.heappush(queue, (due, n, src))
            wake.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive)
        while True:
            wake = trio.Event()
            if not queue:
                await wake.wait()
                continue
            delay = queue[0][0] - time.monotonic()
            if delay > 0.0012:
                with trio.move_on_after(delay - 0.0012):
                    await wake.wait()
                continue
            if delay > 0:
                time.sleep(delay)  # noqa: ASYNC251 (what the bridge does)
            _, n, src = heapq.heappop(queue)
            builder = OscMessageBuilder("/note")
            builder.add_arg(n)
            await sock.sendto(builder.build().dgram, src)


def summary(lateness: list[float]) -> dict[str, float]:
    ms = [x * 1000 for x in lateness]
    return {
        "messages": len(ms),
        "p50_ms": quantile(ms, 0.5),
        "p99_ms": quantile(ms, 0.99),
        "max_ms": max(ms),
        "min_ms": min(ms),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of scheduling")
    parser.add_argument("--serve-baseline", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_baseline:
        trio.run(serve_baseline)
        return
    began = time.perf_counter()
    result = trio.run(measure, args.duration)
    result["wall_s"] = time.perf_counter() - began
    print(f"{'run':<24} {'messages':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  target")
    for name, key in (("bridge (skewed node)", "bridge"), ("bare process baseline", "baseline")):
        r = result[key]
        print(
            f"{name:<24} {r['messages']:>8} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f}"
            f" {r['max_ms']:>8.3f}  {'p99 <= 2 ms' if key == 'bridge' else ''}"
        )
    print(f"federation time read through the conductor, best round trip "
          f"{result['reference_rtt_us']:.0f} us; load {os.getloadavg()[0]:.1f}")  # fmt: skip
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "osc.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
