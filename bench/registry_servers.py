"""The registry app under three ASGI servers, side by side, beside the CGI baseline.

Which server should ``stagemesh registry`` use? Each candidate serves the same app (the same
``create_app`` over the same store, a fresh SQLite file per cell) at 1 and 2 worker processes:

- **hypercorn** (trio worker), as ``stagemesh registry`` served it before this comparison:
  one listening socket shared by N forked processes, 8 accept loops on it, backlog 2048.
- **granian** (Rust HTTP parsing and sockets, the app on a uvloop asyncio loop): what
  ``stagemesh registry --workers N`` runs now, started as that command.
- **uvicorn** with httptools and uvloop (``--workers N``: uvicorn's own supervisor).

Per server and worker count, in one run: ``wrk`` closed loop at saturation (1000 keep-alive
connections, registrations then heartbeats, the Lua script of bench/registry.py), then the
open-loop generator of bench/registry.py at 1,000, 2,000 and 3,000 req/s offered (1000
keep-alive clients, latency from when each request was due). Achieved req/s, p50, p99, errors
and the server's CPU per request (all its processes), then the CGI baseline of
bench/registry.py (one Python process per legacy ``register``) in the same run, and every
server's saturation as a ratio of it.

The machine is shared, so cells are short (``--seconds``, default 4) and ratios in one run
are what count. Prints a table and writes ``bench/results/registry_servers.json``::

    python3 bench/registry_servers.py [--servers hypercorn,granian,uvicorn] [--workers 1,2]
                                      [--rates 1000,2000,3000] [--seconds 4]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

import registry as base  # noqa: E402  (bench/registry.py: generators, wrk, CGI baseline)

from tests.harness import free_port  # noqa: E402

SERVERS = ("hypercorn", "granian", "uvicorn")
DB_ENV = "STAGEMESH_BENCH_DB"


def make_app() -> Any:
    """App factory for the hypercorn and uvicorn workers: the registry app over the SQLite file
    named by ``$STAGEMESH_BENCH_DB``, with the same tuning ``stagemesh registry`` applies
    (registration limiter out of reach, collector frozen)."""
    from registry_bridge import RegistryStore, create_app

    db = os.environ[DB_ENV]
    store = RegistryStore(Path(db), lock_file=Path(f"{db}-lock"))
    app = create_app(store, register_burst=10**9, register_rate=1e9)
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)
    return app


def _serve(server: str, workers: int, db: str, port: int) -> int:
    """``--serve SERVER``: run *server* with *workers* processes on 127.0.0.1:*port*."""
    os.environ[DB_ENV] = db
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")]
    )
    from registry_bridge import RegistryStore

    RegistryStore(Path(db), lock_file=Path(f"{db}-lock")).close()  # the schema, once
    if server == "hypercorn":
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(base_backlog())
        for _ in range(workers - 1):
            if os.fork() == 0:
                _hypercorn(sock)
                os._exit(0)
        _hypercorn(sock)
        return 0
    import uvicorn

    uvicorn.run(
        "registry_servers:make_app",
        factory=True,
        host="127.0.0.1",
        port=port,
        workers=workers,
        http="httptools",
        loop="uvloop",
        lifespan="off",
        backlog=base_backlog(),
        timeout_keep_alive=30,
        access_log=False,
        log_level="warning",
    )
    return 0


def _hypercorn(sock: socket.socket) -> None:
    """One hypercorn (trio worker) process on the shared listening *sock*, configured as
    ``stagemesh registry`` configured it (8 accept loops, backlog 2048, no logs)."""
    import functools

    import hypercorn.config
    import hypercorn.trio
    import trio

    app = make_app()
    config = hypercorn.config.Config()
    config.bind = [f"fd://{os.dup(sock.fileno())}" for _ in range(8)]
    config.backlog = base_backlog()
    config.accesslog = None
    config.errorlog = None
    config.include_server_header = False
    config.keep_alive_timeout = 30.0
    trio.run(functools.partial(hypercorn.trio.serve, app, config))


def base_backlog() -> int:
    """The registry's listen backlog (the same for every server)."""
    from registry_bridge._server import BACKLOG

    return BACKLOG


def _descendants(pid: int) -> list[int]:
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            kids = base._children(p)
        except OSError:
            continue
        out += kids
        todo += kids
    return out


