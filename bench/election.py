"""Election benchmark: time to agreement over many seeds of the election harness.

Runs the election's deterministic random harness, :mod:`mesh._electionsim` (election cores on
the project's simulator: a lossy, partitionable network with modelled membership views;
``tests/test_election_core.py`` runs 500 seeds of it) and prints, per scenario,
the time until every live node sees the same single conductor and supernode per orchestra:

* ``node-chaos``: the same question asked of the real thing: :func:`mesh._chaos.run_chaos`
  runs whole :class:`~mesh._nodecore.NodeCore` nodes (membership, elections, clock) in the
  project's simulator with skewed, drifting clocks, loss, crashes, restarts, stalls and
  partitions for 20 s; time counted from the end of the faults until every running node sees
  the same members alive, one conductor and one supernode per orchestra.
* ``registry-chaos``: the same with two sites that only a simulated registry joins
  (:mod:`mesh._simregistry`), as ``--registry`` runs them: each site its own LAN, a WAN link
  of the seed's own delay (5-40 ms), jitter and loss (0-3%) between them, the site tier (the
  supernodes on the ``wan`` profile across); the registry arbitrates the conductor
  (compare-and-set, term as fencing token) through its own faults (killed, restarted empty,
  reset, slow, unreachable from a site, the sites cut from each other); at most one conductor
  wherever the registry's fencing promises it, one conductor per federation after the heal,
  which the registry records; time counted from the end of the faults. ``track`` counts the
  seeds with bound samples of a site whose top tracked the registry without a deadband
  (reported apart, docs/testing.md).
* ``chaos``: 5-14 nodes in 2-4 orchestras; loss, duplication, delay and reordering, crashes,
  restarts, leaves, stalls, false suspicions and partitions for 5-25 s, then a connected
  loss-free tail; time counted from the end of the faults.
* ``chaos-large``: the same with 30-60 nodes.
* ``crash``: the conductor of a quiet cluster crashes (failure detection modelled at 1.5-2.8 s);
  time counted from the crash: the failover time.
* ``leave``: the conductor leaves gracefully and hands off; time counted from the leave.

Usage: ``python bench/election.py [--seeds 10000] [--large-seeds 500] [--failover-seeds 2000]
[--registry-seeds 10000] [--only registry-chaos] [--jobs 2] [--out bench/results/election.json]``.
Exit status 1 if any seed failed to agree.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

TARGETS = {
    "node-chaos": "bounded (real cores in mesh._sim; membership healing included)",
    "registry-chaos": "one conductor across sites, the registry's (test: <= {registry:.0f} s)",
    "chaos": "bounded; the test asserts <= {bound:g} s",
    "chaos-large": "bounded",
    "crash": "p99 <= 5 s (DESIGN.md: conductor failover after a crash)",
    "leave": "<= 0.5 s (DESIGN.md: planned handoff)",
}


def load_harness() -> ModuleType:
    """The election's harness module (importable once the repository is on the path)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import mesh._electionsim

    return mesh._electionsim


def _run_chunk(args: tuple[str, list[int]]) -> list[dict[str, Any]]:
    scenario, seeds = args
    if scenario in ("node-chaos", "registry-chaos"):
        return _run_node_chunk(seeds, registry=scenario == "registry-chaos")
    harness = load_harness()
    return [
        {
            "seed": r.seed,
            "ok": r.ok,
            "failure": r.failure,
            "agreement_after": r.agreement_after,
            "views_settled_after": r.views_settled_after,
            "nodes": r.nodes,
            "claims": r.claims,
            "step_downs": r.step_downs,
            "messages": r.messages,
        }
        for r in harness.run_seeds(seeds, scenario)
    ]


