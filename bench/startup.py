"""Start-up benchmark: wall time and peak memory of short ``stagemesh`` commands, before and
after (in the same run, on the same machine).

"Before" is a checkout of ``--before`` (default: the last commit before commands were imported
lazily), extracted with ``git archive`` into a temporary folder; "after" is this checkout. Each
command runs ``--runs`` times through the ``stagemesh`` console script next to this Python (or
``python -m mesh`` when there is none), with ``PYTHONPATH`` pointing at the code measured; the
table shows the median wall time and the peak RSS (``ru_maxrss`` of the child). ``status`` reads
one real node started on loopback for the run. Targets: ``--help``, ``status``, ``keygen`` under
150 ms; the reference is Serf's ``serf --help``, about 4 ms (a Go binary), and the floor is
``python -c pass`` on this machine.

Usage: ``python bench/startup.py [--runs 15] [--before REF] [--out bench/results/startup.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BEFORE = "d1a34e0"
"""main just before the lazy imports (every command imported the registry, roles and zeroconf)."""
SERF_HELP_MS = 4.0
TARGET_MS = 150.0
COMMANDS: list[tuple[str, list[str], bool]] = [
    ("--help", ["--help"], True),
    ("--version", ["--version"], False),
    ("status", ["status"], True),
    ("keygen", ["keygen", "{tmp}/key-{n}"], True),
    ("node --help", ["node", "--help"], False),
]
"""(label, arguments, held to the 150 ms target)."""


def launcher() -> list[str]:
    """The ``stagemesh`` console script of this Python, or ``python -m mesh``."""
    script = Path(sys.executable).parent / "stagemesh"
    return [str(script)] if script.exists() else [sys.executable, "-m", "mesh"]


def measure(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Run *command* once; return (wall seconds, peak RSS in MiB)."""
    start = time.perf_counter()
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    _, _, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = 0  # reaped by wait4
    return wall, usage.ru_maxrss / 1024


def checkout(ref: str, where: Path) -> Path:
    """Extract *ref* of this repository into *where* and return the folder."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
    return where


def start_node(env: dict[str, str], tmp: Path) -> subprocess.Popen[str]:
    """One node on loopback for ``status`` to read (its ready line awaited)."""
    node = subprocess.Popen(
        [
            *(sys.executable, "-m", "mesh", "node", "--name", "bench"),
            *("--bind", "127.0.0.1", "--port", "0", "--no-mdns", "--no-broadcast"),
            *("--state-dir", str(tmp / "state")),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert node.stdout is not None
    line = node.stdout.readline()
    if not line.startswith("ready "):
        node.kill()
        raise SystemExit(f"the node did not start: {line!r}")
    return node


def run(runs: int, before_ref: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        (tmp / "before").mkdir()
        versions = {"before": checkout(before_ref, tmp / "before"), "after": ROOT}
        base = {k: v for k, v in os.environ.items() if not k.startswith("STAGEMESH_")}
        base["STAGEMESH_RUNTIME_DIR"] = str(tmp / "run")
        node = start_node({**base, "PYTHONPATH": str(ROOT)}, tmp)
        try:
            floor = [measure([sys.executable, "-c", "pass"], base) for _ in range(runs)]
            rows = []
            counter = 0
            for label, args, targeted in COMMANDS:
                row: dict[str, Any] = {"command": label, "target": targeted}
                for version, code in versions.items():
                    env = {**base, "PYTHONPATH": str(code)}
                    samples = []
                    for _ in range(runs):
                        counter += 1
                        argv = [a.format(tmp=tmp, n=counter) for a in args]
                        samples.append(measure(launcher() + argv, env))
                    row[version] = {
                        "median_ms": statistics.median(s[0] for s in samples) * 1000,
                        "min_ms": min(s[0] for s in samples) * 1000,
                        "rss_mib": statistics.median(s[1] for s in samples),
                    }
                rows.append(row)
        finally:
            node.terminate()
            node.wait(timeout=30)
    return {
        "runs": runs,
        "before": before_ref,
        "launcher": " ".join(launcher()),
        "python_floor_ms": statistics.median(f[0] for f in floor) * 1000,
        "python_floor_rss_mib": statistics.median(f[1] for f in floor),
        "serf_help_ms": SERF_HELP_MS,
        "target_ms": TARGET_MS,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "commands": rows,
    }


def report(summary: dict[str, Any]) -> None:
    print(f"start-up of stagemesh commands ({summary['launcher']}, median of {summary['runs']})")
    header = (
        f"{'command':<13} {'before ms':>10} {'after ms':>9} {'speed-up':>9} "
        f"{'before MiB':>11} {'after MiB':>10}  target"
    )
    print(header)
    print("-" * len(header))
    for row in summary["commands"]:
        before, after = row["before"], row["after"]
        verdict = "-"
        if row["target"]:
            met = "ok" if after["median_ms"] < TARGET_MS else "MISSED"
            verdict = f"< {TARGET_MS:g} ms {met}"
        print(
            f"{row['command']:<13} {before['median_ms']:>10.0f} {after['median_ms']:>9.0f} "
            f"{before['median_ms'] / after['median_ms']:>8.1f}x "
            f"{before['rss_mib']:>11.1f} {after['rss_mib']:>10.1f}  {verdict}"
        )
    print(
        f"reference: python -c pass {summary['python_floor_ms']:.0f} ms, "
        f"{summary['python_floor_rss_mib']:.1f} MiB; serf --help {SERF_HELP_MS:g} ms (Go binary)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--before", default=BEFORE, help=f"git ref to compare (default {BEFORE})")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "startup.json"))
    args = parser.parse_args()
    summary = run(args.runs, args.before)
    report(summary)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out}")
    missed = [r for r in summary["commands"] if r["target"] and r["after"]["median_ms"] >= 150]
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
