"""Live benchmark: N real ``stagemesh node`` processes on loopback (default 20).

Measures the time until every node sees every other one (beacon discovery on loopback), the
time until every node agrees a ``kill -9``-ed node is dead, and each node's CPU and memory in a
steady window. Prints a table and writes ``bench/results/live.json``.

    python3 bench/live.py [--nodes 20] [--steady 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness import wait_for  # noqa: E402
from tests.livenodes import LiveNode, start_nodes  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def all_see(nodes: list[LiveNode], paths: set[str], state: str) -> bool:
    for node in nodes:
        states = await node.states()
        if any(states.get(p) != state for p in paths):
            return False
    return True


async def run(count: int, steady: float) -> dict[str, float]:
    names = [f"n{i:02d}" for i in range(count)]
    with tempfile.TemporaryDirectory() as tmp:
        started = trio.current_time()
        async with start_nodes(Path(tmp), names, ["--no-mdns"]) as nodes:
            ready = trio.current_time() - started
            paths = {f"/o1/{n}" for n in names}
            full = await wait_for(
                lambda: all_see(nodes, paths, "alive"), 120, every=0.1, what="membership"
            )
            cpu0 = {n.process.pid: cpu_seconds(n.process.pid) for n in nodes}
            await trio.sleep(steady)  # the measurement window itself, not synchronisation
            cpu = [(cpu_seconds(p) - c) / steady * 100 for p, c in cpu0.items()]
            rss = [rss_mib(n.process.pid) for n in nodes]
            victim, rest = nodes[0], nodes[1:]
            victim.kill()
            dead = await wait_for(
                lambda: all_see(rest, {"/o1/" + victim.name}, "dead"), 60, every=0.05, what="dead"
            )
    return {
        "nodes": count,
        "all_ready_s": ready,
        "full_membership_after_ready_s": full,
        "crash_agreed_s": dead,
        "cpu_percent_per_node_mean": statistics.mean(cpu),
        "cpu_percent_per_node_max": max(cpu),
        "rss_mib_per_node_mean": statistics.mean(rss),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--steady", type=float, default=10.0)
    args = parser.parse_args()
    began = time.perf_counter()
    result = trio.run(run, args.nodes, args.steady)
    result["wall_s"] = time.perf_counter() - began
    rows = [
        ("nodes", f"{result['nodes']}", ""),
        ("all processes ready", f"{result['all_ready_s']:.2f} s", ""),
        ("full membership after ready", f"{result['full_membership_after_ready_s']:.2f} s", ""),
        ("kill -9 agreed dead by all", f"{result['crash_agreed_s']:.2f} s", "p99 <= 4 s"),
        (
            "CPU per node (mean / max)",
            "{:.1f}% / {:.1f}%".format(
                result["cpu_percent_per_node_mean"], result["cpu_percent_per_node_max"]
            ),
            "",
        ),
        ("RSS per node (mean)", f"{result['rss_mib_per_node_mean']:.1f} MiB", ""),
    ]
    print(f"{'figure':<30} {'measured':<18} target")
    for name, value, target in rows:
        print(f"{name:<30} {value:<18} {target}")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "live.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
