"""Station manager benchmark: the manager core under the deterministic simulation, many seeds.

Runs :func:`roles._manager_sim.run_manager_seed` (3 conductor candidates running the real
``ManagerCore``, 4 stations deciding with the real relay checks, ``StationState`` and
validator, operators signing real Ed25519 orders, a forger; 60 s of faults: crashes, restarts
with another policy, slow applies, lagging views, stalls, handoffs, local changes, 2% loss)
and prints: how many seeds broke a property (a station running something no operator signed,
a refused update that changed something, a forged order kept, no convergence within 120 s),
the time from the end of the faults until every station runs its desired configuration or
the conductor reports the station's typed refusal (virtual seconds, p50/p99/max), what
happened in all the runs, and the wall time. Writes ``bench/results/roles_manager.json``.

    python3 bench/roles_manager.py [--seeds 10000] [--first 0] [--jobs 1]

Exit status 1 if any seed failed.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from roles._manager_sim import SeedResult, run_manager_seed, summarize  # noqa: E402

SHOWN = (
    "pushes (replace)",
    "pushes (merge)",
    "pushes (forget)",
    "pushes applied",
    "pushes kept",
    "push answered BlockedRole",
    "push answered StaleOrder",
    "applies (reconcile)",
    "station refused not-conductor",
    "station refused StaleOrder",
    "station refused BlockedRole",
    "stations set aside",
    "crashes (station)",
    "crashes (candidate)",
    "stalls",
    "handoffs",
    "conductor changes",
    "local changes",
    "forgeries",
    "forger reigns",
    "forged push refused",
    "forged apply refused",
    "forged orders dropped",
    "station refused signature",
    "acknowledged orders lost",
)


def _run(seeds: list[int]) -> list[SeedResult]:
    return [run_manager_seed(seed) for seed in seeds]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10_000, help="how many seeds (10000)")
    parser.add_argument("--first", type=int, default=0, help="the first seed (0)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (1)")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "roles_manager.json"
    )
    args = parser.parse_args(argv)
    seeds = list(range(args.first, args.first + args.seeds))
    chunks = [seeds[k :: args.jobs * 8] for k in range(args.jobs * 8)]
    started = time.perf_counter()
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            parts = list(pool.map(_run, chunks))
    else:
        parts = [_run(chunk) for chunk in chunks]
    wall = time.perf_counter() - started
    results = sorted((r for part in parts for r in part), key=lambda r: r.seed)
    summary = summarize(results)

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    print("station manager under the simulation (virtual seconds after the faults end)")
    header = f"{'seeds':>6} {'failed':>6} {'p50 s':>6} {'p99 s':>6} {'max s':>6} {'wall s':>7}"
    print(header)
    print("-" * len(header))
    print(
        f"{summary['seeds']:>6} {summary['failures']:>6} {fmt(summary['converge_p50']):>6}"
        f" {fmt(summary['converge_p99']):>6} {fmt(summary['converge_max']):>6} {wall:>7.1f}"
    )
    totals = summary["totals"]
    print()
    print(f"{'over all the runs':<32} {'count':>8}")
    for name in SHOWN:
        print(f"{name:<32} {totals.get(name, 0):>8}")
    for result in results:
        if not result.ok:
            print(f"seed {result.seed}: {' / '.join(result.failures[:3])}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    document: dict[str, Any] = {
        "benchmark": "roles_manager",
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "first_seed": args.first,
        "wall_seconds": wall,
        **summary,
        "failed_seeds": summary["failed_seeds"][:50],
        "failures_shown": {
            str(r.seed): list(r.failures[:3]) for r in results if not r.ok
        },
    }
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
