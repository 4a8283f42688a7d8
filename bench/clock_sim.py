"""Federation clock agreement in the deterministic clock simulation, over many seeds.

Runs the harness of ``tests/test_clock_sim.py`` (the clock core with skewed, drifting local
clocks and a seeded network) for each delay profile and prints, per profile, the agreement of
every synced follower with the reference after warm-up, against the DESIGN.md target
(p99 <= 1 ms required, <= 50 us the aim), plus the properties (bound violations, time going
back). Writes the same numbers as JSON.

    python3 bench/clock_sim.py [--seeds 200] [--duration 60] [--json bench/results/clock_sim.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parent.parent


def _load_harness() -> Any:
    path = _ROOT / "tests" / "test_clock_sim.py"
    spec = importlib.util.spec_from_file_location("clock_sim_harness", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def measure(h: Any, profile: Any, seeds: int, duration: float, change: bool) -> dict[str, Any]:
    """Run *seeds* seeds of one profile; return the row of the table."""
    diffs: list[float] = []
    bounds: list[float] = []
    sync_times: list[float] = []
    violations = decreases = failed_seeds = 0
    start = time.perf_counter()
    for seed in range(seeds):
        sim, r = h.random_run(seed, profile, duration, reference_change=change)
        diffs += r.diffs
        violations += len(r.violations)
        decreases += r.decreases
        failed_seeds += bool(r.violations or r.decreases)
        sync_times += r.sync_delays
        bounds += [
            s.error_bound for k, s in r.snapshots.items() if k != f"n{sim.reference}" and s.synced
        ]
    wall = time.perf_counter() - start
    pct = h.percentile
    return {
        "profile": profile.name + (" + reference change" if change else ""),
        "seeds": seeds,
        "duration_s": duration,
        "samples": len(diffs),
        "p50_us": pct(diffs, 0.50) * 1e6,
        "p99_us": pct(diffs, 0.99) * 1e6,
        "max_us": max(diffs) * 1e6,
        "median_error_bound_us": statistics.median(bounds) * 1e6,
        "median_time_to_synced_s": statistics.median(sync_times),  # from being given a reference
        "worst_time_to_synced_s": max(sync_times),
        "bound_violations": violations,
        "time_went_back": decreases,
        "failed_seeds": failed_seeds,
        "wall_s": wall,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--duration", type=float, default=60.0, help="simulated seconds per seed")
    parser.add_argument("--json", type=Path, default=_ROOT / "bench" / "results" / "clock_sim.json")
    args = parser.parse_args(argv)
    h = _load_harness()
    runs = [(h.LOOPBACK, False), (h.LOOPBACK_UNIFORM, False), (h.LAN, False), (h.LAN, True)]
    rows = [measure(h, p, args.seeds, args.duration, change) for p, change in runs]
    print(
        f"clock agreement with the reference, {args.seeds} seeds x {args.duration:g} s simulated,"
        " 2-5 nodes, skew +-2 s and drift +-200 ppm on every node; after warm-up (half the run)"
    )
    print("target (DESIGN.md): p99 <= 1000 us required, <= 50 us the aim")
    header = (
        f"{'profile':<30} {'p50 us':>8} {'p99 us':>8} {'max us':>8} {'bound us':>9}"
        f" {'sync p50/max s':>14} {'viol':>5} {'back':>5} {'wall s':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['profile']:<30} {r['p50_us']:>8.1f} {r['p99_us']:>8.1f} {r['max_us']:>8.1f}"
            f" {r['median_error_bound_us']:>9.1f}"
            f" {r['median_time_to_synced_s']:>6.2f} / {r['worst_time_to_synced_s']:>5.2f}"
            f" {r['bound_violations']:>5} {r['time_went_back']:>5} {r['wall_s']:>7.1f}"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"benchmark": "clock_sim", "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.json}")
    ok = all(r["failed_seeds"] == 0 and r["p99_us"] <= 1000 for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
