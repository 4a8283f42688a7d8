"""Orphans benchmark: how fast a killed station's role processes are gone, and what the guard
costs.

Runs a real ``stagemesh node --roles`` station with one role (a Python sleeper that has a child
of its own, in the role's process group) ``--rounds`` times: waits until the role runs,
``kill -9`` the node, and times until the role and its child are gone (stopped by the guardian:
SIGTERM to the group). Also measures, in process, what opening a supervisor costs (it starts
the guardian) and the guardian's resident memory. Prints a table and writes
``bench/results/orphans.json``.

    python3 bench/orphans.py [--rounds 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from roles import open_supervisor  # noqa: E402
from roles._guardian import proc_stat, process_group_alive  # noqa: E402
from tests.harness import wait_for  # noqa: E402
from tests.livenodes import start_nodes  # noqa: E402

ROLE = [
    sys.executable,
    "-c",
    "import subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
    "print('child', child.pid, flush=True)\n"
    "time.sleep(300)\n",
]


def alive(pid: int) -> bool:
    stat = proc_stat(pid)
    return stat is not None and stat.state not in ("Z", "X")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def one_kill(tmp: Path) -> float:
    """Seconds from ``kill -9`` of a station node to its role and the role's child gone."""
    station = tmp / "station.json"
    station.write_text(json.dumps({"roles": {"command": {"r": {"command": ROLE}}}}))
    async with start_nodes(tmp, ["st"], ["--no-mdns", "--roles", str(station)]) as (node,):
        found: list[tuple[int, int]] = []

        async def running() -> bool:
            doc = await node.status()
            for i in doc["roles"]["station"]["instances"]:
                lines = [x for x in i["tail"] if x.startswith("child ")]
                if i["state"] == "running" and lines:
                    found.append((int(i["pid"]), int(lines[-1].split()[1])))
            return bool(found)

        await wait_for(running, 30, what="the role running")
        pid, child = found[-1]
        began = time.perf_counter()
        node.kill()
        while alive(pid) or alive(child) or process_group_alive(pid):
            await trio.sleep(0.002)
            if time.perf_counter() - began > 30:
                raise AssertionError("the role outlived its station by 30 s")
        return time.perf_counter() - began


async def open_cost(rounds: int) -> tuple[list[float], int]:
    """Seconds to open (and close) a supervisor, and the guardian's RSS in KiB."""
    times = []
    rss = 0
    for _ in range(rounds):
        began = time.perf_counter()
        async with open_supervisor() as sup:
            times.append(time.perf_counter() - began)
            guardian = sup._guardian
            if guardian is not None and guardian.pid is not None:
                rss = max(rss, rss_kib(guardian.pid))
    return times, rss


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "p50": statistics.median(ordered),
        "p99": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "max": ordered[-1],
    }


async def main(rounds: int) -> dict[str, Any]:
    kills = []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory(prefix="stagemesh-orphans-") as tmp:
            kills.append(await one_kill(Path(tmp)))
    opens, rss = await open_cost(rounds)
    return {
        "kill9_to_roles_gone_s": summary(kills),
        "open_supervisor_s": summary(opens),
        "guardian_rss_kib": rss,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    options = parser.parse_args()
    result = trio.run(main, options.rounds)
    print(f"{'figure':<28} {'n':>4} {'p50':>9} {'p99':>9} {'max':>9}")
    for name in ("kill9_to_roles_gone_s", "open_supervisor_s"):
        row = result[name]
        print(
            f"{name:<28} {row['n']:>4} {row['p50'] * 1000:>7.1f}ms "
            f"{row['p99'] * 1000:>7.1f}ms {row['max'] * 1000:>7.1f}ms"
        )
    print(f"{'guardian_rss':<28} {result['guardian_rss_kib'] / 1024:>6.1f} MiB")
    out = ROOT / "bench" / "results" / "orphans.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
