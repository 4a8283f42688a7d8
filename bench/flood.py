"""Datagram flood at one live node: 10^6 datagrams of junk from a stranger while 4 other
nodes run beside it (tests/flood.py; the CI runs 20,000 in tests/security/test_flood.py).

The junk: random bytes, truncated, bit-flipped and replayed captures of the federation's real
signed datagrams (captured on ``lo``), member lists signed with the stranger's own key or
longer than a datagram, wrong key ids, unsigned messages; sent from 127.0.0.2 as fast as one
process can (at ``nice 19``: on one machine the sender competes with the nodes for the CPU,
which a stranger on another host does not). A baseline of the same nodes with no flood is
measured in the same run first; ratios against it are what count (the machine is shared).

Figures: datagrams offered and absorbed per second, the node's accounting (refused by reason,
accepted, dropped by the kernel with the queue full), its RSS before and after, its status API
latency and the clock agreement (baseline and flood), members seen not alive and deaths
declared on any node. Prints a table and writes ``bench/results/flood.json``. Needs root (the
capture uses a packet socket).

    sudo python3 bench/flood.py [--count 1000000] [--baseline 5] [--sender-nice 19]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.flood import run_flood  # noqa: E402


def _pct(figures: dict[str, Any], unit: str) -> str:
    if not figures.get("n"):
        return "-"
    return f"p50 {figures['p50']:.1f} {unit}, p99 {figures['p99']:.1f} {unit} (n={figures['n']})"


def _ratio(a: dict[str, Any], b: dict[str, Any]) -> str:
    if not a.get("n") or not b.get("n") or not b["p99"]:
        return "-"
    return f"{a['p99'] / b['p99']:.2f}x"


def table(s: dict[str, Any]) -> list[tuple[str, str, str]]:
    base, flood = s["baseline"], s["flood"]
    growth = s["rss_growth_kib"] / 1024
    rows = [
        ("datagrams sent", f"{s['sender']['sent']:,} in {s['sender']['seconds']:.1f} s", ""),
        ("offered", f"{s['offered_per_s']:,.0f} /s", ""),
        ("absorbed (read and counted by the node)", f"{s['absorbed_per_s']:,.0f} /s", ""),
        ("read and refused", f"{s['rejected_total']:,}", ""),
        *((f"  {reason}", f"{n:,}", "") for reason, n in sorted(s["rejected"].items())),
        ("accepted during the flood (peers' traffic)", f"{s['accepted']:,}", ""),
        ("dropped by the kernel (queue full)", f"{s['kernel_drops']:,}", ""),
        (
            "node CPU during the flood",
            f"{s['cpu_seconds']:.1f} s ({s['cpu_share']:.0%} of a core)",
            "",
        ),
        (
            "node RSS before -> after",
            f"{s['rss_before_kib'] / 1024:.1f} -> {s['rss_after_kib'] / 1024:.1f} MiB "
            f"({growth:+.1f})",
            "ok" if growth <= 20 else "NOT MET (<= +20 MiB)",
        ),
        ("status API, baseline", _pct(base["status_ms"], "ms"), ""),
        (
            "status API, flood",
            _pct(flood["status_ms"], "ms"),
            f"{_ratio(flood['status_ms'], base['status_ms'])} baseline p99",
        ),
        ("clock agreement, baseline", _pct(base["clock_us"], "us"), ""),
        (
            "clock agreement, flood",
            _pct(flood["clock_us"], "us"),
            f"{_ratio(flood['clock_us'], base['clock_us'])} baseline p99",
        ),
        (
            "samples of a member not alive (flood, after)",
            f"{flood['not_alive_count']}, {len(s['after_not_alive'])}",
            "ok" if not s["after_not_alive"] else "NOT MET (all alive after)",
        ),
        (
            "deaths declared (all nodes)",
            str(s["deaths_declared"]),
            "ok" if s["deaths_declared"] == 0 else "NOT MET",
        ),
        ("target clock unsynced samples", str(flood["unsynced"]), ""),
        ("nodes exited", str(len(s["exited"])), "ok" if not s["exited"] else "NOT MET"),
    ]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--baseline", type=float, default=5.0, help="seconds of baseline")
    parser.add_argument(
        "--sender-nice",
        type=int,
        default=19,
        help="niceness of the sending process (default 19; 0 lets it take the nodes' CPU)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "flood.json")
    args = parser.parse_args(argv)

    def progress(text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    async def run() -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="stagemesh-flood-") as tmp:
            result = await run_flood(
                Path(tmp),
                args.count,
                baseline_seconds=args.baseline,
                sender_nice=args.sender_nice,
                progress=progress,
            )
        return result.summary()

    summary = trio.run(run)
    rows = table(summary)
    width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    for label, value, verdict in rows:
        print(f"{label:<{width}}  {value:<{value_width}}  {verdict}".rstrip())
    doc = {"python": platform.python_version(), "machine": platform.machine(), **summary}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
