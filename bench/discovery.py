"""Discovery benchmark: how fast an existing node hears of a new node on the same host.

For each method, one observer node runs discovery all along; then, repeatedly, a new node
starts (fresh id) and the time from the start of its driver to the observer's first hint for
it is recorded; the new node is stopped before the next run. Methods:

* ``beacon``: :func:`mesh._discovery.serve_beacons` (first beacon at once, 10/s for a second);
* ``mdns``: :func:`mesh._discovery.serve_mdns` as the node runs it (cooperating responder,
  multicast questions);
* ``zeroconf-default``: the same driver with python-zeroconf's default registration (RFC 6762
  probing, about 1.2 s): the baseline, measured in the same run.

Also recorded: the time until the *new* node hears of the observer (``reverse``).

Runs are ``--gap`` seconds apart (default 1.2 s): an mDNS responder does not multicast the same
record twice within one second (RFC 6762 section 6), and a beacon driver answers newcomers at
most every 50 ms, so back-to-back runs would measure the previous run's rate limits instead of a
new node joining a quiet network. (The first direction, existing node hears the new one, is not
affected by either.)

Everything runs on loopback; as root, the benchmark re-runs itself in a private network
namespace (``unshare -n``, only ``lo`` up) so not even loopback multicast is shared with the
host. Prints a table and writes ``bench/results/discovery.json``.

Usage: ``python bench/discovery.py [--runs 30] [--baseline-runs 15] [--gap 1.2] [--out PATH]
[--no-unshare]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import trio

from mesh._discovery import DiscoveryConfig, PeerHint, serve_beacons, serve_mdns

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness import free_port  # noqa: E402

TARGET_P50_MS = 150.0
TARGET_P99_MS = 500.0
TARGET_RATIO = 8.0
INSIDE = "STAGEMESH_BENCH_NETNS"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


class Arrivals:
    """First hint time per node id (perf_counter), with an event per awaited id."""

    def __init__(self) -> None:
        self.first: dict[str, float] = {}
        self.waiting: dict[str, trio.Event] = {}

    def __call__(self, hint: PeerHint) -> None:
        if hint.node_id is None or hint.node_id in self.first:
            return
        self.first[hint.node_id] = time.perf_counter()
        event = self.waiting.pop(hint.node_id, None)
        if event is not None:
            event.set()

    async def wait(self, node_id: str) -> float:
        if node_id not in self.first:
            event = self.waiting.setdefault(node_id, trio.Event())
            await event.wait()
        return self.first[node_id]


Driver = Callable[..., Awaitable[None]]


async def measure(
    name: str, driver: Driver, runs: int, beacon_port: int, limit: float, gap: float
) -> dict[str, Any]:
    federation = f"bench-{secrets.token_hex(3)}"

    def config(node: str, port: int) -> DiscoveryConfig:
        return DiscoveryConfig(
            federation=federation,
            node_id=secrets.token_hex(16),
            name=node,
            orchestra="bench",
            gossip_port=port,
            bind="127.0.0.1",
            beacon_port=beacon_port,
        )

    observer = config("observer", 7471)
    seen_by_observer = Arrivals()
    forward: list[float] = []
    reverse: list[float] = []
    failures = 0
    async with trio.open_nursery() as outer:
        await outer.start(driver, observer, seen_by_observer)
        await trio.sleep(1.5)  # the observer is established (past its fast start)
        for i in range(runs):
            new = config(f"new{i}", 8000 + i)
            seen_by_new = Arrivals()
            async with trio.open_nursery() as nursery:
                start = time.perf_counter()
                nursery.start_soon(partial(driver, new, seen_by_new))
                with trio.move_on_after(limit) as scope:
                    heard = await seen_by_observer.wait(new.node_id)
                    forward.append((heard - start) * 1000)
                    back = await seen_by_new.wait(observer.node_id)
                    reverse.append((back - start) * 1000)
                if scope.cancelled_caught:
                    failures += 1
                nursery.cancel_scope.cancel()
            await trio.sleep(gap)  # runs do not overlap (see module docstring)
            print(f"  {name} run {i + 1}/{runs}: {forward[-1] if forward else float('nan'):.1f} ms",
                  file=sys.stderr, flush=True)  # fmt: skip
        outer.cancel_scope.cancel()
    return {
        "method": name,
        "runs": runs,
        "failures": failures,
        "p50_ms": _percentile(forward, 0.5) if forward else None,
        "p99_ms": _percentile(forward, 0.99) if forward else None,
        "max_ms": max(forward) if forward else None,
        "mean_ms": statistics.fmean(forward) if forward else None,
        "reverse_p50_ms": _percentile(reverse, 0.5) if reverse else None,
        "reverse_p99_ms": _percentile(reverse, 0.99) if reverse else None,
        "samples_ms": [round(x, 3) for x in forward],
        "reverse_samples_ms": [round(x, 3) for x in reverse],
    }


async def run_all(runs: int, baseline_runs: int, gap: float) -> list[dict[str, Any]]:
    port = free_port("udp")
    return [
        await measure("beacon", serve_beacons, runs, port, 5.0, gap),
        await measure("mdns", serve_mdns, runs, port, 5.0, gap),
        await measure(
            "zeroconf-default",
            partial(serve_mdns, cooperating_responders=False),
            baseline_runs,
            port,
            10.0,
            gap,
        ),
    ]


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:8.1f}"


def report(results: list[dict[str, Any]], where: str) -> dict[str, Any]:
    baseline = next(r for r in results if r["method"] == "zeroconf-default")
    print(f"\nfirst discovery of a new node on one host ({where})")
    header = f"{'method':18} {'runs':>4} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
    header += f"{'x faster':>9} {'rev p50':>8} {'rev p99':>8}  target"
    print(header)
    print("-" * len(header))
    verdicts = {}
    for r in results:
        ratio = baseline["p50_ms"] / r["p50_ms"] if r["p50_ms"] else None
        r["speedup_vs_zeroconf_default"] = ratio
        if r is baseline:
            target = "(baseline)"
        else:
            ok = (
                r["p50_ms"] <= TARGET_P50_MS
                and r["p99_ms"] <= TARGET_P99_MS
                and ratio is not None
                and ratio >= TARGET_RATIO
                and not r["failures"]
            )
            verdicts[r["method"]] = ok
            target = f"p50<={TARGET_P50_MS:g} p99<={TARGET_P99_MS:g} >={TARGET_RATIO:g}x: "
            target += "met" if ok else "MISSED"
        print(
            f"{r['method']:18} {r['runs']:>4} {_fmt(r['p50_ms'])} {_fmt(r['p99_ms'])} "
            f"{_fmt(r['max_ms'])} {ratio:>8.1f}x {_fmt(r['reverse_p50_ms'])} "
            f"{_fmt(r['reverse_p99_ms'])}  {target}"
        )
    print(
        "\n'rev' = time until the new node hears of the existing one. "
        "p99 over few runs is close to the maximum."
    )
    return {
        "benchmark": "discovery",
        "where": where,
        "targets": {"p50_ms": TARGET_P50_MS, "p99_ms": TARGET_P99_MS, "ratio": TARGET_RATIO},
        "met": verdicts,
        "results": results,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--baseline-runs", type=int, default=15)
    parser.add_argument("--gap", type=float, default=1.2, help="seconds between runs")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "discovery.json"))
    parser.add_argument("--no-unshare", action="store_true", help="run on the host's loopback")
    args = parser.parse_args()

    if (
        not args.no_unshare
        and os.environ.get(INSIDE) != "1"
        and os.geteuid() == 0
        and shutil.which("unshare")
    ):
        # Re-run inside a private network namespace with only loopback up.
        script = 'ip link set lo up && exec "$0" "$@"'
        argv = [sys.executable, __file__, *sys.argv[1:]]
        env = {**os.environ, INSIDE: "1"}
        return subprocess.call(["unshare", "-n", "sh", "-c", script, *argv], env=env)

    where = "private network namespace, loopback" if os.environ.get(INSIDE) else "loopback"
    results = trio.run(run_all, args.runs, args.baseline_runs, args.gap)
    summary = report(results, where)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out}")
    return 0 if all(summary["met"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
