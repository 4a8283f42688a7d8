"""Scale benchmark: a federation of sites in the deterministic simulator, N = 1k, 10k, 100k.

Each size is ``stagemesh sim --scenario join --nodes N --sites N/100 --json`` (sites of 100
members, each its own LAN and orchestra, joined only through their supernodes' WAN tier; see
docs/simulator.md), run in a fresh process so its memory is its own. Prints one row per size
and writes ``bench/results/scale.json``:

* the join: simulated seconds until its orchestra knows it, and until every other supernode
  holds the orchestra's new summary (``< 2 min`` of wall time is the target at 100k);
* wall time (the whole run, and the join alone), CPU seconds and peak memory of the process;
* membership state: member records an ordinary member holds, and a supernode (both cores);
* what an ordinary member sends and what a supernode sends, in kbit/s (IP and UDP headers).

The member columns stay flat while N grows 100-fold: a member holds and sends what its
orchestra needs, whatever the number of other sites; only the supernodes' tier grows.

Usage: ``python3 bench/scale.py [--sizes 1000,10000,100000] [--per-site 100] [--seed 1]
[--out PATH]``. ``--quick`` runs 1k and 10k only (well under a minute). Wall times depend on the
machine's load; CPU seconds are printed beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FULL = (1_000, 10_000, 100_000)
QUICK = (1_000, 10_000)
TARGET_WALL_S = 120.0  # 100,000 nodes: the join known by all within 2 minutes of wall time


def run_size(nodes: int, per_site: int, seed: int) -> dict[str, Any]:
    """One ``stagemesh sim --sites`` run in its own process: its JSON plus its CPU seconds."""
    sites = max(1, nodes // per_site)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    argv = [sys.executable, "-m", "mesh", "sim", "--scenario", "join"]
    argv += ["--nodes", str(nodes), "--sites", str(sites), "--seed", str(seed), "--json"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1800)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode not in (0, 1):
        raise SystemExit(f"stagemesh sim failed for N={nodes}: {done.stderr.strip()}")
    row: dict[str, Any] = json.loads(done.stdout)
    row["cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    row["converged"] = done.returncode == 0
    return row


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(map(str, FULL)), help="comma-separated N")
    parser.add_argument("--quick", action="store_true", help="1k and 10k only")
    parser.add_argument("--per-site", type=int, default=100, help="members per site")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "scale.json")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else tuple(int(n) for n in args.sizes.split(","))
    started = time.perf_counter()
    rows = [run_size(n, args.per_site, args.seed) for n in sizes]

    headers = (
        "N",
        "sites",
        "join site s",
        "join all s",
        "wall s",
        "join wall s",
        "CPU s",
        "peak MiB",
        "records/member",
        "records/supernode",
        "kbit/s member",
        "kbit/s supernode",
    )
    table = [
        (
            f"{r['nodes']:,}",
            f"{r['sites']:,}",
            _s(r["join_site_s"]),
            _s(r["join_all_s"]),
            f"{r['wall_s']:.1f}",
            f"{r['join_wall_s']:.1f}",
            f"{r['cpu_s']:.1f}",
            f"{r['peak_rss_mib']:.0f}",
            f"{r['records_per_member']:.1f}",
            f"{r['records_per_supernode']:.1f}",
            f"{r['bytes_per_member_s'] * 8 / 1000:.2f}",
            f"{r['bytes_per_supernode_s'] * 8 / 1000:.2f}",
        )
        for r in rows
    ]
    widths = [max(len(x[i]) for x in [headers, *table]) for i in range(len(headers))]
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for line in table:
        print("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)))
    biggest = max(rows, key=lambda r: r["nodes"])
    ok = biggest["converged"] and biggest["wall_s"] < TARGET_WALL_S
    print(
        f"\nN={biggest['nodes']:,}: join known by all who should know it after "
        f"{_s(biggest['join_all_s'])} simulated s; the run took {biggest['wall_s']:.0f} s of "
        f"wall time, {biggest['cpu_s']:.0f} s of CPU (target < {TARGET_WALL_S:.0f} s of wall "
        f"time at 100,000): {'ok' if ok else 'MISSED (see the CPU time if the machine is busy)'}"
    )
    doc = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "per_site": args.per_site,
        "seed": args.seed,
        "runs": rows,
        "wall_s": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.out}")
    return 0 if all(r["converged"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
