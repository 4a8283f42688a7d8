"""Registry benchmark: 1000 clients registering and heartbeating, beside a CGI baseline.

Targets (DESIGN.md): register+heartbeat for 1000 clients at >= 2000 req/s with p99 <= 50 ms,
and >= 20x a process-per-request CGI baseline. Each run starts ``stagemesh registry`` on
loopback (a fresh SQLite file) once per ``--workers`` setting and measures:

1. **Open loop at the target rate** (the p99 that counts). 1000 clients, each with its own
   keep-alive connection, register once and then heartbeat on a fixed schedule; together they
   offer ``--rate`` requests per second (2000) whatever the registry does, the way real nodes
   would. A client whose previous answer is late sends its next request as soon as it can,
   and latency is measured from the moment the request was *due*, not when it was sent, so
   a stalled server cannot hide its stall (coordinated omission corrected, as wrk2 does). The
   generator is a lean epoll loop in this process (its CPU per request is printed).
2. **Closed loop, saturation throughput**: ``wrk`` with 1000 connections, each request sent as
   soon as the previous answer arrived; 1000 registrations, then heartbeats round-robin over
   their tokens. wrk is C and uses little CPU, so the registry gets the machine. Without wrk
   (``apt-get install -y wrk``) the lean generator runs closed-loop instead (it says so).
3. **Legacy ``register``** on the same registry and on a **CGI baseline** (a tiny HTTP server
   that runs ``python3 -c ...`` per request doing the same SQLite work, the 2012 deployment
   model), both closed-loop with the same tool and concurrency: the ratio of their req/s.

Server CPU per request (user+system of every registry process over the phase) is printed for
every phase: it depends much less on what else the machine is doing than req/s do.

**Backends** (``--backends sqlite,postgresql``, the default): the same phases run for each
``--workers`` setting on a SQLite file and on PostgreSQL, in the same run, so their ratios
mean something on a busy machine. PostgreSQL is a throwaway cluster this script starts
(tests/postgres.py, Debian's ``postgresql`` package) with PostgreSQL's own durability
defaults (fsync and synchronous commit on), a fresh database per setting; or, with
``--db postgresql://...``, a database of yours (empty, or just made by ``stagemesh registry
migrate``; the bench leaves its registrations in it, each setting in federations of its
own). With the throwaway cluster the database server's CPU per request is printed too (all
its processes).

**A fleet** (``--processes 1,2``, the default; PostgreSQL only): each PostgreSQL setting also
runs as that many registries over the one database, each its own ``stagemesh registry``
process on its own port (as registries on several hosts behind one name are), with the
clients split evenly across them (client *i* talks to registry *i* mod N; with wrk, one wrk
per registry with its share of the connections, whose p50/p99 are the worse of the wrks').
CPU per request counts every registry process.

Every registry is started by ``tests/registries.py`` (:func:`spawn_registries`), the same
way the tests start theirs. ``--quick`` runs a shorter version (``--workers 1``, 4 s JSON
phases, 3 s legacy and CGI phases: SQLite, PostgreSQL and PostgreSQL x2 and the baseline in
2-3 minutes on a busy 2-CPU machine, where the default run takes about 5) for a first look.

Prints a table beside the targets, says plainly which are not met, and writes
``bench/results/registry.json``. The registry runs with its per-address registration limit
set out of reach (every request comes from 127.0.0.1), so the limiter's code runs but never
refuses.

``--in-process`` measures only what the registry's own code costs, without HTTP: the app and
its store in this process, driven through raw ASGI calls (no sockets, no h11), one request at
a time and 50 at a time, for JSON register, heartbeat and legacy register; it prints wall and
CPU microseconds per request and writes ``bench/results/registry_inprocess.json``. It imports
``registry_bridge`` from ``PYTHONPATH``, so the same script measures another checkout
(``PYTHONPATH=/path/to/other/checkout python3 bench/registry.py --in-process``) for a
before/after comparison. Usage::

    apt-get install -y wrk   # optional, for the closed-loop phases
    python3 bench/registry.py [--workers 1,2] [--backends sqlite,postgresql] [--db URL]
                              [--processes 1,2] [--rate 2000] [--clients 1000]
                              [--seconds 10] [--quick]
    python3 bench/registry.py --in-process [--requests 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import functools
import heapq
import http.server
import json
import os
import platform
import re
import resource
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
NO_LIMIT = ("--register-burst", "1000000000", "--register-rate", "1000000000")
"""The per-address registration limit out of reach (every request comes from 127.0.0.1): its
code runs, it never refuses."""


def _tests_path() -> None:
    """Make the checkout's ``tests`` package importable (not at the start: ``--in-process``
    imports ``registry_bridge`` from ``PYTHONPATH``)."""
    if str(HERE.parent) not in sys.path:
        sys.path.insert(0, str(HERE.parent))


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


# ----------------------------------------------------------------------------- load generator


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


_TOKEN = re.compile(rb'"token":"([^"]+)"')


class _Client:
    __slots__ = ("buf", "busy", "due", "i", "k", "sent_at", "sock", "token")

    def __init__(self, i: int) -> None:
        self.i = i
        self.k = 0  # requests sent so far
        self.sock: socket.socket | None = None
        self.token = b""
        self.buf = b""
        self.busy = False
        self.due = 0.0  # when the request in flight (or the next one) was due
        self.sent_at = 0.0


def json_request(host: str, port: int, federation: str, prefix: str) -> Any:
    """Client i's k-th request: register (k = 0), then heartbeats with its token."""
    head = f"Host: {host}:{port}\r\nContent-Type: application/json\r\n"

    def make(c: _Client) -> bytes:
        if c.k == 0 or not c.token:
            body = json.dumps(
                {
                    "orchestra": f"o{c.i % 20}",
                    "name": f"{prefix}{c.i}",
                    "create": True,
                    "supernode": c.i < 20,
                }
            ).encode()
            return (
                f"POST /api/v1/federations/{federation}/registrations HTTP/1.1\r\n{head}"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode() + body
        return (
            b"POST /api/v1/registrations/"
            + c.token
            + b"/heartbeat HTTP/1.1\r\n"
            + head.encode()
            + b"Content-Length: 0\r\n\r\n"
        )

    return make


def legacy_request(host: str, port: int, prefix: str) -> Any:
    """Every request a legacy ``register`` of a new name (as the wrk script does)."""

    def make(c: _Client) -> bytes:
        sup = "yes" if c.k == 0 and c.i < 20 else "no"
        return (
            f"GET /register?federation=legacy&orchestra=o{c.i % 20}&name={prefix}{c.i}_{c.k}"
            f"&supernode={sup}&conductor=no HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n"
        ).encode()

    return make


def run_load(
    host: str,
    port: int | Sequence[int],
    make: Any,
    *,
    clients: int,
    seconds: float,
    rate: float | None,
    drain: float = 15.0,
) -> dict[str, Any]:
    """Drive *clients* keep-alive connections; open loop at *rate* req/s, else closed loop.

    Open loop: client i's n-th request is due at ``i / rate + n * clients / rate``; latency
    runs from that due time to the end of the answer. Closed loop: each client sends its next
    request as soon as its previous answer is complete; latency runs from sending. With
    several ports (registries), client i connects to port ``i % len(ports)``.
    """
    ports = [port] if isinstance(port, int) else list(port)
    ep = select.epoll()
    cs = [_Client(i) for i in range(clients)]
    by_fd: dict[int, _Client] = {}
    lat: list[float] = []
    dues: list[float] = []  # when each request in *lat* was due
    service: list[float] = []
    status_errors = 0
    conn_errors = 0
    period = clients / rate if rate else 0.0
    t0 = time.perf_counter() + 0.05
    end = t0 + seconds
    cpu0 = time.process_time()

    def due_of(c: _Client) -> float:
        return t0 + (c.i / rate + c.k * period if rate else 0.0)

    def connect(c: _Client) -> socket.socket:
        s = socket.create_connection((host, ports[c.i % len(ports)]))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        by_fd[s.fileno()] = c
        ep.register(s.fileno(), select.EPOLLIN)
        return s

    def drop(c: _Client) -> None:
        if c.sock is not None:
            del by_fd[c.sock.fileno()]
            ep.unregister(c.sock.fileno())
            c.sock.close()
            c.sock = None
        c.buf = b""

    def send(c: _Client, now: float) -> None:
        nonlocal conn_errors
        c.due = due_of(c) if rate else now
        data = make(c)
        for _ in range(2):
            try:
                if c.sock is None:
                    c.sock = connect(c)
                c.sent_at = time.perf_counter()
                c.sock.sendall(data)
                break
            except OSError:
                conn_errors += 1
                drop(c)
        else:
            c.k += 1
            _next(c)
            return
        c.busy = True
        c.k += 1

    def _next(c: _Client) -> None:
        """Queue client *c*'s next request if it is due before the end."""
        due = due_of(c) if rate else time.perf_counter()
        if due < end:
            heapq.heappush(heap, (due, c.i))

    heap: list[tuple[float, int]] = [(due_of(c), c.i) for c in cs]
    heapq.heapify(heap)
    while True:
        now = time.perf_counter()
        # every request due before the end is sent, even after the end (when its client was
        # still busy): dropping late ones would hide exactly the slow answers
        while heap and heap[0][0] <= now:
            _, i = heapq.heappop(heap)
            send(cs[i], now)
        busy = any(c.busy for c in cs)
        if (not heap and not busy) or now >= end + drain:
            break
        timeout = 0.05
        if heap:
            timeout = max(0.0, min(timeout, heap[0][0] - now))
        for fd, _ev in ep.poll(timeout):
            c = by_fd.get(fd)
            if c is None or c.sock is None:
                continue
            try:
                chunk = c.sock.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                if c.busy:
                    conn_errors += 1
                    c.busy = False
                    lat.append(time.perf_counter() - c.due)
                    dues.append(c.due)
                    _next(c)
                drop(c)
                continue
            c.buf += chunk
            head_end = c.buf.find(b"\r\n\r\n")
            if head_end < 0:
                continue
            head = c.buf[:head_end].lower()
            m = re.search(rb"\r\ncontent-length: *(\d+)", head)
            length = int(m.group(1)) if m else 0
            if len(c.buf) < head_end + 4 + length:
                continue
            t = time.perf_counter()
            body = c.buf[head_end + 4 : head_end + 4 + length]
            c.buf = c.buf[head_end + 4 + length :]
            c.busy = False
            lat.append(t - c.due)
            dues.append(c.due)
            service.append(t - c.sent_at)
            if int(head[9:12]) >= 300:
                status_errors += 1
            tm = _TOKEN.search(body)
            if tm:
                c.token = tm.group(1)
            if b"\r\nconnection: close" in head:
                drop(c)
            _next(c)
    unfinished = 0
    for c in cs:
        if c.busy:
            unfinished += 1
            lat.append(time.perf_counter() - c.due)
            dues.append(c.due)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    for c in cs:
        drop(c)
    ep.close()
    n = len(lat)
    # after every client has registered (and connected): heartbeats only
    steady_from = t0 + (clients / rate if rate else 0.0) + 0.5
    steady = [x for x, d in zip(lat, dues, strict=True) if d >= steady_from]
    seconds_lat: dict[int, float] = {}
    for x, d in zip(lat, dues, strict=True):
        k = int(d - t0)
        seconds_lat[k] = max(seconds_lat.get(k, 0.0), x)
    return {
        "mode": f"open loop, {rate:.0f} req/s offered" if rate else "closed loop",
        "tool": "lean epoll generator (this script)",
        "clients": clients,
        "requests": n,
        "errors": status_errors + conn_errors + unfinished,
        "status_errors": status_errors,
        "connection_errors": conn_errors,
        "unfinished": unfinished,
        "offered_req_per_s": rate,
        # until the last answer: below the offered rate when the registry fell behind
        "seconds": wall,
        "req_per_s": n / wall,
        "p50_ms": _pct(lat, 50) * 1000,
        "p99_ms": _pct(lat, 99) * 1000,
        "p999_ms": _pct(lat, 99.9) * 1000,
        "max_ms": max(lat, default=float("nan")) * 1000,
        "p99_service_ms": _pct(service, 99) * 1000,
        "steady_p50_ms": _pct(steady, 50) * 1000,
        "steady_p99_ms": _pct(steady, 99) * 1000,
        "max_ms_by_second": [round(seconds_lat[k] * 1000, 1) for k in sorted(seconds_lat)],
        "generator_cpu_us_per_req": cpu / n * 1e6 if n else float("nan"),
    }


# ----------------------------------------------------------------------------- wrk

_WRK_JSON = r"""
local clients = tonumber(os.getenv("BENCH_CLIENTS"))
local prefix = os.getenv("BENCH_PREFIX")
local counter = 0
function setup(thread) thread:set("tid", counter); counter = counter + 1 end
function init(args)
  nthreads = tonumber(os.getenv("BENCH_THREADS"))
  quota = math.floor(clients / nthreads)
  made = 0; tokens = {}; ntok = 0; nxt = 0
  hdrs = {["Content-Type"] = "application/json"}
end
function request()
  if made < quota or ntok == 0 then
    local c = tid * quota + made
    made = made + 1
    local body = string.format(
      '{"orchestra":"o%d","name":"%s%d","create":true,"supernode":%s}',
      c % 20, prefix, c, (c < 20) and "true" or "false")
    return wrk.format("POST", "/api/v1/federations/closed/registrations", hdrs, body)
  end
  nxt = nxt % ntok + 1
  return wrk.format("POST", "/api/v1/registrations/" .. tokens[nxt] .. "/heartbeat")
end
function response(status, headers, body)
  local t = string.match(body, '"token":"([^"]+)"')
  if t then ntok = ntok + 1; tokens[ntok] = t end
end
"""

_WRK_LEGACY = r"""
local prefix = os.getenv("BENCH_PREFIX")
local counter = 0
function setup(thread) thread:set("tid", counter); counter = counter + 1 end
function init(args) n = 0 end
function request()
  n = n + 1
  return wrk.format("GET", string.format(
    "/register?federation=legacy&orchestra=o%d&name=%s%d_%d&supernode=%s&conductor=no",
    n % 20, prefix, tid, n, (n <= 20 and tid == 0) and "yes" or "no"))
end
"""

_WRK_DONE = r"""
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


def run_wrk(
    url: str | Sequence[str],
    script: str,
    *,
    connections: int,
    seconds: float,
    env: dict[str, str],
) -> dict[str, Any]:
    """Closed loop with wrk (one thread); the Lua *script* makes the requests. With several
    URLs (registries), one wrk per URL at once, each with its share of the *connections*
    (and of ``BENCH_CLIENTS``) and its own ``BENCH_PREFIX``: requests add up, and p50/p99/max
    are the worst of the wrks' (percentiles do not add up)."""
    urls = [url] if isinstance(url, str) else list(url)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script + _WRK_DONE)
    try:
        procs = []
        for k, target in enumerate(urls):
            share = dict(env, BENCH_THREADS="1")
            if len(urls) > 1:
                share["BENCH_PREFIX"] = f"{env.get('BENCH_PREFIX', '')}{k}_"
                if "BENCH_CLIENTS" in env:
                    share["BENCH_CLIENTS"] = str(int(env["BENCH_CLIENTS"]) // len(urls))
            procs.append(
                subprocess.Popen(
                    [
                        "wrk",
                        "-t1",
                        f"-c{connections // len(urls)}",
                        f"-d{seconds:g}s",
                        "--timeout",
                        "10s",
                        "-s",
                        f.name,
                        target,
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=dict(os.environ, **share),
                )
            )
        outs = []
        for proc in procs:
            out, err = proc.communicate()
            if proc.returncode != 0:
                raise SystemExit(f"wrk failed: {err.strip()}")
            outs.append(out)
    finally:
        os.unlink(f.name)
    ws = [
        json.loads(
            next(x for x in out.splitlines() if x.startswith("WRKJSON ")).removeprefix("WRKJSON ")
        )
        for out in outs
    ]
    wall = max(w["duration_us"] for w in ws) / 1e6
    requests = sum(w["requests"] for w in ws)
    kinds = ("connect", "read", "write", "status", "timeout")
    wrk_errors = {k: sum(w[k] for w in ws) for k in kinds}
    return {
        "mode": "closed loop",
        "tool": "wrk -t1" if len(ws) == 1 else f"wrk -t1 x{len(ws)}",
        "clients": connections,
        "requests": requests,
        "errors": sum(wrk_errors.values()),
        "wrk_errors": wrk_errors,
        "seconds": wall,
        "req_per_s": requests / wall,
        "p50_ms": max(w["p50_us"] for w in ws) / 1000,
        "p99_ms": max(w["p99_us"] for w in ws) / 1000,
        "max_ms": max(w["max_us"] for w in ws) / 1000,
    }


# ----------------------------------------------------------------------------- servers


class _CgiServer(http.server.ThreadingHTTPServer):
    request_queue_size = 256
    daemon_threads = True


def _cgi_serve(db: str) -> int:
    """``--cgi-serve DB``: run the CGI baseline server (its own process, so its CPU and its
    CGI processes' CPU can be read from /proc without counting the load generator)."""
    _CgiHandler.db = db
    server = _CgiServer(("127.0.0.1", 0), _CgiHandler)
    print(f"cgi http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()
    return 0


def _proc_cpu(pid: int, *, children: bool = False) -> float:
    """CPU seconds of process *pid* (with *children*: plus its reaped children's)."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    ticks = int(f[11]) + int(f[12]) + (int(f[13]) + int(f[14]) if children else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(x) for x in (task / "children").read_text().split()]
    return kids


def start_registries(
    db: str, workers: int, processes: int = 1
) -> list[tuple[subprocess.Popen[str], str]]:
    """*processes* registries (``stagemesh registry --workers N``, each on its own free
    loopback port) over *db*, this checkout's, with the per-address registration limit out
    of reach: each process and its URL once ready (tests/registries.py starts them)."""
    _tests_path()
    from tests.registries import spawn_registries

    return spawn_registries(db, processes, "--workers", str(workers), *NO_LIMIT, cwd=HERE.parent)


def stop_registries(started: list[tuple[subprocess.Popen[str], str]]) -> None:
    """Stop what :func:`start_registries` started."""
    _tests_path()
    from tests.registries import stop_registry

    for proc, _url in started:
        stop_registry(proc)


def _start_cgi(db: str) -> tuple[subprocess.Popen[str], str]:
    """The CGI baseline server (this script, ``--cgi-serve``): the process and its URL."""
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--cgi-serve", db],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("cgi "):
        proc.kill()
        proc.wait()
        raise SystemExit(f"the CGI baseline did not start: {line!r}")
    return proc, line.split()[1]


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _cpu_of(pids: list[int]) -> dict[int, float]:
    """CPU seconds of each of *pids*; the first (a server's main process) with its reaped
    children, so a database connection that ended during a phase is counted too."""
    return {p: _proc_cpu(p, children=i == 0) for i, p in enumerate(pids)}


def _measure(
    pids: list[int], run: Any, *, cgi: bool = False, db_pids: Any = None
) -> dict[str, Any]:
    c0 = sum(_proc_cpu(p, children=cgi) for p in pids)
    d0 = _cpu_of(db_pids()) if db_pids else {}
    result: dict[str, Any] = run()
    cpu = sum(_proc_cpu(p, children=cgi) for p in pids) - c0
    result["server_cpu_s"] = cpu
    result["server_cpu_us_per_req"] = cpu / result["requests"] * 1e6 if result["requests"] else 0
    # how many CPUs' worth the registry got: near 1.0 with --workers 2 means it was starved
    result["server_cpus_used"] = cpu / result["seconds"] if result["seconds"] else 0
    if db_pids:
        d1 = _cpu_of(db_pids())
        db_cpu = sum(v - d0.get(p, 0.0) for p, v in d1.items())
        result["database_cpu_s"] = db_cpu
        result["database_cpu_us_per_req"] = (
            db_cpu / result["requests"] * 1e6 if result["requests"] else 0
        )
    return result


def _bench_registry(
    args: argparse.Namespace,
    backend: str,
    workers: int,
    processes: int,
    tmp: Path,
    cluster: Any,
) -> dict[str, Any]:
    """*processes* registries of *workers* processes each on a fresh database of *backend*
    (or ``--db``): every phase, the clients split across the registries."""
    tag = f"w{workers}x{processes}"  # federations and names of this setting alone
    if backend == "sqlite":
        db = str(tmp / f"registry-{tag}.db")
    else:
        db = args.db or cluster.new_database(f"bench_{tag}")
        _tests_path()
        from tests.registries import registry_command

        done = registry_command("migrate", "--db", db)
        if done.returncode != 0:
            raise SystemExit(done.stderr.strip())
    db_pids = cluster.pids if cluster is not None and backend != "sqlite" else None
    measure = functools.partial(_measure, db_pids=db_pids)
    started = start_registries(db, workers, processes)
    urls = [url for _proc, url in started]
    host = urls[0].removeprefix("http://").rsplit(":", 1)[0]
    ports = [int(url.rsplit(":", 1)[1]) for url in urls]
    pids = [pid for proc, _url in started for pid in (proc.pid, *_children(proc.pid))]
    out: dict[str, Any] = {
        "backend": backend,
        "workers": workers,
        "registries": processes,
        "processes": len(pids),
    }
    try:
        out["json_open_loop"] = measure(
            pids,
            lambda: run_load(
                host,
                ports,
                json_request(host, ports[0], f"open{tag}", "n"),
                clients=args.clients,
                seconds=args.seconds,
                rate=args.rate,
            ),
        )
        if args.wrk:
            out["json_saturation"] = measure(
                pids,
                lambda: run_wrk(
                    urls,
                    _WRK_JSON,
                    connections=args.clients,
                    seconds=args.seconds,
                    env={"BENCH_CLIENTS": str(args.clients), "BENCH_PREFIX": f"s{tag}_"},
                ),
            )
        else:
            out["json_saturation"] = measure(
                pids,
                lambda: run_load(
                    host,
                    ports,
                    json_request(host, ports[0], "closed", f"s{tag}_"),
                    clients=args.clients,
                    seconds=args.seconds,
                    rate=None,
                ),
            )
        urllib.request.urlopen(f"{urls[0]}/federation?federation=legacy&create=yes").read()
        for o in range(20):
            urllib.request.urlopen(
                f"{urls[0]}/orchestra?federation=legacy&orchestra=o{o}&create=yes"
            ).read()
        out["legacy_saturation"] = measure(
            pids,
            lambda: _legacy(args, urls, f"l{tag}_", args.legacy_connections, args.legacy_seconds),
        )
    finally:
        stop_registries(started)
    return out


def _legacy(
    args: argparse.Namespace, urls: list[str], prefix: str, connections: int, seconds: float
) -> dict[str, Any]:
    if args.wrk:
        return run_wrk(
            urls,
            _WRK_LEGACY,
            connections=connections,
            seconds=seconds,
            env={"BENCH_PREFIX": prefix},
        )
    host = urls[0].removeprefix("http://").rsplit(":", 1)[0]
    ports = [int(url.rsplit(":", 1)[1]) for url in urls]
    return run_load(
        host,
        ports,
        legacy_request(host, ports[0], prefix),
        clients=connections,
        seconds=seconds,
        rate=None,
    )


def _bench_cgi(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    proc, url = _start_cgi(str(tmp / "cgi.db"))
    try:
        return _measure(
            [proc.pid],
            lambda: _legacy(args, [url], "c", args.cgi_connections, args.cgi_seconds),
            cgi=True,
        )
    finally:
        _stop(proc)


# ----------------------------------------------------------------------------- in process


def _bench_in_process(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Per-request cost of the app and its store, driven through raw ASGI calls."""
    import inspect
    import statistics

    import trio

    from registry_bridge import RegistryStore, create_app

    store = RegistryStore(tmp / "inprocess.db")
    extra: dict[str, Any] = {}
    if "register_rate" in inspect.signature(create_app).parameters:
        extra = {"register_burst": 10**9, "register_rate": 1e9}  # runs, never refuses
    app = create_app(store, **extra)
    json_type = [(b"content-type", b"application/json")]

    async def call(method: str, path: str, query: bytes, body: bytes, headers: Any) -> int:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query,
            "root_path": "",
            "headers": [(b"host", b"registry"), (b"content-length", b"%d" % len(body)), *headers],
            "client": ("10.1.2.3", 40000),
            "server": ("registry", 7480),
        }
        sent = False
        status = 0

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        await app(scope, receive, send)
        return status

    tokens: list[str] = []

    def register(i: int, tag: str) -> tuple[str, str, bytes, bytes, Any]:
        body = json.dumps(
            {"orchestra": f"o{i % 20}", "name": f"{tag}{i}", "create": True, "supernode": i < 20}
        ).encode()
        return ("POST", "/api/v1/federations/inproc/registrations", b"", body, json_type)

    def heartbeat(i: int, tag: str) -> tuple[str, str, bytes, bytes, Any]:
        return ("POST", f"/api/v1/registrations/{tokens[i % len(tokens)]}/heartbeat", b"", b"", [])

    def legacy(i: int, tag: str) -> tuple[str, str, bytes, bytes, Any]:
        query = f"federation=inproc&orchestra=o{i % 20}&name=L{tag}{i}&supernode=no&conductor=no"
        return ("GET", "/register", query.encode(), b"", [])

    async def measure(make: Any, tag: str, concurrency: int) -> tuple[float, float]:
        n = args.requests
        bad = 0

        async def worker(k: int) -> None:
            nonlocal bad
            for i in range(k, n, concurrency):
                if await call(*make(i, tag)) >= 300:
                    bad += 1

        wall0, cpu0 = time.perf_counter(), time.process_time()
        async with trio.open_nursery() as nursery:
            for k in range(concurrency):
                nursery.start_soon(worker, k)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        if bad:
            raise RuntimeError(f"{bad} of {n} requests failed ({make.__name__})")
        return wall / n * 1e6, cpu / n * 1e6

    async def main() -> dict[str, Any]:
        # a warm-up through the app, and 200 registrations whose tokens the heartbeats use
        for i in range(200):
            assert await call(*register(i, "warm")) == 201
        for i in range(200):
            answer = store.register(
                "inproc", f"o{i % 20}", f"hb{i}", host="10.1.2.3", port=7471, node_id=f"hb{i}"
            )
            tokens.append(answer["token"])
        out: dict[str, Any] = {}
        for concurrency in (1, 50):
            for make in (heartbeat, register, legacy):
                walls, cpus = [], []
                for r in range(args.rounds):
                    wall, cpu = await measure(make, f"c{concurrency}r{r}_", concurrency)
                    walls.append(wall)
                    cpus.append(cpu)
                out[f"{make.__name__}_{concurrency}"] = {
                    "concurrency": concurrency,
                    "call": make.__name__,
                    "wall_us_per_req": statistics.median(walls),
                    "cpu_us_per_req": statistics.median(cpus),
                    "wall_us_rounds": walls,
                    "cpu_us_rounds": cpus,
                }
        return out

    try:
        return trio.run(main)
    finally:
        store.close()


def _main_in_process(args: argparse.Namespace) -> int:
    import registry_bridge

    source = str(Path(registry_bridge.__file__).resolve().parent.parent)
    commit = subprocess.run(
        ["git", "-C", source, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    results: dict[str, Any] = {
        "command": " ".join(["python3", "bench/registry.py", *sys.argv[1:]]),
        "registry_bridge_from": source,
        "commit": commit,
        "python": platform.python_version(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average_start": os.getloadavg(),
        "requests": args.requests,
        "rounds": args.rounds,
    }
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp_name:
        results["calls"] = _bench_in_process(args, Path(tmp_name))
    results["load_average_end"] = os.getloadavg()
    la0 = " ".join(f"{x:.2f}" for x in results["load_average_start"])
    la1 = " ".join(f"{x:.2f}" for x in results["load_average_end"])
    print(f"registry in process (raw ASGI), registry_bridge from {source} ({commit})")
    print(f"load average: {la0} at start, {la1} at end; median of {args.rounds} rounds")
    print(f"{'call':12} {'at a time':>9} {'wall us/req':>12} {'CPU us/req':>11}")
    for r in results["calls"].values():
        print(
            f"{r['call']:12} {r['concurrency']:>9} {r['wall_us_per_req']:>12.0f} "
            f"{r['cpu_us_per_req']:>11.0f}"
        )
    out = Path(args.out if args.out_given else HERE / "results" / "registry_inprocess.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


# ----------------------------------------------------------------------------- report


def _row(label: str, r: dict[str, Any]) -> str:
    tool = "wrk" if r["tool"].startswith("wrk") else "lean"
    db = r.get("database_cpu_us_per_req")
    return (
        f"{label:48} {tool:>4} {r['req_per_s']:>7.0f} {r['p50_ms']:>7.1f} {r['p99_ms']:>8.1f} "
        f"{r['errors']:>6} {r['server_cpu_us_per_req']:>10.0f} {r['server_cpus_used']:>5.2f}"
        f" {'-' if db is None else f'{db:.0f}':>9}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2", help="registry --workers settings to run")
    parser.add_argument(
        "--backends", default="sqlite,postgresql", help="databases to run each setting on"
    )
    parser.add_argument(
        "--db",
        default=None,
        metavar="URL",
        help="a PostgreSQL database to use, empty or just migrated (default: a throwaway cluster)",
    )
    parser.add_argument(
        "--processes",
        default="1,2",
        help="PostgreSQL only: registry processes over the one database, each on its own "
        "port, the clients split across them",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a shorter run: --workers 1, 4 s JSON phases, 3 s legacy and CGI phases",
    )
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=2000.0, help="open-loop offered req/s")
    parser.add_argument("--seconds", type=float, default=10.0, help="per JSON phase")
    parser.add_argument("--legacy-connections", type=int, default=32)
    parser.add_argument("--legacy-seconds", type=float, default=6.0)
    parser.add_argument(
        "--cgi-connections", type=int, default=8, help="enough to keep 2 CPUs busy with CGI"
    )
    parser.add_argument("--cgi-seconds", type=float, default=8.0)
    parser.add_argument("--no-wrk", dest="wrk", action="store_false", help="lean generator only")
    parser.add_argument("--out", default=None, help="JSON results file")
    parser.add_argument(
        "--in-process", action="store_true", help="only the app + store cost, raw ASGI calls"
    )
    parser.add_argument("--requests", type=int, default=2000, help="per in-process round")
    parser.add_argument("--rounds", type=int, default=5, help="in-process rounds (median)")
    parser.add_argument("--cgi-serve", metavar="DB", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.out_given = args.out is not None
    if args.quick:
        args.workers, args.seconds = "1", 4.0
        args.legacy_seconds = args.cgi_seconds = 3.0
    if args.cgi_serve:
        return _cgi_serve(args.cgi_serve)
    if args.in_process:
        return _main_in_process(args)
    if args.out is None:
        args.out = str(HERE / "results" / "registry.json")
    if args.wrk and shutil.which("wrk") is None:
        print("wrk not found (apt-get install -y wrk): closed loops use the lean generator")
        args.wrk = False
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 8192)), hard))
    settings = [int(w) for w in args.workers.split(",")]
    fleets = [int(n) for n in args.processes.split(",")]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not set(backends) <= {"sqlite", "postgresql"} or not backends:
        raise SystemExit(f"--backends takes sqlite and/or postgresql, not {args.backends!r}")
    if args.db and not args.db.startswith(("postgresql://", "postgres://")):
        raise SystemExit(f"--db takes a postgresql:// URL, not {args.db!r}")
    if min(settings + fleets) < 1:
        raise SystemExit("--workers and --processes take counts of 1 or more")
    # (backend, workers, registries): SQLite is one host's file, so one registry on it
    setups = [
        (b, w, n) for b in backends for w in settings for n in (fleets if b != "sqlite" else [1])
    ]

    results: dict[str, Any] = {
        "command": " ".join(["python3", "bench/registry.py", *sys.argv[1:]]),
        "quick": args.quick,
        "clients": args.clients,
        "offered_rate": args.rate,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average_start": os.getloadavg(),
    }
    cluster = None
    if "postgresql" in backends and not args.db:
        _tests_path()
        from tests.postgres import Cluster

        cluster = Cluster(durable=True)
    try:
        with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp_name:
            tmp = Path(tmp_name)
            runs = {
                f"{b} w={w}" + (f" x{n}" if n > 1 else ""): _bench_registry(
                    args, b, w, n, tmp, cluster
                )
                for b, w, n in setups
            }
            cgi = _bench_cgi(args, tmp)
    finally:
        if cluster is not None:
            cluster.stop()
    results["runs"] = runs
    results["cgi_legacy_register"] = cgi
    results["load_average_end"] = os.getloadavg()
    targets: dict[str, Any] = {}
    for w, run in runs.items():
        op, sat, leg = run["json_open_loop"], run["json_saturation"], run["legacy_saturation"]
        targets[w] = {
            "saturation_req_per_s": {
                "target": ">= 2000",
                "value": sat["req_per_s"],
                "met": sat["req_per_s"] >= 2000,
            },
            "open_loop_p99_ms": {
                "target": "<= 50",
                "value": op["p99_ms"],
                "met": op["p99_ms"] <= 50 and op["errors"] == 0,
            },
            "json_vs_cgi": {
                "target": ">= 20x",
                "value": sat["req_per_s"] / cgi["req_per_s"],
                "met": sat["req_per_s"] / cgi["req_per_s"] >= 20,
            },
            "legacy_vs_cgi": {
                "target": ">= 20x",
                "value": leg["req_per_s"] / cgi["req_per_s"],
                "met": leg["req_per_s"] / cgi["req_per_s"] >= 20,
            },
        }
    results["targets"] = targets

    la0 = " ".join(f"{x:.2f}" for x in results["load_average_start"])
    la1 = " ".join(f"{x:.2f}" for x in results["load_average_end"])
    print(
        f"registry bench: {args.clients} clients, {os.cpu_count()} CPUs, "
        f"backends {', '.join(backends)}, "
        f"Python {platform.python_version()}, closed loops with "
        f"{'wrk' if args.wrk else 'the lean generator'}"
    )
    print(f"load average: {la0} at start, {la1} at end")
    print(
        f"{'phase':48} {'tool':>4} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>8} {'errors':>6} "
        f"{'CPU us/req':>10} {'CPUs':>5} {'DB us/req':>9}"
    )
    for w, run in runs.items():
        op = run["json_open_loop"]
        print(_row(f"{w} JSON open loop, {args.rate:.0f}/s", op))
        print(_row(f"{w} JSON saturation, {args.clients} conns", run["json_saturation"]))
        print(
            _row(
                f"{w} legacy register, {args.legacy_connections} conns",
                run["legacy_saturation"],
            )
        )
    print(_row(f"CGI legacy register, {args.cgi_connections} conns", cgi))
    print(
        "(CPU us/req and CPUs: all registry processes; CPUs = CPU seconds / wall seconds; "
        "DB us/req: the PostgreSQL server's processes; open loop: latency from when each "
        "request was due; xN: N registries on one database, each on its own port, the "
        "clients split across them)"
    )
    for w, run in runs.items():
        op = run["json_open_loop"]
        print(
            f"{w} open loop: p99.9 {op['p999_ms']:.1f} ms, max {op['max_ms']:.1f} ms; "
            f"once all {args.clients} registered (heartbeats only): p50 "
            f"{op['steady_p50_ms']:.1f} ms, p99 {op['steady_p99_ms']:.1f} ms; worst latency per "
            f"second: {', '.join(f'{x:.0f}' for x in op['max_ms_by_second'])} ms; "
            f"generator {op['generator_cpu_us_per_req']:.0f} us CPU/req"
        )
    print()
    header = "".join(f"{w:>18}" for w in runs)
    print(f"{'target':32} {'wanted':>9}{header}")
    for key, label, fmt in [
        ("saturation_req_per_s", "JSON saturation req/s", "{:.0f}"),
        ("open_loop_p99_ms", f"p99 at {args.rate:.0f}/s offered, ms", "{:.1f}"),
        ("json_vs_cgi", "JSON req/s vs CGI", "{:.0f}x"),
        ("legacy_vs_cgi", "legacy register vs CGI", "{:.0f}x"),
    ]:
        cells = ""
        for w in runs:
            t = targets[w][key]
            cells += f"{fmt.format(t['value']) + (' yes' if t['met'] else ' NO'):>18}"
        print(f"{label:32} {targets[next(iter(runs))][key]['target']:>9}{cells}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
