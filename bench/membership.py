"""Membership benchmark: the SWIM/Lifeguard core in the deterministic simulator, LAN profile.

Prints one table beside DESIGN.md's targets and writes ``bench/results/membership.json``:

* join known by all (``join`` scenario) for N = 30, 200, 1000: median and worst over seeds, and
  the share of seeds within the target;
* crash agreed dead by all (``crash`` scenario) for N = 30, 50, 200, 1000: the median of the
  per-run p50 and the worst per-run p99 over seeds;
* bandwidth per node in a quiet group (no loss, nothing injected; IP and UDP headers counted,
  push-pull TCP frames too) for N = 30, 50, 200, 1000;
* false deaths under 5% loss with 1 s process stalls (each node stalls about once a minute)
  over one simulated hour at N = 50. Two counts: ``false deaths`` as ``stagemesh sim`` counts
  them (a running node declared dead at the incarnation it is running with), and ``stale``
  declarations (a running node declared dead at an older incarnation it had already refuted,
  by a node that missed the refutation; repaired when the newer incarnation arrives);
* simulator speed at N = 50 (simulated seconds per wall second, from the quiet run);
* a 10,000-node join: its simulated join time, wall time and CPU time.

Every run is seeded, so each row is reproducible with ``stagemesh sim``. Wall times depend on
the machine's load; CPU seconds are printed beside them.

Usage: ``python3 bench/membership.py [--quick] [--jobs 2] [--out PATH]``. ``--quick`` runs a
reduced version (fewer seeds, shorter soaks, a 2,000-node join) in well under a minute.
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
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mesh._membership import MemberEvent, Membership  # noqa: E402
from mesh._profiles import get_profile  # noqa: E402
from mesh._scenarios import SETTLE_S, _schedule_stalls, run_scenario  # noqa: E402
from mesh._sim import LinkModel, SimNode, Simulator  # noqa: E402

LAN = get_profile("lan")

FULL = {
    "join": {30: 10, 200: 10, 1000: 3},
    "crash": {30: 10, 50: 10, 200: 5, 1000: 3},
    "quiet": {30: 120.0, 50: 120.0, 200: 120.0, 1000: 60.0},
    "hour": 3600.0,
    "big_join": 10_000,
}
QUICK = {
    "join": {30: 3, 200: 3, 1000: 1},
    "crash": {30: 3, 50: 3, 200: 2, 1000: 1},
    "quiet": {30: 30.0, 50: 30.0, 200: 20.0, 1000: 10.0},
    "hour": 300.0,
    "big_join": 2_000,
}
JOIN_TARGET = {30: 1.0, 200: 1.5}
CRASH_P50_TARGET, CRASH_P99_TARGET = 2.0, 4.0  # N <= 50
BANDWIDTH_TARGET_KBIT = 10.0  # N = 50
SPEED_TARGET = 10.0  # x real time at N = 50
BIG_JOIN_TARGET_S = 60.0


# ---------------------------------------------------------------------------------------------
# Runs (each in a worker process; all return plain dicts)


def run_join(nodes: int, seed: int) -> dict[str, Any]:
    r = run_scenario("join", nodes, seed)
    return {"nodes": nodes, "seed": seed, "join_all_s": r.join_all_s, "converged": r.converged}


def run_crash(nodes: int, seed: int) -> dict[str, Any]:
    r = run_scenario("crash", nodes, seed)
    return {
        "nodes": nodes,
        "seed": seed,
        "p50_s": r.dead_all_p50_s,
        "p99_s": r.dead_all_p99_s,
        "false_deaths": r.false_deaths,
        "converged": r.converged,
    }


class _Deaths:
    """Counts "dead" events about running nodes: at their running incarnation (false deaths)
    or at an older one they had refuted (stale)."""

    def __init__(self) -> None:
        self.sim: Simulator | None = None
        self.false: set[tuple[str, int]] = set()
        self.stale = 0
        self.suspicions = 0

    def __call__(self, node: SimNode, event: Any, now: float) -> None:
        if type(event) is not MemberEvent:
            return
        if event.kind == "suspect":
            self.suspicions += 1
        if event.kind != "dead" or self.sim is None:
            return
        member = event.member
        victim = self.sim.nodes.get(member.address)
        if victim is None or not victim.up or victim.node_id != member.node_id:
            return
        if victim.core.incarnation == member.incarnation:
            self.false.add((member.node_id, member.incarnation))
        else:
            self.stale += 1


def run_soak(
    nodes: int, seed: int, duration: float, loss: float = 0.0, stall_every: float = 0.0
) -> dict[str, Any]:
    """A group left alone for *duration* simulated seconds after settling."""
    deaths = _Deaths()
    sim = Simulator(seed, LAN, LinkModel(loss=loss), on_event=deaths)
    deaths.sim = sim
    sim.converged_group(nodes)
    if stall_every > 0:
        _schedule_stalls(sim, stall_every, 1.0)
    sim.run_until(SETTLE_S)
    msgs0 = sum(n.sent_messages for n in sim.nodes.values())
    bytes0 = sum(n.sent_bytes for n in sim.nodes.values())
    wall0, cpu0 = time.perf_counter(), time.process_time()
    sim.run_until(SETTLE_S + duration)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    msgs = sum(n.sent_messages for n in sim.nodes.values()) - msgs0
    sent = sum(n.sent_bytes for n in sim.nodes.values()) - bytes0
    refutations = 0
    for n in sim.nodes.values():
        assert isinstance(n.core, Membership)
        refutations += n.core.statistics().refutations
    return {
        "nodes": nodes,
        "seed": seed,
        "duration_s": duration,
        "loss": loss,
        "stall_every_s": stall_every,
        "false_deaths": len(deaths.false),
        "stale_declarations": deaths.stale,
        "suspect_events": deaths.suspicions,
        "refutations": refutations,
        "msgs_per_node_s": msgs / nodes / duration,
        "kbit_per_node_s": sent * 8 / 1000 / nodes / duration,
        "wall_s": wall,
        "cpu_s": cpu,
        "sim_per_wall": duration / wall,
        "sim_per_cpu": duration / max(cpu, 1e-9),
        "trace_hash": sim.trace_hash(),
    }


def run_big_join(nodes: int, seed: int = 1) -> dict[str, Any]:
    wall0, cpu0 = time.perf_counter(), time.process_time()
    r = run_scenario("join", nodes, seed)
    return {
        "nodes": nodes,
        "seed": seed,
        "join_all_s": r.join_all_s,
        "converged": r.converged,
        "sim_s": r.sim_s,
        "wall_s": time.perf_counter() - wall0,
        "cpu_s": time.process_time() - cpu0,
        "trace_hash": r.trace_hash,
    }


def _call(job: tuple[str, tuple[Any, ...]]) -> dict[str, Any]:
    name, args = job
    return {"join": run_join, "crash": run_crash, "soak": run_soak}[name](*args)  # type: ignore[no-any-return, operator]


# ---------------------------------------------------------------------------------------------
# Table


def fmt(value: float | None, unit: str = "s", digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f} {unit}".strip()


def verdict(ok: bool | None) -> str:
    return "" if ok is None else ("ok" if ok else "MISSED")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="reduced run (< 60 s)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes for seed sweeps")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "membership.json")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    started = time.perf_counter()

    jobs: list[tuple[str, tuple[Any, ...]]] = []
    for n, seeds in plan["join"].items():  # type: ignore[attr-defined]
        jobs += [("join", (n, seed)) for seed in range(1, seeds + 1)]
    for n, seeds in plan["crash"].items():  # type: ignore[attr-defined]
        jobs += [("crash", (n, seed)) for seed in range(1, seeds + 1)]
    for n, duration in plan["quiet"].items():  # type: ignore[attr-defined]
        if n != 50:  # the N=50 quiet run is timed alone below (simulator speed)
            jobs.append(("soak", (n, 1, duration)))
    jobs.append(("soak", (50, 1, plan["hour"], 0.05, 60.0)))
    # Longest first, so the pool stays busy.
    jobs.sort(key=lambda j: -(j[1][0] * (j[1][2] if j[0] == "soak" else 5.0)))
    with ProcessPoolExecutor(max(1, args.jobs)) as pool:
        results = list(pool.map(_call, jobs))
    done = dict(zip(range(len(jobs)), results, strict=True))
    by_kind: dict[str, list[dict[str, Any]]] = {"join": [], "crash": [], "soak": []}
    for i, job in enumerate(jobs):
        by_kind[job[0]].append(done[i])

    # Timed alone, nothing else running in this benchmark.
    speed = run_soak(50, 1, plan["quiet"][50])  # type: ignore[index]
    big = run_big_join(plan["big_join"])  # type: ignore[arg-type]

    rows: list[tuple[str, str, str, str]] = []
    doc: dict[str, Any] = {
        "profile": "lan",
        "quick": args.quick,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "join": {},
        "crash": {},
        "bandwidth": {},
    }
    for n in plan["join"]:  # type: ignore[attr-defined]
        runs = [r for r in by_kind["join"] if r["nodes"] == n]
        times = sorted(r["join_all_s"] for r in runs if r["join_all_s"] is not None)
        target = JOIN_TARGET.get(n)
        within = sum(1 for t in times if target is None or t <= target)
        median = statistics.median(times) if times else None
        ok = None if target is None or median is None else median <= target
        rows.append(
            (
                f"join known by all, N={n} ({len(runs)} seeds)",
                f"median {fmt(median)}, worst {fmt(max(times) if times else None)}"
                + (f"; {within}/{len(runs)} within target" if target else ""),
                f"<= {target:g} s" if target else "-",
                verdict(ok),
            )
        )
        doc["join"][n] = {"runs": runs, "median_s": median, "within_target": within}
    for n in plan["crash"]:  # type: ignore[attr-defined]
        runs = [r for r in by_kind["crash"] if r["nodes"] == n]
        p50 = statistics.median(r["p50_s"] for r in runs if r["p50_s"] is not None)
        p99 = max(r["p99_s"] for r in runs if r["p99_s"] is not None)
        small = n <= 50
        ok = (p50 <= CRASH_P50_TARGET and p99 <= CRASH_P99_TARGET) if small else None
        rows.append(
            (
                f"crash agreed dead by all, N={n} ({len(runs)} seeds)",
                f"p50 {fmt(p50)} (median), p99 {fmt(p99)} (worst)",
                f"p50 <= {CRASH_P50_TARGET:g} s, p99 <= {CRASH_P99_TARGET:g} s" if small else "-",
                verdict(ok),
            )
        )
        doc["crash"][n] = {"runs": runs, "p50_median_s": p50, "p99_worst_s": p99}
    quiet = {r["nodes"]: r for r in by_kind["soak"] if r["loss"] == 0.0}
    quiet[50] = speed
    for n in sorted(quiet):
        r = quiet[n]
        ok = r["kbit_per_node_s"] <= BANDWIDTH_TARGET_KBIT if n == 50 else None
        rows.append(
            (
                f"bandwidth per node, N={n} ({r['duration_s']:g} s quiet)",
                f"{r['kbit_per_node_s']:.2f} kbit/s, {r['msgs_per_node_s']:.1f} msg/s",
                f"<= {BANDWIDTH_TARGET_KBIT:g} kbit/s" if n == 50 else "-",
                verdict(ok),
            )
        )
        doc["bandwidth"][n] = r
    (hour,) = [r for r in by_kind["soak"] if r["loss"] > 0.0]
    rows.append(
        (
            f"false deaths, N=50, 5% loss + 1 s stalls, {hour['duration_s'] / 60:g} sim min",
            f"{hour['false_deaths']} false, {hour['stale_declarations']} stale "
            f"({hour['suspect_events']} suspect events, {hour['refutations']} refutations)",
            "0",
            verdict(hour["false_deaths"] == 0),
        )
    )
    doc["false_deaths"] = hour
    rows.append(
        (
            "simulator speed, N=50",
            f"{speed['sim_per_wall']:.1f}x real time ({speed['sim_per_cpu']:.1f}x per CPU s)",
            f">= {SPEED_TARGET:g}x",
            verdict(speed["sim_per_wall"] >= SPEED_TARGET),
        )
    )
    doc["speed"] = speed
    rows.append(
        (
            f"{big['nodes']:,}-node join",
            f"known by all after {fmt(big['join_all_s'])}; wall {big['wall_s']:.1f} s "
            f"(CPU {big['cpu_s']:.1f} s)",
            f"< {BIG_JOIN_TARGET_S:g} s wall" if big["nodes"] >= 10_000 else "-",
            verdict(big["converged"] and big["wall_s"] < BIG_JOIN_TARGET_S)
            if big["nodes"] >= 10_000
            else "",
        )
    )
    doc["big_join"] = big
    doc["wall_s"] = time.perf_counter() - started

    headers = ("figure", "measured", "target", "")
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(4)]
    line = "  ".join("-" * w for w in widths)
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    print(line)
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    print(f"\n(total wall {doc['wall_s']:.0f} s; {'quick' if args.quick else 'full'} run)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
