"""Impairing hub benchmark: what the user-space hub of tests/impair.py costs against the
kernel bridge it replaces (this machine's kernel has no netem), measured in the same run.

For each of ``bridge`` (kernel bridge) and ``hub`` (the hub with no impairment), two hosts:

- **round trip**: ``--pings`` UDP echoes one at a time (tests/netprobe.py ``ping``): p50, p99;
  the hub's cost per frame is half the difference of the round trips (two frames per round
  trip);
- **rate**: one host sends 100-byte datagrams as fast as it can for ``--seconds``; the hub
  counts what it forwards and the other host what arrives (three processes busy on a 2-core
  machine: the slowest of them sets the rate);
- **hub, delayed** (20 ms +- 10 ms, as in the soak) at a steady 1000 datagrams a second: the
  hub's lateness (how long after its due time each frame was written).

Prints a table and writes ``bench/results/impair.json``. Needs root.

    sudo python3 bench/impair.py [--pings 2000] [--seconds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.impair import Link  # noqa: E402
from tests.netns import Lan  # noqa: E402

PROBE = str(ROOT / "tests" / "netprobe.py")


def probe(lan: Lan, index: int, *args: object, timeout: float = 300) -> dict[str, Any]:
    out = lan.run(lan.hosts[index], sys.executable, PROBE, *map(str, args), timeout=timeout)
    doc: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return doc


def measure(impair: Link | None, pings: int, seconds: float) -> dict[str, Any]:
    with Lan(2, impair=impair) as lan:
        target = lan.hosts[1].address
        echo = lan.spawn(lan.hosts[1], sys.executable, PROBE, "echo", "7100", "600")
        echo.wait_for(lambda line: '"ready"' in line, timeout=20)
        probe(lan, 0, "ping", target, 7100, 20)  # ARP, caches
        rtt = probe(lan, 0, "ping", target, 7100, pings)
        counter = lan.spawn(lan.hosts[1], sys.executable, PROBE, "count", "7101", str(seconds + 3))
        counter.wait_for(lambda line: '"ready"' in line, timeout=20)
        before = lan.hub.stats()["frames_out"] if impair is not None else 0
        sent = probe(lan, 0, "blast", target, 7101, seconds)
        forwarded = lan.hub.stats()["frames_out"] - before if impair is not None else None
        line = counter.wait_for(lambda text: "received" in text, timeout=seconds + 30)
        received = json.loads(line)["received"]
        echo.kill()
        return {
            "rtt_p50_us": 1e6 * rtt["p50"],
            "rtt_p99_us": 1e6 * rtt["p99"],
            "rtt_lost": rtt["lost"],
            "blast_sent_per_s": sent["sent"] / seconds,
            "hub_forwarded_per_s": None if forwarded is None else forwarded / seconds,
            "delivered_per_s": received / seconds,
        }


def measure_delayed(count: int = 5000) -> dict[str, Any]:
    """The hub's lateness for frames it delays (20 ms +- 10 ms) at 1000 a second."""
    with Lan(2, impair=Link(delay=0.020, jitter=0.010)) as lan:
        sink = lan.spawn(lan.hosts[1], sys.executable, PROBE, "count", "7102", "3")
        sink.wait_for(lambda text: '"ready"' in text, timeout=20)
        probe(lan, 0, "send", lan.hosts[1].address, 7102, count, 0.001)
        stats = lan.hub.stats()
        return {
            "frames": stats["frames_out"],
            "lateness_ms": stats["lateness_ms"],
            "reordered": stats["reordered"],
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pings", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=3.0)
    options = parser.parse_args()
    load_start = os.getloadavg()
    bridge = measure(None, options.pings, options.seconds)
    hub = measure(Link(), options.pings, options.seconds)
    delayed = measure_delayed()
    load_end = os.getloadavg()
    added = (hub["rtt_p50_us"] - bridge["rtt_p50_us"]) / 2
    added99 = (hub["rtt_p99_us"] - bridge["rtt_p99_us"]) / 2
    rows = [
        ("", "kernel bridge", "user-space hub"),
        ("UDP round trip p50", f"{bridge['rtt_p50_us']:.0f} us", f"{hub['rtt_p50_us']:.0f} us"),
        ("UDP round trip p99", f"{bridge['rtt_p99_us']:.0f} us", f"{hub['rtt_p99_us']:.0f} us"),
        ("added per frame (half the RTT difference)", "",
         f"p50 {added:.0f} us, p99 {added99:.0f} us"),
        ("100-byte datagrams, sender as fast as it can", f"{bridge['blast_sent_per_s']:.0f}/s",
         f"{hub['blast_sent_per_s']:.0f}/s"),
        ("  forwarded by the hub", "", f"{hub['hub_forwarded_per_s']:.0f}/s"),
        ("  counted by the receiver", f"{bridge['delivered_per_s']:.0f}/s",
         f"{hub['delivered_per_s']:.0f}/s"),
    ]  # fmt: skip
    late = delayed["lateness_ms"]
    rows.append(
        (
            "hub lateness at 1000/s, 20 +- 10 ms",
            "",
            f"p50 {late['p50']:.2f} ms, p99 {late['p99']:.2f} ms, max {late['max']:.1f} ms",
        )
    )
    lines = [f"{a:<44} {b:<16} {c}" for a, b, c in rows]
    print("\n".join(lines))
    print(f"load average {load_start[0]:.2f} at start, {load_end[0]:.2f} at end")
    doc = {
        "command": "python3 bench/impair.py " + " ".join(sys.argv[1:]),
        "started": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime()),
        "load_average": {"start": load_start, "end": load_end},
        "table": lines,
        "bridge": bridge,
        "hub": hub,
        "hub_delayed_1000_per_s": delayed,
    }
    out = ROOT / "bench" / "results" / "impair.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
