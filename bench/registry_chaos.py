"""Registry chaos benchmark: 20 minutes of mixed load on a real ``stagemesh registry``,
``kill -9`` every minute and a restart on the same database.

The load (tests/registry_chaos.py): ``--workers`` clients, each about ``--rate`` calls a second
on its own paths: JSON registrations (some as supernode or conductor candidates), heartbeats,
unregisters, registering again, claiming and releasing the conductor by compare-and-set, and
2012 legacy registers and unregisters. Every answer goes to a log; after each restart the
registry is checked against it: no acknowledged write lost, never two conductors. Prints a
table and writes ``bench/results/registry_chaos.json`` (the log itself stays in a temporary
directory unless ``--keep-log PATH``).

    python3 bench/registry_chaos.py [--duration 1200] [--kill-every 60] [--workers 8] [--rate 20]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import attrs
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.registry_chaos import ChaosConfig, ChaosResult, run_chaos  # noqa: E402


def run(config: ChaosConfig, keep_log: Path | None) -> ChaosResult:
    def progress(text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    with tempfile.TemporaryDirectory(prefix="stagemesh-chaos-") as tmp:
        log = Path(tmp) / "log.jsonl"
        result = trio.run(run_chaos, config, Path(tmp), log, progress)
        if keep_log is not None:
            shutil.copyfile(log, keep_log)
    return result


def table(result: ChaosResult, seconds: float) -> list[str]:
    counts = result.counts
    unknown = sum(v for k, v in counts.items() if k.endswith(":unanswered"))
    restarts = result.restart_seconds
    acked = result.acknowledged()
    rows = [
        ("duration, kills", f"{seconds / 60:.1f} min, {result.kills} kills"),
        ("acknowledged writes", f"{acked} ({acked / seconds:.0f}/s)"),
        *(
            (f"  {op}", str(counts.get(f"{op}:ack", 0)))
            for op in ("register", "heartbeat", "unregister", "legacy_register",
                       "legacy_unregister", "conductor")
        ),
        ("calls cut off by a kill (outcome unknown)", str(unknown)),
        ("refused (4xx)", str(sum(v for k, v in counts.items() if k.endswith(":refused")))),
        ("conductor terms seen", str(result.terms_seen)),
        ("restart to ready", f"median {statistics.median(restarts):.2f} s, worst "
                             f"{max(restarts):.2f} s" if restarts else "-"),
        ("log lines (every answer)", str(result.log_lines)),
        ("ACKNOWLEDGED WRITES LOST", f"{len(result.problems)}  (target 0)"),
        ("DUPLICATE CONDUCTORS", f"{len(result.duplicates)}  (target 0)"),
        ("log replays to the client's state", "yes" if result.replayed_ok else "NO"),
    ]  # fmt: skip
    return [f"{name:<44} {value}" for name, value in rows]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=1200)
    parser.add_argument("--kill-every", type=float, default=60)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--rate", type=float, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep-log", type=Path)
    options = parser.parse_args()
    config = ChaosConfig(
        duration=options.duration,
        kill_every=options.kill_every,
        workers=options.workers,
        rate=options.rate,
        seed=options.seed,
    )
    load_start = os.getloadavg()
    started = time.time()
    result = run(config, options.keep_log)
    seconds = time.time() - started
    lines = table(result, seconds)
    print("\n".join(lines))
    for problem in result.problems[:20]:
        print("  problem:", json.dumps(problem))
    load_end = os.getloadavg()
    print(f"load average {load_start[0]:.2f} at start, {load_end[0]:.2f} at end")
    doc = {
        "command": "python3 bench/registry_chaos.py " + " ".join(sys.argv[1:]),
        "started": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(started)),
        "load_average": {"start": load_start, "end": load_end},
        "config": attrs.asdict(config),
        "table": lines,
        "kills": result.kills,
        "counts": result.counts,
        "restart_seconds": result.restart_seconds,
        "problems": result.problems,
        "duplicates": result.duplicates,
        "replayed_ok": result.replayed_ok,
    }
    out = ROOT / "bench" / "results" / "registry_chaos.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0 if not result.problems and not result.duplicates and result.replayed_ok else 1


if __name__ == "__main__":
    sys.exit(main())
