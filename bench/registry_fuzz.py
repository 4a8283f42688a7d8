"""Registry fuzzing at scale: 10,000+ schemathesis cases against the registry's OpenAPI document
and 10,000 hostile legacy GETs, against one real ``stagemesh registry`` process on loopback
(registration limits off), for each database backend (``--backends sqlite,postgresql``; the
PostgreSQL one is a throwaway cluster of tests/postgres.py).

schemathesis (``st run``, every check plus ``error_says_what_is_wrong`` from
``tests/registry_fuzz_hooks.py``) runs its examples, coverage and fuzzing phases with
``--per-operation`` examples per operation, then its stateful phase (the document's links:
register -> heartbeat, unregister, conductor claim and release) for ``--stateful-seconds``.
hypothesis then sends ``--legacy`` requests of ``tests/registry_fuzzing.LEGACY_REQUESTS``.
The table gives the cases, requests, answers by status class, failures, the stateful
scenarios and links covered, and every distinct 4xx message (values masked) with its count,
so a reader sees what each refusal says. Exit status 1 if anything failed.

Usage: ``python bench/registry_fuzz.py [--backends sqlite,postgresql] [--per-operation 800]
[--stateful-seconds 90] [--legacy 10000] [--seed 1] [--out bench/results/registry_fuzz.json]``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.registries import running_registry  # noqa: E402
from tests.registry_fuzzing import (  # noqa: E402
    REGISTRY_ARGS,
    REGISTRY_ENV,
    LegacyRun,
    SchemathesisRun,
    fuzz_legacy,
    prepare_legacy,
    run_schemathesis,
)


def classes(statuses: Counter[int]) -> dict[str, int]:
    """Answers by status class (``2xx``, ``4xx``, ``5xx``...)."""
    out: Counter[str] = Counter()
    for status, n in statuses.items():
        out[f"{status // 100}xx"] += n
    return dict(sorted(out.items()))


def summary_of(run: SchemathesisRun) -> dict[str, Any]:
    return {
        "returncode": run.returncode,
        "cases": run.generated,
        "unique_failures": run.unique_failures,
        "requests": run.requests,
        "statuses": dict(sorted(run.statuses.items())),
        "classes": classes(run.statuses),
        "scenarios": run.scenarios,
        "links": run.links,
        "seconds": round(run.seconds, 1),
        "errors": dict(run.errors.most_common()),
    }


def legacy_summary(run: LegacyRun | None, failure: str | None) -> dict[str, Any]:
    if run is None:
        return {"failure": failure}
    return {
        "requests": run.requests,
        "registered": run.registered,
        "statuses": dict(sorted(run.statuses.items())),
        "classes": classes(run.statuses),
        "paths": {p: dict(sorted(c.items())) for p, c in sorted(run.paths.items())},
        "seconds": round(run.seconds, 1),
        "errors": dict(run.errors.most_common()),
        "failure": failure,
    }


def database(backend: str, work: Path, cluster: Any) -> str:
    """A fresh database of *backend* with the registry's schema: its path or URL."""
    if backend == "sqlite":
        return str(work / "r.db")
    url: str = cluster.new_database("fuzz")
    command = [sys.executable, "-m", "mesh", "registry", "migrate", "--db", url]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(done.stderr.strip())
    return url


async def measure(
    backend: str, cluster: Any, per_operation: int, stateful_seconds: int, legacy: int, seed: int
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="registry-fuzz-") as tmp:
        work = Path(tmp)
        db = database(backend, work, cluster)
        async with running_registry(db, *REGISTRY_ARGS, env=REGISTRY_ENV) as url:
            unit = await run_schemathesis(
                url,
                work,
                max_examples=per_operation,
                seed=seed,
                timeout=3600,
                phases="examples,coverage,fuzzing",
            )
            stateful = await run_schemathesis(
                url,
                work,
                max_examples=per_operation,
                seed=seed,
                timeout=stateful_seconds + 600,
                phases="stateful",
                max_time=stateful_seconds,
            )
            async with httpx.AsyncClient(base_url=url, timeout=10) as http:
                await prepare_legacy(http)
            legacy_run: LegacyRun | None = None
            failure = None
            try:
                legacy_run = await trio.to_thread.run_sync(
                    functools.partial(fuzz_legacy, url, examples=legacy, seed=seed)
                )
            except AssertionError as exc:  # hypothesis' shrunk example
                failure = str(exc)[:2000]
    return {
        "schemathesis": summary_of(unit),
        "stateful": summary_of(stateful),
        "legacy": legacy_summary(legacy_run, failure),
        "failures_text": [r.output[-20000:] for r in (unit, stateful) if r.returncode != 0],
    }


