"""Ableton Link bridge benchmark: beat phase difference between two laptops' Link sessions.

Two network namespaces made here stand for two laptops on one network that carries gossip but
not multicast, so each has its own Link session. Each runs ``stagemesh node --link`` (clocks
skewed by +1.5 s and -1.2 s, drifting +100 and -100 ppm; the first is the conductor) and a Link
peer standing in for a DAW (``tests/link_probe.py``), which reports its session's beat at
common instants of the host's clock (Link's clock, the same in both namespaces). After the
conductor starts a 120 bpm tempo (over OSC), the phase difference between the two sessions
(beats modulo the 4-beat quantum, in seconds) is sampled 20 times a second for --duration
seconds. Prints p50/p99/max beside the target (p99 <= 1 ms) and writes
``bench/results/link.json``. Needs root (network namespaces) and ``stagemesh[link]``.

    python3 bench/link.py [--duration 60]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.linklaptops import Laptops  # noqa: E402


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(duration: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, Laptops(Path(tmp), duration + 120) as laptops:
        laptops.wait_synced()
        laptops.osc(0, "/stagemesh/tempo/start", 120.0, 4)
        took = laptops.wait_tempo(120.0)
        diffs = [abs(d) * 1e6 for d in laptops.phase_differences(duration)]
        links = [laptops.status(i)["link"] for i in (0, 1)]
        clocks = [laptops.status(i)["clock"] for i in (0, 1)]
    return {
        "samples": len(diffs),
        "p50_us": quantile(diffs, 0.5),
        "p99_us": quantile(diffs, 0.99),
        "max_us": max(diffs),
        "tempo_reached_s": took,
        "alignments": [link["alignments"] for link in links],
        "follower_error_bound_us": (clocks[1]["error_bound"] or 0.0) * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of sampling")
    args = parser.parse_args()
    began = time.perf_counter()
    result = measure(args.duration)
    result["wall_s"] = time.perf_counter() - began
    print(f"{'samples':>8} {'p50 us':>8} {'p99 us':>8} {'max us':>8}  target")
    print(
        f"{result['samples']:>8} {result['p50_us']:>8.1f} {result['p99_us']:>8.1f}"
        f" {result['max_us']:>8.1f}  p99 <= 1000"
    )
    print(f"alignments per laptop: {result['alignments']}; "
          f"tempo reached both sessions in {result['tempo_reached_s']:.1f} s")  # fmt: skip
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "link.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