def _run_node_chunk(seeds: list[int], registry: bool = False) -> list[dict[str, Any]]:
    """Seeds of the whole-node chaos run in the project's simulator (mesh._chaos), with or
    without the simulated registry."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from mesh._chaos import run_chaos

    rows = []
    for seed in seeds:
        r = run_chaos(seed, registry=registry)
        rows.append(
            {
                "seed": r.seed,
                "ok": r.ok,
                "failure": r.failure,
                "agreement_after": r.agreement_s,
                "views_settled_after": 0.0,
                "nodes": r.nodes,
                "claims": 0,
                "step_downs": 0,
                "messages": 0,
                "clock_error": r.max_clock_error_s,
                "tracking_violations": r.tracking_violations,
            }
        )
    return rows


def quantile(values: list[float], q: float) -> float:
    """The *q* quantile (nearest rank) of sorted *values*."""
    return values[min(len(values) - 1, max(0, round(q * len(values)) - 1))]


def run_scenario(scenario: str, seeds: int, jobs: int) -> dict[str, Any]:
    """Run *seeds* seeds of *scenario* on *jobs* processes and summarise them."""
    chunks = [list(range(k, seeds, jobs * 4)) for k in range(jobs * 4)]
    started = time.perf_counter()
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            parts = list(pool.map(_run_chunk, [(scenario, c) for c in chunks]))
    else:
        parts = [_run_chunk((scenario, c)) for c in chunks]
    wall = time.perf_counter() - started
    rows = [row for part in parts for row in part]
    times = sorted(r["agreement_after"] for r in rows if r["agreement_after"] is not None)
    own = sorted(
        max(0.0, r["agreement_after"] - r["views_settled_after"])
        for r in rows
        if r["agreement_after"] is not None
    )
    failures = [r for r in rows if not r["ok"]]
    worst = max(rows, key=lambda r: r["agreement_after"] or 0.0)
    return {
        "seeds": len(rows),
        "failures": len(failures),
        "failed_seeds": [r["seed"] for r in failures][:20],
        "p50": quantile(times, 0.50) if times else None,
        "p99": quantile(times, 0.99) if times else None,
        "max": times[-1] if times else None,
        "worst_seed": worst["seed"],
        "election_share_p99": quantile(own, 0.99) if own else None,
        "election_share_max": own[-1] if own else None,
        "mean_nodes": statistics.fmean(r["nodes"] for r in rows),
        "mean_claims": statistics.fmean(r["claims"] for r in rows),
        "mean_step_downs": statistics.fmean(r["step_downs"] for r in rows),
        "tracking_seeds": sum(1 for r in rows if r.get("tracking_violations")),
        "wall_seconds": wall,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10_000, help="seeds of the chaos scenario")
    parser.add_argument(
        "--large-seeds", type=int, default=500, help="seeds of the chaos-large scenario"
    )
    parser.add_argument(
        "--failover-seeds", type=int, default=2_000, help="seeds of the crash/leave scenarios"
    )
    parser.add_argument(
        "--node-seeds",
        type=int,
        default=10_000,
        help="seeds of the whole-node chaos run in the project simulator (real membership, "
        "election and clock cores; 6 nodes, 2 orchestras, 2 candidates, 20 s of faults)",
    )
    parser.add_argument(
        "--registry-seeds",
        type=int,
        default=10_000,
        help="seeds of the whole-node chaos run with two sites joined by a simulated registry",
    )
    parser.add_argument(
        "--only", choices=sorted(TARGETS), action="append", help="run only this scenario"
    )
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "election.json")
    args = parser.parse_args(argv)
    harness = load_harness()
    bound = harness.AGREEMENT_BOUND
    from mesh._chaos import registry_agreement_bound_s

    results: dict[str, Any] = {}
    for scenario, seeds in (
        ("node-chaos", args.node_seeds),
        ("registry-chaos", args.registry_seeds),
        ("chaos", args.seeds),
        ("chaos-large", args.large_seeds),
        ("crash", args.failover_seeds),
        ("leave", args.failover_seeds),
    ):
        if args.only and scenario not in args.only:
            continue
        results[scenario] = run_scenario(scenario, seeds, args.jobs)
        results[scenario]["target"] = TARGETS[scenario].format(
            bound=bound, registry=registry_agreement_bound_s(6, 2)
        )

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    header = (
        f"{'scenario':<14} {'seeds':>6} {'fail':>4} {'p50 s':>7} {'p99 s':>7} {'max s':>7}"
        f" {'elect p99':>9} {'track':>5} {'worst seed':>10}  target"
    )
    print("time to agreement on one conductor and one supernode per orchestra (simulated)")
    print(header)
    print("-" * len(header))
    for scenario, r in results.items():
        print(
            f"{scenario:<14} {r['seeds']:>6} {r['failures']:>4} {fmt(r['p50']):>7}"
            f" {fmt(r['p99']):>7} {fmt(r['max']):>7} {fmt(r['election_share_p99']):>9}"
            f" {r['tracking_seeds']:>5} {r['worst_seed']:>10}  {r['target']}"
        )
    print(
        "elect p99: time from the last membership-view change to agreement (the election's own"
        " share; views are modelled, not the real membership core)"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": "election",
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "agreement_bound": bound,
        "scenarios": results,
    }
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 1 if any(r["failures"] for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
