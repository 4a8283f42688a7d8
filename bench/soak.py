"""Soak benchmark: 8 real nodes in network namespaces on a bad network for 10 minutes.

Every frame between the hosts crosses the user-space impairing hub of tests/impair.py (this
machine's kernel has no netem): 5 % loss, 20 ms +- 10 ms delay (which reorders). Random halves
are partitioned for 20 s every minute and healed. First, a baseline of ``--baseline`` seconds
runs the same nodes on the hub with no impairment and no partitions, so the clock figures can
be told apart: what the network's jitter costs, and what the hub and the machine's load cost.

Figures (see tests/soak.py for how each is judged): false deaths, conductors (never two on
one side; the first keeps the post), time from each heal to one merged view, clock error of
every synced follower against its reference (p50/p99/max, steady and around partitions),
honest-bound violations, federation time going back, and the hub's own counters (frames,
losses, reorders, lateness). Prints a table and writes ``bench/results/soak.json``. Needs root.

    sudo python3 bench/soak.py [--duration 600] [--cycle 60] [--partition 20] [--baseline 120]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.impair import Link  # noqa: E402
from tests.soak import SoakConfig, SoakResult, run_soak  # noqa: E402


def soak(config: SoakConfig, label: str) -> SoakResult:
    def progress(text: str) -> None:
        print(f"[{label} {time.strftime('%H:%M:%S')}] {text}", flush=True)

    with tempfile.TemporaryDirectory(prefix="stagemesh-soak-") as tmp:
        return run_soak(config, Path(tmp), progress)


def row(name: str, value: str, target: str = "", ok: bool | None = None) -> str:
    mark = "" if ok is None else ("ok" if ok else "NOT MET")
    return f"{name:<48} {value:<58} {target:<14} {mark}"


def report(baseline: SoakResult | None, main: SoakResult) -> list[str]:
    v = main.verdict
    c = main.config
    hub = main.hub
    offered = sum(p["offered"] for p in hub["pairs"].values()) - hub["dropped"]["partition"]
    lines = [row("figure", "measured", "target"), "-" * 126]
    lines.append(
        row(
            "network (hub): loss, reordered, duplicated",
            f"{hub['dropped']['loss'] / max(offered, 1):.2%} lost, {hub['reordered']} reordered "
            f"of {offered} frames",
            f"{c.link.loss:.0%}",
        )
    )
    lines.append(row("partitions (random halves)", f"{v['partitions']} x {c.partition:.0f} s"))
    exited = v["nodes_exited"]
    lines.append(row("nodes that exited", str(exited or 0), "0", not exited))
    lines.append(row("false deaths", str(len(v["false_deaths"])), "0", not v["false_deaths"]))
    lines.append(
        row(
            "suspicions outside partitions (refuted)",
            str(v["suspicions_outside_partitions"]),
        )
    )
    one = not v["two_holders"] and not v["conductor_changed_to"]
    lines.append(
        row(
            "one conductor throughout",
            f"{len(v['two_holders'])} times two holders on a side "
            f"(longest {v['two_holders_longest_s']:.2f} s), "
            f"{len(v['conductor_changed_to'])} changes",
            "0, 0",
            one,
        )
    )
    lines.append(
        row(
            "sampled rounds naming two conductors on a side",
            str(len(v["two_conductors_in_one_side"])),
        )
    )
    merges = sorted(v["merge_seconds"])
    lines.append(
        row(
            "heal to one merged view",
            f"median {merges[len(merges) // 2]:.2f} s, worst {merges[-1]:.2f} s" if merges else "-",
            f"<= {c.merge_bound:.0f} s",
            v["merge_max"] <= c.merge_bound,
        )
    )
    for label, result in (("baseline (no impairment)", baseline), ("soak", main)):
        if result is None:
            continue
        for phase, figures in result.verdict["clock_us"].items():
            if not figures["samples"]:
                continue
            lines.append(
                row(
                    f"clock vs reference, {label}, {phase}",
                    f"p50 {figures['p50']:.0f} us, p99 {figures['p99']:.0f} us, "
                    f"max {figures['max']:.0f} us (n={figures['samples']})",
                    "p99 <= 1000 us" if result is main and phase == "all" else "",
                    figures["p99"] <= 1000 if result is main and phase == "all" else None,
                )
            )
    for label, result in (("baseline", baseline), ("soak", main)):
        spread = None if result is None else result.verdict.get("clock_read_error_us")
        if spread and spread["samples"]:
            lines.append(
                row(
                    f"clock measurement's own error bound, {label}",
                    f"p50 {spread['p50']:.0f} us, p99 {spread['p99']:.0f} us, "
                    f"max {spread['max']:.0f} us",
                )
            )
    lines.append(
        row(
            "clock error beyond its reported bound",
            str(len(v["clock_bound_violations"])),
            "0",
            not v["clock_bound_violations"],
        )
    )
    lines.append(
        row(
            "federation time went back",
            str(len(v["clock_went_back"])),
            "0",
            not v["clock_went_back"],
        )
    )
    late = hub["lateness_ms"]
    lines.append(
        row(
            "hub lateness (frame written after due)",
            f"p50 {late['p50']:.2f} ms, p99 {late['p99']:.2f} ms, max {late['max']:.1f} ms",
        )
    )
    if baseline is not None:
        base = baseline.hub["lateness_ms"]
        lines.append(
            row(
                "hub lateness, baseline",
                f"p50 {base['p50']:.2f} ms, p99 {base['p99']:.2f} ms, max {base['max']:.1f} ms",
            )
        )
    lines.append(row("status samples unanswered", str(v["unanswered_samples"]), "0"))
    return lines


def summary(result: SoakResult) -> dict[str, Any]:
    return {
        "config": attrs.asdict(result.config),
        "formed_after_s": result.formed_after,
        "first_conductor": result.first_conductor,
        "verdict": result.verdict,
        "hub": result.hub,
        "exited_logs": {
            path: result.logs[result.paths.index(path)][-8000:]
            for path in result.verdict["nodes_exited"]
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=8)
    parser.add_argument("--duration", type=float, default=600)
    parser.add_argument("--cycle", type=float, default=60)
    parser.add_argument("--partition", type=float, default=20)
    parser.add_argument("--baseline", type=float, default=120)
    parser.add_argument("--seed", type=int, default=1)
    options = parser.parse_args()
    load_start = os.getloadavg()
    started = time.time()
    baseline = None
    if options.baseline > 0:
        baseline = soak(
            SoakConfig(
                hosts=options.hosts,
                duration=options.baseline,
                cycle=options.baseline + 1,  # no partition
                link=Link(),
                seed=options.seed,
            ),
            "baseline",
        )
    main_run = soak(
        SoakConfig(
            hosts=options.hosts,
            duration=options.duration,
            cycle=options.cycle,
            partition=options.partition,
            seed=options.seed,
        ),
        "soak",
    )
    lines = report(baseline, main_run)
    print("\n".join(lines))
    for result in (baseline, main_run):
        for path, status in (result.verdict["nodes_exited"] if result else {}).items():
            log = result.logs[result.paths.index(path)] if result else ""
            print(f"{path} EXITED with status {status}; the end of its log:\n{log[-4000:]}")
    load_end = os.getloadavg()
    print(
        f"load average {load_start[0]:.2f} at start, {load_end[0]:.2f} at end; "
        f"{(time.time() - started) / 60:.1f} min"
    )
    doc = {
        "command": "python3 bench/soak.py " + " ".join(sys.argv[1:]),
        "started": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(started)),
        "load_average": {"start": load_start, "end": load_end},
        "table": lines,
        "baseline": None if baseline is None else summary(baseline),
        "soak": summary(main_run),
    }
    out = ROOT / "bench" / "results" / "soak.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0 if all(main_run.verdict["ok"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
