"""Wire-edge fuzzing at scale: the structured fuzzer of ``tests/security/edge_fuzz.py``, 100,000
examples (the CI runs 2,000).

Each example is a sequence of hostile inputs (every message type and update kind, with absurd
counters, foreign and own ids, host names for addresses, wrong types, replays at stale and future
bindings...) sent through a victim node's real receiving edge into its protocol core, between
timer ticks. A failing example stops the run with hypothesis's shrunk counterexample. Prints one
table (examples, inputs, accepted, every refusal reason at the edge and in the core, outputs
checked, time) and writes ``bench/results/fuzz.json``.

Usage: ``python3 bench/fuzz.py [--examples 100000] [--jobs 2] [--out PATH]`` (each job fuzzes
its share with its own hypothesis seed).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from hypothesis import HealthCheck, given, seed, settings, strategies as st  # noqa: E402

from tests.security.edge_fuzz import FuzzStats, drive, steps  # noqa: E402


def run_share(job: int, examples: int) -> dict[str, Any]:
    """Fuzz *examples* examples with hypothesis seed *job*; the added-up statistics."""
    stats = FuzzStats()

    @seed(job)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(example=steps, core_seed=st.integers(0, 2**16))
    def fuzz(example: list[Any], core_seed: int) -> None:
        drive(example, core_seed, stats)

    started, cpu = time.perf_counter(), time.process_time()
    fuzz()
    return {
        "examples": stats.examples,
        "inputs": stats.inputs,
        "accepted": stats.accepted,
        "outputs": stats.outputs,
        "refused": dict(stats.refused),
        "core_refused": dict(stats.core_refused),
        "wall_s": time.perf_counter() - started,
        "cpu_s": time.process_time() - cpu,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=100_000)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fuzz.json")
    args = parser.parse_args(argv)
    jobs = max(1, args.jobs)
    shares = [args.examples // jobs + (1 if i < args.examples % jobs else 0) for i in range(jobs)]
    started = time.perf_counter()
    with ProcessPoolExecutor(jobs) as pool:
        results = list(pool.map(run_share, range(jobs), shares))
    wall = time.perf_counter() - started
    total: dict[str, Any] = {
        k: sum(r[k] for r in results)
        for k in ("examples", "inputs", "accepted", "outputs", "cpu_s")
    }
    refused: Counter[str] = Counter()
    core: Counter[str] = Counter()
    for r in results:
        refused.update(r["refused"])
        core.update(r["core_refused"])

    rows = [
        ("examples (each a sequence of up to 8 inputs and ticks)", f"{total['examples']:,}"),
        ("inputs sent to the victim", f"{total['inputs']:,}"),
        ("accepted by the edge, handled by the core", f"{total['accepted']:,}"),
        ("refused at the edge (each counted once)", f"{sum(refused.values()):,}"),
        *((f"  refused: {reason}", f"{n:,}") for reason, n in refused.most_common()),
        *((f"  core refused: {reason}", f"{n:,}") for reason, n in core.most_common()),
        ("outputs checked (bound, sized, accepted by the receiver)", f"{total['outputs']:,}"),
        ("exceptions escaping, nodes leaving, bad outputs", "0"),
        ("time", f"{wall:.0f} s wall, {total['cpu_s']:.0f} s CPU, {jobs} jobs"),
    ]
    width = max(len(r[0]) for r in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    doc = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "jobs": jobs,
        "wall_s": wall,
        **total,
        "refused": dict(refused),
        "core_refused": dict(core),
        "shares": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