def _wait_ready(url: str, proc: subprocess.Popen[str], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with status {proc.returncode} before serving")
        try:
            with urllib.request.urlopen(f"{url}/api/v1/federations", timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"server at {url} did not answer within {timeout:.0f} s")


def _start(server: str, workers: int, db: str) -> Any:
    """Start *server* with *workers* on a fresh *db*: ``(process, url)`` once it answers."""
    if server == "granian":
        [(proc, url)] = base.start_registries(db, workers)  # tests/registries.py's
    else:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--serve",
                server,
                "--workers",
                str(workers),
                "--db",
                db,
                "--port",
                str(port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
        )
    _wait_ready(url, proc)
    return proc, url


def _cell(args: argparse.Namespace, server: str, workers: int, tmp: Path) -> dict[str, Any]:
    """Every phase for one server at one worker count."""
    db = str(tmp / f"{server}{workers}.db")
    proc, url = _start(server, workers, db)
    host, port = url.removeprefix("http://").rsplit(":", 1)
    pids = [proc.pid, *_descendants(proc.pid)]
    out: dict[str, Any] = {"server": server, "workers": workers, "processes": len(pids)}
    try:
        if args.wrk:
            out["saturation"] = base._measure(
                pids,
                lambda: base.run_wrk(
                    url,
                    base._WRK_JSON,
                    connections=args.clients,
                    seconds=args.seconds,
                    env={"BENCH_CLIENTS": str(args.clients), "BENCH_PREFIX": f"s{workers}_"},
                ),
            )
        else:
            out["saturation"] = base._measure(
                pids,
                lambda: base.run_load(
                    host,
                    int(port),
                    base.json_request(host, int(port), "closed", f"s{workers}_"),
                    clients=args.clients,
                    seconds=args.seconds,
                    rate=None,
                ),
            )
        for rate in args.rates:
            out[f"open_{rate}"] = base._measure(
                pids,
                lambda rate=rate: base.run_load(
                    host,
                    int(port),
                    base.json_request(host, int(port), f"open{rate}", "n"),
                    clients=args.clients,
                    seconds=args.seconds,
                    rate=float(rate),
                    drain=5.0,
                ),
            )
    finally:
        base._stop(proc)
        for pid in pids[1:]:  # a worker left behind by a supervisor that was killed
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
    return out


def _row(label: str, r: dict[str, Any], cgi: float | None = None) -> str:
    ratio = f"{r['req_per_s'] / cgi:.0f}x" if cgi else ""
    return (
        f"{label:34} {r['req_per_s']:>7.0f} {r['p50_ms']:>7.1f} {r['p99_ms']:>8.1f} "
        f"{r['errors']:>6} {r['server_cpu_us_per_req']:>10.0f} {r['server_cpus_used']:>5.2f}"
        f" {ratio:>6}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--rates", default="1000,2000,3000", help="open-loop offered req/s")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=4.0, help="per cell")
    parser.add_argument("--cgi-connections", type=int, default=8)
    parser.add_argument("--cgi-seconds", type=float, default=4.0)
    parser.add_argument("--legacy-connections", type=int, default=32)
    parser.add_argument("--legacy-seconds", type=float, default=4.0)
    parser.add_argument("--no-wrk", dest="wrk", action="store_false")
    parser.add_argument("--out", default=str(HERE / "results" / "registry_servers.json"))
    parser.add_argument("--serve", choices=["hypercorn", "uvicorn"], help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return _serve(args.serve, int(args.workers), args.db, args.port)
    servers = [s for s in args.servers.split(",") if s]
    if not set(servers) <= set(SERVERS):
        raise SystemExit(f"--servers takes {', '.join(SERVERS)}, not {args.servers!r}")
    settings = [int(w) for w in args.workers.split(",")]
    args.rates = [int(r) for r in args.rates.split(",")]
    if args.wrk and shutil.which("wrk") is None:
        print("wrk not found (apt-get install -y wrk): saturation uses the lean generator")
        args.wrk = False
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 8192)), hard))
    results: dict[str, Any] = {
        "command": " ".join(["python3", "bench/registry_servers.py", *sys.argv[1:]]),
        "clients": args.clients,
        "seconds": args.seconds,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average_start": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp_name:
        tmp = Path(tmp_name)
        cells = {f"{s} w={w}": _cell(args, s, w, tmp) for s in servers for w in settings}
        cgi = base._bench_cgi(args, tmp)
    results["cells"] = cells
    results["cgi_legacy_register"] = cgi
    results["load_average_end"] = os.getloadavg()
    la0 = " ".join(f"{x:.2f}" for x in results["load_average_start"])
    la1 = " ".join(f"{x:.2f}" for x in results["load_average_end"])
    print(
        f"registry servers: {args.clients} clients, {os.cpu_count()} CPUs, "
        f"{args.seconds:g} s a cell, Python {platform.python_version()}"
    )
    print(f"load average: {la0} at start, {la1} at end")
    print(
        f"{'cell':34} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>8} {'errors':>6} "
        f"{'CPU us/req':>10} {'CPUs':>5} {'vs CGI':>6}"
    )
    for name, cell in cells.items():
        tool = "wrk" if args.wrk else "closed loop"
        print(_row(f"{name} saturation ({tool})", cell["saturation"], cgi["req_per_s"]))
        for rate in args.rates:
            print(_row(f"{name} open loop {rate}/s", cell[f"open_{rate}"]))
    print(_row(f"CGI legacy register, {args.cgi_connections} conns", cgi))
    print(
        "(CPU us/req and CPUs: every process of the server; open loop: latency from when each "
        "request was due; vs CGI: saturation req/s over the CGI baseline's)"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
