"""Concert benchmark: how far apart the players' notes sound, for 4 and 12 players.

Runs the laptop-orchestra example (``examples/laptop_orchestra/concert.py``) once per player
count: every player is a process with its own node on loopback, its clock skewed between
-2 s and +2 s and drifting by +-100 ppm; the conductor starts the piece once every player's
clock is tuned; each player places one note per beat a forward delay ahead on the federation
clock and logs the onset on the host's monotonic clock. The spread of a beat is its latest
onset minus its earliest. Prints p50/p99/max of the spread over the beats beside the target
(p99 <= 2 ms), the late notes (a player that woke after its note was due), and the machine's
load average, and writes ``bench/results/concert.json``.

    python3 bench/concert.py [--players 4,12] [--bars 8] [--sites 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CONCERT = ROOT / "examples" / "laptop_orchestra" / "concert.py"
TARGET_P99_MS = 2.0


def run(players: int, sites: int, bars: int, skew: float, drift: float) -> dict[str, Any]:
    """One concert; its gathered figures, the load around it and its wall time."""
    with tempfile.TemporaryDirectory(prefix="bench-concert-") as tmp:
        load_before = os.getloadavg()[0]
        start = time.monotonic()
        done = subprocess.run(
            [
                *(sys.executable, str(CONCERT), "--players", str(players)),
                *("--sites", str(sites), "--bars", str(bars), "--out", tmp, "--json"),
                *("--clock-skew", str(skew), "--clock-drift", str(drift)),
            ],
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        wall = time.monotonic() - start
        if done.returncode != 0:
            raise SystemExit(f"concert with {players} players failed:\n{done.stderr[-3000:]}")
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result.pop("per_beat")
    result.update(
        sites=sites,
        clock_skew=skew,
        clock_drift=drift,
        wall_s=wall,
        load_before=load_before,
        load_after=os.getloadavg()[0],
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--players", default="4,12", help="player counts, comma-separated")
    parser.add_argument("--sites", type=int, default=1, choices=(1, 2))
    parser.add_argument("--bars", type=int, default=8, help="bars of 4 beats at 120 bpm")
    parser.add_argument("--clock-skew", type=float, default=2.0)
    parser.add_argument("--clock-drift", type=float, default=100.0)
    args = parser.parse_args()
    rows = [
        run(int(n), args.sites, args.bars, args.clock_skew, args.clock_drift)
        for n in args.players.split(",")
    ]
    print(
        f"onset spread across players ({args.sites} site(s), clocks +-{args.clock_skew:g} s, "
        f"+-{args.clock_drift:g} ppm; target p99 <= {TARGET_P99_MS:g} ms; {os.cpu_count()} CPUs)"
    )
    print(f"{'players':>7} {'beats':>5} {'p50':>9} {'p99':>9} {'max':>9} {'late':>4} "
          f"{'load':>9} {'target':>7}")  # fmt: skip
    for r in rows:
        s = r["spread_ms"]
        print(
            f"{r['players']:>7} {r['beats']:>5} {s['p50']:>6.3f} ms {s['p99']:>6.3f} ms "
            f"{s['max']:>6.3f} ms {r['late']:>4} {r['load_before']:>4.1f}-{r['load_after']:<4.1f}"
            f" {'met' if s['p99'] <= TARGET_P99_MS else 'NOT MET':>7}"
        )
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "command": " ".join(["python3", "bench/concert.py", *sys.argv[1:]]),
        "time": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime()),
        "cpus": os.cpu_count(),
        "target_p99_ms": TARGET_P99_MS,
        "runs": rows,
    }
    (out / "concert.json").write_text(json.dumps(doc, indent=2))
    print(f"wrote {out / 'concert.json'}")


if __name__ == "__main__":
    main()
