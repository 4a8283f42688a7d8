"""Live clock benchmark: pairwise agreement of federation time between real node processes.

Starts 6 ``stagemesh node`` processes on loopback in 2 orchestras, twice: once with no clock
error injected (the baseline) and once with +-2 s skew and +-100 ppm drift. After the clocks
settle it reads ``/api/clock`` of every node many times; each reading gives
``federation_time - host_time`` taken at one instant on that node, so the difference between
two nodes is their disagreement. Samples are reported for the first and the last third of the
sampling period (drift estimates need a long baseline). Prints p50/p99/max per run beside
the targets (p99 <= 1 ms required, <= 50 us the aim) and writes
``bench/results/clock.json``. The simulated figures (many seeds, LAN and loopback delay
models) come from ``bench/clock_sim.py``.

    python3 bench/clock.py [--duration 90]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness import wait_for  # noqa: E402
from tests.livenodes import LiveNode, start_nodes  # noqa: E402

NAMES = ["a1", "a2", "a3", "b1", "b2", "b3"]
SKEWS = [2.0, -2.0, 1.3, -1.7, 0.4, -0.9]


def args_for(injected: bool) -> Any:
    def args(index: int, name: str) -> list[str]:
        out = ["--no-mdns", "--orchestra", "o" + name[0]]
        if name in ("a1", "b1"):
            out.append("--conductor")
        if injected:
            out += ["--clock-skew", str(SKEWS[index])]
            out += ["--clock-drift", "100" if index % 2 else "-100"]
        return out

    return args


async def settled(nodes: list[LiveNode]) -> bool:
    for node in nodes:
        doc = await node.status()
        clock = doc["clock"]
        if doc["conductor"] is None or not clock["synced"]:
            return False
        if not clock["is_reference"] and (clock["error_bound"] or 1.0) > 0.002:
            return False
    return True


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(injected: bool, duration: float) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        async with start_nodes(Path(tmp), NAMES, args_for(injected)) as nodes:
            await wait_for(lambda: settled(nodes), 60, every=0.2, what="clocks settled")
            early: list[float] = []
            late: list[float] = []
            start = trio.current_time()
            async with httpx.AsyncClient(timeout=5) as client:
                while trio.current_time() - start < duration:
                    offsets = []
                    for node in nodes:
                        doc = (await client.get(node.status_url + "/api/clock")).json()
                        offsets.append(doc["federation_time"] - doc["host_time"])
                    diffs = [abs(a - b) for a, b in itertools.combinations(offsets, 2)]
                    elapsed = trio.current_time() - start
                    if elapsed < duration / 3:
                        early += diffs
                    elif elapsed > 2 * duration / 3:
                        late += diffs
                    await trio.sleep(0.1)  # spread the samples over time (not synchronisation)

    def summary(diffs: list[float]) -> dict[str, float]:
        return {
            "pairs": len(diffs),
            "p50_us": quantile(diffs, 0.5) * 1e6,
            "p99_us": quantile(diffs, 0.99) * 1e6,
            "max_us": max(diffs) * 1e6,
        }

    return {"first_third": summary(early), "last_third": summary(late)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--duration", type=float, default=90.0, help="seconds of sampling after settling"
    )
    args = parser.parse_args()
    began = time.perf_counter()
    baseline = trio.run(measure, False, args.duration)
    injected = trio.run(measure, True, args.duration)
    result: dict[str, Any] = {"baseline": baseline, "skew_2s_drift_100ppm": injected}
    result["wall_s"] = time.perf_counter() - began
    print(
        f"{'run':<22} {'window':<12} {'pairs':>6} {'p50 us':>8} {'p99 us':>8} {'max us':>8}"
        "  target (p99)"
    )
    for name, run in (("no injected error", baseline), ("+-2 s skew, 100 ppm", injected)):
        for window, r in run.items():
            print(
                f"{name:<22} {window:<12} {r['pairs']:>6.0f} {r['p50_us']:>8.1f}"
                f" {r['p99_us']:>8.1f} {r['max_us']:>8.1f}  <= 1000 required, <= 50 aim"
            )
    late = injected["last_third"]["p99_us"] / max(baseline["last_third"]["p99_us"], 1e-9)
    print(f"p99 with injected error / baseline p99 (last third): {late:.2f}")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "clock.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
