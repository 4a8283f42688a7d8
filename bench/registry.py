"""Registry throughput: 1000 clients registering and heartbeating, beside a CGI baseline.

Runs ``stagemesh registry`` as its own process on loopback (a fresh SQLite file), then:

1. 1000 clients (httpx, one client with a bounded connection pool) each register through the
   JSON API and send heartbeats; req/s over the whole phase and per-request latency (from the
   request being handed to a pooled connection to its answer: p50/p99).
2. The legacy ``register`` URL on the same registry.
3. A process-per-request CGI baseline: a tiny HTTP server that runs ``python3 -c ...`` for every
   request, doing the same SQLite work as the legacy ``register`` (the 2012 deployment model).

Prints a table against the targets (>= 2000 req/s, p99 <= 50 ms, >= 20x CGI) and writes
``bench/results/registry.json``. Usage: ``python3 bench/registry.py [--clients 1000]``.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import trio

HERE = Path(__file__).resolve().parent

CGI_SCRIPT = r"""
import os, sqlite3, time, urllib.parse
q = dict(urllib.parse.parse_qsl(os.environ.get("QUERY_STRING", "")))
db = sqlite3.connect(os.environ["REGISTRY_DB"], isolation_level=None, timeout=30)
db.execute("PRAGMA journal_mode=WAL"); db.execute("PRAGMA synchronous=NORMAL")
db.execute("CREATE TABLE IF NOT EXISTS regs (fed TEXT, orch TEXT, name TEXT, host TEXT,"
           " port INT, supernode INT, t REAL, PRIMARY KEY (fed, orch, name))")
db.execute("CREATE TABLE IF NOT EXISTS feds (fed TEXT PRIMARY KEY, epoch REAL)")
now = time.time()
db.execute("BEGIN IMMEDIATE")
db.execute("INSERT OR IGNORE INTO feds VALUES (?, ?)", (q["federation"], now))
epoch = db.execute("SELECT epoch FROM feds WHERE fed = ?", (q["federation"],)).fetchone()[0]
sup = db.execute("SELECT name, host, port FROM regs WHERE fed = ? AND orch = ? AND supernode = 1",
                 (q["federation"], q["orchestra"])).fetchone()
want = q.get("supernode") == "yes" and sup is None
db.execute("INSERT OR REPLACE INTO regs VALUES (?, ?, ?, ?, ?, ?, ?)",
           (q["federation"], q["orchestra"], q["name"], os.environ["REMOTE_ADDR"], 7471,
            int(want), now))
db.execute("COMMIT")
out = ["Registered /%s/%s as %s in federation %s" % (q["orchestra"], q["name"],
       "supernode" if want else "node", q["federation"]), "Elapsed: %.6f" % (now - epoch)]
if sup and not want:
    out += ["Your supernode:", "%s %s /%s/%s %s %d" % (q["federation"], q["orchestra"],
            q["orchestra"], sup[0], sup[1], sup[2])]