def report(backend: str, result: dict[str, Any]) -> None:
    unit, stateful, legacy = result["schemathesis"], result["stateful"], result["legacy"]
    print(f"== {backend}")
    print(
        f"{'run':<34} {'cases':>7} {'requests':>9} {'2xx':>6} {'4xx':>6} {'5xx':>5}"
        f" {'failures':>9} {'seconds':>8}"
    )
    for name, run in (
        ("schemathesis examples+coverage+fuzz", unit),
        ("schemathesis stateful (links)", stateful),
    ):
        c = run["classes"]
        print(
            f"{name:<34} {run['cases']:>7} {run['requests']:>9} {c.get('2xx', 0):>6}"
            f" {c.get('4xx', 0):>6} {c.get('5xx', 0):>5} {run['unique_failures']:>9}"
            f" {run['seconds']:>8.0f}"
        )
    if legacy.get("requests") is not None:
        c = legacy["classes"]
        print(
            f"{'legacy GET (hypothesis)':<34} {legacy['requests']:>7} {legacy['requests']:>9}"
            f" {c.get('2xx', 0):>6} {c.get('4xx', 0):>6} {c.get('5xx', 0):>5}"
            f" {0 if legacy['failure'] is None else 1:>9} {legacy['seconds']:>8.0f}"
        )
        print(f"legacy register answers parsed line by line: {legacy['registered']}")
    else:
        print(f"legacy GET: FAILED {legacy['failure']}")
    print(f"stateful: {stateful['scenarios']} scenarios, links {stateful['links']}")
    total = unit["cases"] + stateful["cases"]
    print(f"schemathesis cases in all: {total}")
    for title, errors in (
        (
            "JSON API 4xx messages (values masked)",
            Counter(unit["errors"]) + Counter(stateful["errors"]),
        ),
        ("legacy API errors (values masked)", Counter(legacy.get("errors") or {})),
    ):
        print(f"\n{title}: {len(errors)} distinct")
        for message, n in errors.most_common():
            print(f"  {n:>6}  {message[:150]}")
    for text in result["failures_text"]:
        print(text)


def failed(result: dict[str, Any]) -> bool:
    """Whether a backend's run failed (a schemathesis failure, a legacy one, or any 5xx)."""
    servers = sum(result[k]["classes"].get("5xx", 0) for k in ("schemathesis", "stateful"))
    return bool(result["failures_text"] or result["legacy"].get("failure") or servers)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--per-operation", type=int, default=800)
    parser.add_argument("--stateful-seconds", type=int, default=90)
    parser.add_argument("--legacy", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "registry_fuzz.json"))
    args = parser.parse_args()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not backends or not set(backends) <= {"sqlite", "postgresql"}:
        raise SystemExit(f"--backends takes sqlite and/or postgresql, not {args.backends!r}")
    summary: dict[str, Any] = {
        "command": " ".join(["python3", "bench/registry_fuzz.py", *sys.argv[1:]]),
        "started": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime()),
        "load_average_start": round(os.getloadavg()[0], 2),
        "backends": {},
    }
    cluster = None
    if "postgresql" in backends:
        from tests.postgres import Cluster

        cluster = Cluster()
    try:
        for backend in backends:
            start = time.monotonic()
            result = trio.run(
                measure,
                backend,
                cluster,
                args.per_operation,
                args.stateful_seconds,
                args.legacy,
                args.seed,
            )
            result["seconds"] = round(time.monotonic() - start, 1)
            summary["backends"][backend] = result
            report(backend, result)
    finally:
        if cluster is not None:
            cluster.stop()
    summary["load_average_end"] = round(os.getloadavg()[0], 2)
    print(
        f"load average {summary['load_average_start']} at start,"
        f" {summary['load_average_end']} at end"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out}")
    return 1 if any(failed(r) for r in summary["backends"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
