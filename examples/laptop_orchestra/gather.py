"""Gather the players' onset logs: the spread per beat, a plot, and the mix.

    python3 examples/laptop_orchestra/gather.py concert-out [--players N] [--json]

Reads every onset log in the folder (``music.py``), prints one line per beat with the spread
of the onsets across players (the latest minus the earliest, on the host's monotonic clock),
then p50/p99/max over the piece; writes ``spread.png`` (the spread over time; needs
matplotlib: ``pip install 'stagemesh[plot]'``) and ``mix.wav`` (every player's WAV placed as
it was played). With ``--json`` it prints one JSON object instead of the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from music import mix_wavs, percentile, read_logs, spread_by_beat


def summary(folder: Path) -> dict[str, Any]:
    """The figures of one concert: players, beats, spread p50/p99/max (ms), late notes."""
    logs = read_logs(folder)
    rows = spread_by_beat(logs)
    spreads = [r["spread"] * 1000 for r in rows]
    return {
        "players": len(logs),
        "paths": [log["path"] for log in logs],
        "beats": len(rows),
        "notes": sum(len(log["onsets"]) for log in logs),
        "late": sum(int(log.get("late", 0)) for log in logs),
        "spread_ms": {
            "p50": percentile(spreads, 50),
            "p99": percentile(spreads, 99),
            "max": max(spreads, default=float("nan")),
        },
        "per_beat": [{**r, "spread_ms": r["spread"] * 1000} for r in rows],
    }


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> bool:
    """Write the spread over the piece to *path* (PNG); ``False`` without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    origin = rows[0]["federation_time"] if rows else 0.0
    times = [r["federation_time"] - origin for r in rows]
    spreads = [r["spread_ms"] for r in rows]
    figure, axes = plt.subplots(figsize=(8, 3.2), dpi=100)
    axes.plot(times, spreads, marker="o", markersize=3, linewidth=1)
    axes.axhline(2.0, color="#b00020", linewidth=0.8, linestyle="--", label="2 ms")
    axes.set_xlabel("seconds since beat 0 (federation time)")
    axes.set_ylabel("onset spread (ms)")
    axes.set_title(title)
    axes.set_ylim(bottom=0, top=max([2.5, *spreads]) * 1.1)
    axes.legend(loc="upper right")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="where the players wrote their logs")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--players", type=int, default=0, help="wait (up to 60 s) for this many players' logs"
    )
    args = parser.parse_args(argv)
    deadline = time.monotonic() + 60.0
    while len(read_logs(args.folder)) < args.players and time.monotonic() < deadline:
        time.sleep(0.2)  # players still playing their last notes
    result = summary(args.folder)
    if result["players"] < 2 or not result["beats"]:
        print(f"error: {args.folder}: fewer than two players' onsets to compare", file=sys.stderr)
        return 1
    spread = result["spread_ms"]
    title = (
        f"{result['players']} players: onset spread p50 {spread['p50']:.2f} ms, "
        f"p99 {spread['p99']:.2f} ms"
    )
    result["plot"] = str(args.folder / "spread.png")
    if not plot(result["per_beat"], args.folder / "spread.png", title):
        result["plot"] = None
    result["mix"] = str(args.folder / "mix.wav") if mix_wavs(
        read_logs(args.folder), args.folder, args.folder / "mix.wav"
    ) else None  # fmt: skip
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{'beat':>4} {'bar':>3} {'players':>7} {'spread':>10}")
    for row in result["per_beat"]:
        print(f"{row['beat']:>4} {row['bar']:>3} {row['players']:>7} {row['spread_ms']:>7.3f} ms")
    print(
        f"onset spread over {result['beats']} beats of {result['players']} players: "
        f"p50 {spread['p50']:.3f} ms, p99 {spread['p99']:.3f} ms, max {spread['max']:.3f} ms; "
        f"{result['late']} late notes"
    )
    if result["plot"]:
        print(f"plot: {result['plot']}")
    else:
        print("plot: skipped (pip install 'stagemesh[plot]' for matplotlib)")
    if result["mix"]:
        print(f"mix: {result['mix']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