print("\n".join(out))
"""


class _CgiHandler(http.server.BaseHTTPRequestHandler):
    """Runs one Python process per request, like a CGI server."""

    db = ""

    def do_GET(self) -> None:
        query = self.path.partition("?")[2]
        env = dict(
            os.environ, QUERY_STRING=query, REMOTE_ADDR=self.client_address[0], REGISTRY_DB=self.db
        )
        done = subprocess.run([sys.executable, "-c", CGI_SCRIPT], env=env, capture_output=True)
        body = done.stdout if done.returncode == 0 else b"Error: " + done.stderr[-200:]
        self.send_response(200 if done.returncode == 0 else 500)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


async def _load(
    base: str, requests: list[tuple[str, str, Any]], connections: int, clients: int
) -> dict[str, Any]:
    """Run *clients* logical clients; each gets its slice of *requests* in order.

    ``requests`` items are (method, url, json-or-None); a url containing ``{token}`` uses the
    token from the client's previous registration.
    """
    latencies: list[float] = []
    errors = 0
    gate = trio.Semaphore(connections)
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    per_client = [requests[i::clients] for i in range(clients)]
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as http:

        async def client(mine: list[tuple[str, str, Any]]) -> None:
            nonlocal errors
            token = ""
            for method, url, body in mine:
                async with gate:
                    t0 = time.perf_counter()
                    r = await http.request(method, url.replace("{token}", token), json=body)
                    latencies.append(time.perf_counter() - t0)
                if r.status_code >= 300:
                    errors += 1
                elif r.headers["content-type"].startswith("application/json"):
                    token = r.json().get("token", token)

        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for mine in per_client:
                nursery.start_soon(client, mine)
        wall = time.perf_counter() - t0
    return {
        "requests": len(latencies),
        "errors": errors,
        "seconds": wall,
        "req_per_s": len(latencies) / wall,
        "p50_ms": _pct(latencies, 50) * 1000,
        "p99_ms": _pct(latencies, 99) * 1000,
        "mean_ms": statistics.fmean(latencies) * 1000,
    }


def _proc_cpu(pid: int) -> float:
    """User+system CPU seconds used so far by process *pid* (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _start_registry(db: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "mesh", "registry", "--bind", "127.0.0.1:0", "--db", str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("ready registry="):
        proc.kill()
        raise SystemExit(f"registry did not start: {line!r}")
    return proc, line.split()[1].removeprefix("registry=")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--heartbeats", type=int, default=3, help="per client")
    parser.add_argument("--connections", type=int, default=64, help="httpx pool size")
    parser.add_argument("--cgi-requests", type=int, default=120)
    parser.add_argument("--out", default=str(HERE / "results" / "registry.json"))
    args = parser.parse_args()

    results: dict[str, Any] = {
        "clients": args.clients,
        "heartbeats_per_client": args.heartbeats,
        "connections": args.connections,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with tempfile.TemporaryDirectory() as tmp:
        proc, base = _start_registry(Path(tmp) / "registry.db")
        try:
            # round k of the load: client c's k-th request (its register, then heartbeats)
            register_url = "/api/v1/federations/bench/registrations"
            heartbeat = ("POST", "/api/v1/registrations/{token}/heartbeat", None)
            interleaved: list[tuple[str, str, Any]] = [
                (
                    "POST",
                    register_url,
                    {
                        "orchestra": f"o{c % 20}",
                        "name": f"n{c}",
                        "create": True,
                        "supernode": c < 20,
                    },
                )
                for c in range(args.clients)
            ]
            interleaved += [heartbeat] * (args.clients * args.heartbeats)
            c0 = _proc_cpu(proc.pid)
            results["json_register_heartbeat"] = trio.run(
                _load, base, interleaved, args.connections, args.clients
            )
            results["json_register_heartbeat"]["server_cpu_s"] = _proc_cpu(proc.pid) - c0
            legacy = [
                (
                    "GET",
                    f"/register?federation=legacy&orchestra=o{i % 20}&name=n{i}"
                    f"&supernode={'yes' if i < 20 else 'no'}&conductor=no",
                    None,
                )
                for i in range(min(args.clients, 1000))
            ]
            httpx.get(base + "/federation?federation=legacy&create=yes")
            for o in range(20):
                httpx.get(base + f"/orchestra?federation=legacy&orchestra=o{o}&create=yes")
            c0 = _proc_cpu(proc.pid)
            results["legacy_register"] = trio.run(
                _load, base, legacy, args.connections, len(legacy)
            )
            results["legacy_register"]["server_cpu_s"] = _proc_cpu(proc.pid) - c0
        finally:
            proc.terminate()
            proc.wait(timeout=10)

        _CgiHandler.db = str(Path(tmp) / "cgi.db")
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _CgiHandler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            cgi_base = f"http://127.0.0.1:{server.server_address[1]}"
            cgi = [
                (
                    "GET",
                    f"/register?federation=legacy&orchestra=o{i % 20}&name=n{i}"
                    f"&supernode={'yes' if i < 20 else 'no'}&conductor=no",
                    None,
                )
                for i in range(args.cgi_requests)
            ]
            c0 = _children_cpu()
            results["cgi_legacy_register"] = trio.run(
                _load, cgi_base, cgi, min(16, args.connections), len(cgi)
            )
            results["cgi_legacy_register"]["server_cpu_s"] = _children_cpu() - c0
        finally:
            server.shutdown()
            server.server_close()

    for key in ("json_register_heartbeat", "legacy_register", "cgi_legacy_register"):
        r = results[key]
        r["server_cpu_us_per_req"] = r["server_cpu_s"] / r["requests"] * 1e6
        r["req_per_server_cpu_s"] = r["requests"] / r["server_cpu_s"] if r["server_cpu_s"] else 0
    results["load_average"] = os.getloadavg()
    results["ratio_cpu_legacy_vs_cgi"] = (
        results["cgi_legacy_register"]["server_cpu_us_per_req"]
        / results["legacy_register"]["server_cpu_us_per_req"]
    )
    j = results["json_register_heartbeat"]
    leg = results["legacy_register"]
    cgi_r = results["cgi_legacy_register"]
    results["ratio_legacy_vs_cgi"] = leg["req_per_s"] / cgi_r["req_per_s"]
    results["ratio_json_vs_cgi"] = j["req_per_s"] / cgi_r["req_per_s"]
    results["targets"] = {
        "req_per_s": {"target": ">= 2000", "value": j["req_per_s"], "met": j["req_per_s"] >= 2000},
        "p99_ms": {"target": "<= 50", "value": j["p99_ms"], "met": j["p99_ms"] <= 50},
        "vs_cgi": {
            "target": ">= 20x",
            "value": results["ratio_legacy_vs_cgi"],
            "met": results["ratio_legacy_vs_cgi"] >= 20,
        },
    }

    print(
        f"registry bench: {args.clients} clients, {args.connections} connections, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    print(f"load average during the run: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(
        f"{'workload':34} {'requests':>8} {'errors':>6} {'req/s':>8} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'srv CPU us/req':>14}"
    )
    for key, label in [
        ("json_register_heartbeat", "JSON register + heartbeats"),
        ("legacy_register", "legacy register (stagemesh)"),
        ("cgi_legacy_register", "legacy register (CGI baseline)"),
    ]:
        r = results[key]
        print(
            f"{label:34} {r['requests']:>8} {r['errors']:>6} {r['req_per_s']:>8.0f} "
            f"{r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f} {r['server_cpu_us_per_req']:>14.0f}"
        )
    print()
    print(f"{'target':34} {'wanted':>10} {'measured':>10}  met")
    for key, label, fmt in [
        ("req_per_s", "throughput (JSON)", "{:.0f} req/s"),
        ("p99_ms", "p99 latency (JSON)", "{:.1f} ms"),
        ("vs_cgi", "legacy register vs CGI", "{:.1f}x"),
    ]:
        t = results["targets"][key]
        print(
            f"{label:34} {t['target']:>10} {fmt.format(t['value']):>10}  "
            f"{'yes' if t['met'] else 'NO'}"
        )
    print(
        f"{'legacy register vs CGI, CPU per request':34} {'':>10} "
        f"{results['ratio_cpu_legacy_vs_cgi']:>9.1f}x  (not a target; robust to load)"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
