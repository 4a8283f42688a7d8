"""``stagemesh demo``: a registry and a whole federation on this machine, in one command.

The demo starts the same programs a real event runs, as separate processes: one
``stagemesh registry`` and N ``stagemesh node`` processes in two orchestras (or, with
``--conference``, two rooms of stations running stand-in record, encode and upload roles).
Everything binds to 127.0.0.1: no mDNS, and beacons only on loopback on ports private to the
demo, so a demo never meets the machine's real nodes nor reaches another host. With
``--sites 2`` the two orchestras use different beacon ports and find each other only through
the registry, as two sites on different networks would.

It prints one line per process as it becomes ready, then the dashboard and registry URLs and
a final ``ready dashboard=URL registry=URL`` line; SIGINT (Ctrl-C) or SIGTERM stops every
process it started (each station stops its role processes first) and removes its temporary
folder. Each child runs in a process group of its own, so a Ctrl-C in the terminal reaches
only the demo, which stops the nodes (a graceful leave) before the registry.

The plan (who is where, with which flags and station files) is pure: :func:`plan_demo`,
:func:`node_argv`, :func:`station_file`; :func:`run_demo` is the trio driver.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import attrs
import httpx
import trio

from mesh._cli import CommandFailed, UsageError
from mesh._keys import write_key_file
from mesh._ports import DEFAULT_REGISTRY_PORT

__all__ = [
    "DEFAULT_BEACON_PORT",
    "DEFAULT_DASHBOARD_PORT",
    "DEFAULT_REGISTRY_PORT",
    "MAX_NODES",
    "MIN_NODES",
    "DemoCommand",
    "DemoMember",
    "DemoOptions",
    "node_argv",
    "plan_demo",
    "run_demo",
    "station_file",
]

MIN_NODES = 2
MAX_NODES = 32
"""A demo runs every node as a process on one machine; 32 is what a laptop carries well."""
DEFAULT_DASHBOARD_PORT = 7490
DEFAULT_BEACON_PORT = 7491
"""The demo's beacon port (``--sites 2`` uses it and the next one): not the default 7470, so
the demo's nodes never answer the beacons of real nodes on this machine."""
HOST = "127.0.0.1"
FEDERATION_KEY = "federation.key"
OPERATOR_KEY = "operator.key"
"""In the demo's folder: the federation key every node has, and (for a conference) the
operator key whose public half the stations and conductor candidates trust; pass
``--operator-key <folder>/operator.key`` to ``stagemesh roles`` to change a station."""
READY_TIMEOUT = 60.0
FORM_TIMEOUT = 90.0
STOP_GRACE = 15.0

_CONCERT = ("cmu", "colorado")
_ROOMS = ("room-a", "room-b")
_NAMES = (
    "ada", "bela", "clara", "dmitri", "erik", "fanny", "gustav", "hilda", "igor", "johann",
    "kaija", "ludwig", "meredith", "nadia", "olivier", "pauline", "quincy", "ravi", "sofia",
    "toru", "ursula", "vivaldi", "wanda", "xenakis", "yoko", "zoltan",
)  # fmt: skip


@attrs.frozen
class DemoMember:
    """One node of the demo: where it sits, its posts, its beacon port, whether it is a
    station."""

    orchestra: str
    name: str
    supernode: bool
    conductor: bool
    beacon_port: int
    station: bool = False

    @property
    def path(self) -> str:
        """``/<orchestra>/<name>``."""
        return f"/{self.orchestra}/{self.name}"

    def describe(self) -> str:
        """Its posts in words, for the demo's lines."""
        words = ["station"] if self.station else []
        if self.supernode:
            words.append("preferred supernode")
        if self.conductor:
            words.append("conductor candidate")
        return ", ".join(words)


@attrs.frozen
class DemoOptions:
    """What ``stagemesh demo`` is asked for (the command line maps onto this one to one)."""

    nodes: int = 6
    sites: int = 1
    conference: bool = False
    federation: str = "demo"
    registry_port: int = DEFAULT_REGISTRY_PORT
    dashboard_port: int = DEFAULT_DASHBOARD_PORT
    beacon_port: int = DEFAULT_BEACON_PORT
    state_dir: Path | None = None
    """The demo's folder (kept); ``None``: a new temporary folder, removed at the end."""

    def check(self) -> None:
        """Raise :class:`UsageError` for an out-of-range option."""
        if not MIN_NODES <= self.nodes <= MAX_NODES:
            raise UsageError(
                f"--nodes {self.nodes} is out of range: a demo runs {MIN_NODES} to {MAX_NODES} "
                "nodes on this machine"
            )
        if self.sites not in (1, 2):
            raise UsageError(f"--sites {self.sites}: 1 (one LAN) or 2 (two sites and a registry)")
        for flag, port in (
            ("--registry-port", self.registry_port),
            ("--dashboard-port", self.dashboard_port),
        ):
            if not 0 <= port <= 65535:
                raise UsageError(f"{flag} {port} is not a port (0-65535; 0 picks a free one)")
        if not 1 <= self.beacon_port <= 65534:
            raise UsageError(f"--beacon-port {self.beacon_port} is not a port (1-65534)")


def plan_demo(options: DemoOptions) -> list[DemoMember]:
    """Who runs where: the nodes split over two orchestras (two rooms for a conference),
    the first of each a supernode and a conductor candidate; with two sites each orchestra
    beacons on its own port."""
    groups = _ROOMS if options.conference else _CONCERT
    members = []
    for index in range(options.nodes):
        group = index % 2
        first = index < 2
        name = _NAMES[index] if index < len(_NAMES) else f"player{index + 1}"
        members.append(
            DemoMember(
                orchestra=groups[group],
                name=name,
                supernode=first,
                conductor=first,
                beacon_port=options.beacon_port + (group if options.sites == 2 else 0),
                station=options.conference,
            )
        )
    return members


def station_file(member: DemoMember) -> dict[str, Any]:
    """The station file of a conference station (it refuses ``stream``, so a push of a
    stream shows a typed refusal): stand-ins for record, encode and upload that need no
    camera, ffmpeg or rsync and write only in the station's data folder (relative paths go
    there, inside the demo's folder). ``record`` appends a line a second to a segment,
    ``encode`` copies the segments into one file every 2 s, ``upload`` copies them to an
    ``uploaded`` folder every 5 s (a periodic role: ``waiting`` between runs)."""
    stamp = 1_700_000_000_000
    loop_record = 'while :; do date >> "$$0/segment.ts"; sleep 1; done'
    loop_encode = 'while :; do cat "$$0"/*.ts > "$$1" 2>/dev/null; sleep 2; done'
    copy = 'mkdir -p "$$0/../uploaded" && cp "$$0"/* "$$0/../uploaded/"'
    uuid = f"{member.orchestra}-{member.name}"
    return {
        "blocked_roles": ["stream"],
        "variables": {"room": member.orchestra},
        "roles": {
            "record": {
                f"{uuid}-cam": {
                    "timestamp": stamp,
                    "device": "demo-camera",
                    "output_dir": "recordings",
                    "command": ["sh", "-c", loop_record, "$output_dir"],
                }
            },
            "encode": {
                f"{uuid}-mix": {
                    "timestamp": stamp,
                    "input": "recordings",
                    "output": "encoded.ts",
                    "command": ["sh", "-c", loop_encode, "$input", "$output"],
                }
            },
            "upload": {
                f"{uuid}-sync": {
                    "timestamp": stamp,
                    "source_dir": "recordings",
                    "destination": f"storage.local:/storage/{member.orchestra}",
                    "interval": 5,
                    "command": ["sh", "-c", copy, "$source_dir"],
                }
            },
        },
    }


def node_argv(
    member: DemoMember,
    options: DemoOptions,
    folder: Path,
    registry: str,
    *,
    dashboard: bool = False,
    roles_file: Path | None = None,
) -> list[str]:
    """The command line of one demo node (``python -m mesh node ...``)."""
    argv = [
        *(sys.executable, "-m", "mesh", "node"),
        *("--federation", options.federation, "--orchestra", member.orchestra),
        *("--name", member.name, "--bind", HOST, "--port", "0", "--no-mdns"),
        *("--broadcast-port", str(member.beacon_port), "--state-dir", str(folder / "state")),
        *("--registry", registry, "--key-file", str(folder / FEDERATION_KEY)),
    ]
    if options.conference:  # stations and conductor candidates take signed role changes
        argv += ["--operator-keys", str(folder / (OPERATOR_KEY + ".pub"))]
    if member.supernode:
        argv.append("--supernode")
    if member.conductor:
        argv.append("--conductor")
    if dashboard:
        argv += ["--status", f"{HOST}:{options.dashboard_port}"]
    if roles_file is not None:
        argv += ["--roles", str(roles_file)]
    return argv


def _check_tcp_port(port: int, flag: str, what: str) -> None:
    if port == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError as exc:
            raise UsageError(
                f"port {HOST}:{port} ({what}) is taken: {exc.strerror}; "
                f"pick another with {flag} PORT (0 picks a free one)"
            ) from None


def _check_udp_port(port: int) -> None:
    # Beacons share their port (SO_REUSEADDR), so a plain bind fails only when someone
    # already beacons there: another demo, or nodes this demo would then join.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("", port))
        except OSError as exc:
            raise UsageError(
                f"beacon port {port} (UDP) is taken: {exc.strerror} (another demo or other "
                "nodes use it); pick another with --beacon-port PORT"
            ) from None


def check_ports(options: DemoOptions) -> None:
    """Raise :class:`UsageError` naming the first port the demo needs that is taken."""
    _check_tcp_port(options.registry_port, "--registry-port", "registry")
    _check_tcp_port(options.dashboard_port, "--dashboard-port", "dashboard")
    _check_udp_port(options.beacon_port)
    if options.sites == 2:
        _check_udp_port(options.beacon_port + 1)


def child_environment() -> dict[str, str]:
    """The environment of the demo's processes: this one's, without the ``STAGEMESH_``
    settings that would change what the demo runs (a key file, a bind address...); where a
    node records its status URL is kept, so ``stagemesh status`` finds the demo's nodes."""
    keep = ("STAGEMESH_RUNTIME_DIR",)
    return {k: v for k, v in os.environ.items() if not k.startswith("STAGEMESH_") or k in keep}


_PR_SET_PDEATHSIG = 1


class _TiedProcess:
    """A child process that gets SIGTERM when the demo dies, however it dies (even by
    ``kill -9``), so a demo never leaves its nodes behind: ``PR_SET_PDEATHSIG``, which
    follows the *thread* that forked. trio starts processes from worker threads that end
    when idle, so these are started from the event loop's own thread, with plain
    ``subprocess.Popen`` (a few milliseconds each), and waited for through a pidfd."""

    def __init__(self, argv: Sequence[str], *, log: IO[bytes], env: dict[str, str],
                 cwd: Path) -> None:  # fmt: skip
        parent = os.getpid()
        libc = ctypes.CDLL(None, use_errno=True)

        def tie() -> None:  # in the child, between fork and exec
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
            if os.getppid() != parent:  # the demo died before the line above
                os._exit(1)

        self.popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            env=env,
            cwd=cwd,
            process_group=0,  # a Ctrl-C in the terminal reaches the demo only
            preexec_fn=tie,
        )
        self.pid = self.popen.pid
        assert self.popen.stdout is not None
        self.stdout = trio.lowlevel.FdStream(os.dup(self.popen.stdout.fileno()))
        self.popen.stdout.close()
        self._pidfd = os.pidfd_open(self.pid)

    @property
    def returncode(self) -> int | None:
        """The exit status (negative: the signal), ``None`` while it runs."""
        return self.popen.poll()

    def send_signal(self, signum: int) -> None:
        """Send *signum* unless it has exited."""
        self.popen.send_signal(signum)

    async def wait(self) -> int:
        """Wait for it to exit; its status."""
        while (status := self.popen.poll()) is None:
            await trio.lowlevel.wait_readable(self._pidfd)
        return status

    async def aclose(self) -> None:
        """Release its pipe and pidfd (after it exited)."""
        await self.stdout.aclose()
        with contextlib.suppress(OSError):
            os.close(self._pidfd)


class _Child:
    """One process of the demo, its log file and its ready line's fields."""

    def __init__(self, label: str, process: _TiedProcess, log: Path) -> None:
        self.label = label
        self.process = process
        self.log = log
        self.ready: dict[str, str] = {}
        self.is_ready = trio.Event()
        self.stopping = False


async def _read_lines(child: _Child, on_ready: Callable[[_Child], None]) -> None:
    stream = child.process.stdout
    assert stream is not None
    buf = b""
    while True:
        chunk = await stream.receive_some(4096)
        if not chunk:
            return
        buf += chunk
        while b"\n" in buf:
            raw, buf = buf.split(b"\n", 1)
            line = raw.decode(errors="replace")
            if line.startswith("ready ") and not child.is_ready.is_set():
                child.ready = dict(p.split("=", 1) for p in line.split()[1:] if "=" in p)
                child.is_ready.set()
                on_ready(child)


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _exit_text(status: int | None) -> str:
    if status is None:
        return "running"
    if status < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-status).name}"
    return f"exit status {status}"


def _log_tail(path: Path, lines: int = 3) -> str:
    try:
        tail = path.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return ""
    return " | ".join(t.strip() for t in tail)


class _Demo:
    """The trio driver: starts, watches and stops the demo's processes."""

    def __init__(self, options: DemoOptions, folder: Path, out: Callable[[str], None]) -> None:
        self.options = options
        self.folder = folder
        self.out = out
        self.children: list[_Child] = []
        self.members = plan_demo(options)
        self.env = child_environment()

    async def spawn(self, label: str, argv: Sequence[str], log: Path) -> _Child:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as err:
            process = _TiedProcess(argv, log=err, env=self.env, cwd=self.folder)
        await trio.lowlevel.checkpoint()
        child = _Child(label, process, log)
        self.children.append(child)
        return child

    async def wait_ready(self, children: list[_Child], what: str) -> None:
        """Wait until every child printed its ready line, saying who is still awaited every
        2 s; a child that exits first, or a timeout, is a :class:`CommandFailed`."""
        start = time.monotonic()
        while not all(c.is_ready.is_set() for c in children):
            for child in children:
                if child.process.returncode is not None and not child.is_ready.is_set():
                    raise CommandFailed(
                        f"{child.label} stopped before it was ready "
                        f"({_exit_text(child.process.returncode)}): {_log_tail(child.log)}"
                    )
            waited = time.monotonic() - start
            if waited > READY_TIMEOUT:
                raise CommandFailed(f"{what} not ready within {READY_TIMEOUT:g} s")
            with trio.move_on_after(2.0):
                while not all(c.is_ready.is_set() for c in children):
                    if any(c.process.returncode is not None for c in children):
                        break
                    await trio.sleep(0.05)
            pending = [c.label for c in children if not c.is_ready.is_set()]
            if pending and time.monotonic() - start >= 2.0:
                self.out(
                    f"  ... waiting for {len(pending)} of {len(children)} {what}: "
                    f"{', '.join(pending[:4])}{' ...' if len(pending) > 4 else ''} "
                    f"({time.monotonic() - start:.0f} s)"
                )

    async def start_registry(self, nursery: trio.Nursery) -> str:
        argv = [
            *(sys.executable, "-m", "mesh", "registry"),
            *("--bind", f"{HOST}:{self.options.registry_port}"),
            *("--db", str(self.folder / "registry.db")),
        ]
        child = await self.spawn("registry", argv, self.folder / "logs" / "registry.log")

        def said(c: _Child) -> None:
            self.out(f"  {'registry':<24} ready  {c.ready.get('registry', '?')}")

        nursery.start_soon(_read_lines, child, said)
        await self.wait_ready([child], "registry")
        return child.ready["registry"]

    async def start_nodes(self, nursery: trio.Nursery, registry: str) -> list[_Child]:
        """Start the nodes in two waves: first the preferred supernode and conductor
        candidate of each orchestra, then the others, so the posts go where the plan says
        (an alive holder keeps its post when a preferred node joins later)."""
        nodes: list[_Child] = []

        by_label = {f"node {m.path}": m for m in self.members}

        def said(c: _Child) -> None:
            posts = by_label[c.label].describe()
            self.out(
                f"  {c.label:<24} ready  {c.ready.get('status', '?')}"
                + (f"  ({posts})" if posts else "")
            )

        for wave in (True, False):
            started = []
            for index, member in enumerate(self.members):
                if member.supernode != wave:
                    continue
                started.append(await self.start_node(index, member, registry))
                nursery.start_soon(_read_lines, started[-1], said)
            nodes += started
            await self.wait_ready(started, "nodes")
        nodes.sort(key=lambda c: self.members.index(by_label[c.label]))
        return nodes

    async def start_node(self, index: int, member: DemoMember, registry: str) -> _Child:
        """Spawn one node (its station file first, for a conference)."""
        roles_file = None
        if member.station:
            roles_file = self.folder / "stations" / f"{member.orchestra}-{member.name}.json"
            roles_file.parent.mkdir(parents=True, exist_ok=True)
            roles_file.write_text(json.dumps(station_file(member), indent=1))
        argv = node_argv(
            member, self.options, self.folder, registry,
            dashboard=index == 0, roles_file=roles_file,
        )  # fmt: skip
        log = self.folder / "logs" / f"{member.orchestra}-{member.name}.log"
        return await self.spawn(f"node {member.path}", argv, log)

    async def wait_formed(self, nodes: list[_Child]) -> dict[str, Any]:
        """Wait until every node sees every other alive, one conductor and a supernode per
        orchestra, the same on all; return the first node's status."""
        want = {m.path for m in self.members}
        orchestras = {m.orchestra for m in self.members}
        start = time.monotonic()
        last_said = start
        async with httpx.AsyncClient(timeout=2.0) as http:
            while True:
                docs = []
                for child in nodes:
                    with contextlib.suppress(httpx.HTTPError, ValueError):
                        reply = await http.get(child.ready["status"] + "/api/status")
                        docs.append(reply.json())
                seeing = [
                    d
                    for d in docs
                    if {m["path"] for m in d["members"] if m["state"] == "alive"} >= want
                ]
                conductors = {d.get("conductor") for d in docs}
                supers = [set(d.get("supernodes", {})) >= orchestras for d in docs]
                if (
                    len(seeing) == len(nodes)
                    and len(conductors) == 1
                    and None not in conductors
                    and all(supers)
                ):
                    first: dict[str, Any] = docs[0]
                    return first
                now = time.monotonic()
                if now - start > FORM_TIMEOUT:
                    raise CommandFailed(
                        f"the federation did not form within {FORM_TIMEOUT:g} s: "
                        f"{len(seeing)} of {len(nodes)} nodes see everyone"
                    )
                if now - last_said >= 2.0:
                    last_said = now
                    self.out(
                        f"  ... waiting for the federation to form: {len(seeing)} of "
                        f"{len(nodes)} nodes see all {len(want)}, conductor "
                        f"{'/'.join(sorted(str(c) for c in conductors)) or 'none'} "
                        f"({now - start:.0f} s)"
                    )
                await trio.sleep(0.2)

    async def make_keys(self) -> None:
        """The federation key and, for a conference, the operator key pair (made with
        ``stagemesh keygen``, as a crew would; kept when the folder already has them)."""
        if not (self.folder / FEDERATION_KEY).exists():
            write_key_file(self.folder / FEDERATION_KEY)
        if self.options.conference and not (self.folder / OPERATOR_KEY).exists():
            await trio.run_process(
                [
                    *(sys.executable, "-m", "mesh", "keygen", "--operator"),
                    *(str(self.folder / OPERATOR_KEY), "--comment", "stagemesh demo"),
                ],
                capture_stdout=True,
                capture_stderr=True,
                env=self.env,
            )

    async def start(self, nursery: trio.Nursery) -> None:
        """Start the registry, then the nodes; wait for the federation; say where to look;
        then watch the nodes (until cancelled)."""
        options, say = self.options, self.out
        await self.make_keys()
        registry = await self.start_registry(nursery)
        nodes = await self.start_nodes(nursery, registry)
        doc = await self.wait_formed(nodes)
        supernodes = " ".join(str(p) for p in doc["supernodes"].values())
        say(
            f"federation {options.federation!r} formed: {len(nodes)} nodes, conductor "
            f"{doc['conductor']}, supernodes {supernodes}"
        )
        if options.conference:
            await self.push_station_files(nodes[0].ready["status"])
        dashboard = nodes[0].ready["status"] + "/"
        pages = f"{registry}/federations/{options.federation}"
        say(f"dashboard: {dashboard}  (node {self.members[0].path})")
        say(f"registry:  {pages}")
        if options.conference:
            say(f"operator key: {self.folder / OPERATOR_KEY} (stagemesh roles ... --operator-key)")
        say("Press Ctrl-C to stop the demo (every process it started stops with it).")
        say(f"ready dashboard={dashboard} registry={pages}")
        nursery.start_soon(self.watch, nodes)

    async def push_station_files(self, node_url: str) -> None:
        """Push each station's roles through the conductor (``stagemesh roles push``, as an
        operator would), so the conductor holds every station's configuration: a later
        ``roles push --merge`` adds to it, and the dashboard shows each push's answer."""

        async def push(member: DemoMember) -> None:
            argv = [
                *(sys.executable, "-m", "mesh", "roles", "push"),
                str(self.folder / "stations" / f"{member.orchestra}-{member.name}.json"),
                *("--station", member.path, "--node", node_url),
                *("--operator-key", str(self.folder / OPERATOR_KEY)),
            ]
            done = await trio.run_process(
                argv, capture_stdout=True, capture_stderr=True, check=False, env=self.env
            )
            said = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()
            result = "applied" if done.returncode == 0 else f"refused: {said[-1] if said else ''}"
            self.out(f"  {'push ' + member.path:<24} {result}  (its roles, through the conductor)")

        async with trio.open_nursery() as nursery:
            for member in self.members:
                if member.station:
                    nursery.start_soon(push, member)

    async def watch(self, nodes: list[_Child]) -> None:
        """Say when a node stops while the demo runs (the others carry on)."""
        said: set[int] = set()
        while True:
            for index, child in enumerate(nodes):
                status = child.process.returncode
                if status is not None and index not in said and not child.stopping:
                    said.add(index)
                    self.out(f"  {child.label} stopped ({_exit_text(status)}); the others carry on")
            await trio.sleep(0.2)

    async def stop(self) -> None:
        """SIGTERM to the nodes (they leave gracefully, stations stop their roles), then to
        the registry; SIGKILL whatever has not stopped after :data:`STOP_GRACE` seconds."""
        nodes = [c for c in self.children if c.label != "registry"]
        registry = [c for c in self.children if c.label == "registry"]
        for group in (nodes, registry):
            for child in group:
                child.stopping = True
                if child.process.returncode is None:
                    with contextlib.suppress(OSError):
                        child.process.send_signal(signal.SIGTERM)
            with trio.move_on_after(STOP_GRACE):
                for child in group:
                    await child.process.wait()
            for child in group:
                if child.process.returncode is None:
                    self.out(f"  {child.label} did not stop within {STOP_GRACE:g} s: killed")
                    with contextlib.suppress(OSError):
                        os.killpg(child.process.pid, signal.SIGKILL)
                    await child.process.wait()
                await child.process.aclose()


async def run_demo(options: DemoOptions, out: Callable[[str], None] | None = None) -> int:
    """Run the demo until SIGINT, SIGTERM or SIGHUP; return 0 after a clean stop. Start-up
    failures raise :class:`CommandFailed` (in an exception group, which the command line
    unwraps; everything started is stopped first)."""
    say = out or (lambda line: print(line, flush=True))
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    if options.state_dir is None:
        folder = Path(tempfile.mkdtemp(prefix="stagemesh-demo-"))
    else:
        folder = options.state_dir.resolve()
        folder.mkdir(parents=True, exist_ok=True)
    demo = _Demo(options, folder, say)
    kind = "conference: 2 rooms of stations" if options.conference else "concert: 2 orchestras"
    site = "two sites joined by the registry" if options.sites == 2 else "one LAN"
    say(
        f"stagemesh demo: federation {options.federation!r}, {options.nodes} nodes "
        f"({kind}, {site}), everything on {HOST}; state in {folder}"
    )
    stopped_by: list[str] = []
    try:
        with trio.open_signal_receiver(*_STOP_SIGNALS) as signals:
            async with trio.open_nursery() as nursery:

                async def on_signal() -> None:
                    async for signum in signals:
                        stopped_by.append(signal.Signals(signum).name)
                        nursery.cancel_scope.cancel()
                        return

                nursery.start_soon(on_signal)
                await demo.start(nursery)
    finally:
        with trio.CancelScope(shield=True):
            if stopped_by:
                say(f"stopping ({stopped_by[0]}): {len(demo.children)} processes")
            await demo.stop()
            if options.state_dir is None:
                shutil.rmtree(folder, ignore_errors=True)
            if stopped_by:
                say("stopped: every process of the demo has exited")
    return 0


class DemoCommand:
    """``stagemesh demo``: start a registry and a federation on this machine and show it."""

    name = "demo"
    help = "run a registry and a federation of nodes on this machine (loopback only) to try"
    environment = {
        "--nodes": "STAGEMESH_DEMO_NODES",
        "--federation": "STAGEMESH_DEMO_FEDERATION",
        "--state-dir": "STAGEMESH_DEMO_STATE_DIR",
    }
    """``STAGEMESH_NODES`` is the simulator's, ``STAGEMESH_FEDERATION`` and
    ``STAGEMESH_STATE_DIR`` a node's: a demo never takes a real node's settings from the
    environment."""

    def configure(self, parser: argparse.ArgumentParser) -> None:
        add = parser.add_argument
        add("--nodes", type=int, default=6, help=f"nodes to start, {MIN_NODES}-{MAX_NODES}")
        add("--sites", type=int, default=1, choices=(1, 2), help="1: one LAN; 2: two sites")
        add("--conference", action="store_true", help="two rooms of stations with roles")
        add("--federation", default="demo", help="federation name (default: demo)")
        add("--registry-port", type=int, default=DEFAULT_REGISTRY_PORT, help="registry port")
        add("--dashboard-port", type=int, default=DEFAULT_DASHBOARD_PORT, help="dashboard port")
        add("--beacon-port", type=int, default=DEFAULT_BEACON_PORT, help="the demo's beacons")
        add("--state-dir", type=Path, default=None, help="the demo's folder (default: temporary)")

    def run(self, args: argparse.Namespace) -> int:
        from mesh._names import InvalidName, check_name

        options = DemoOptions(
            nodes=args.nodes,
            sites=args.sites,
            conference=args.conference,
            federation=args.federation,
            registry_port=args.registry_port,
            dashboard_port=args.dashboard_port,
            beacon_port=args.beacon_port,
            state_dir=args.state_dir,
        )
        options.check()
        try:
            check_name(options.federation, "federation")
        except InvalidName as exc:
            raise UsageError(str(exc)) from None
        check_ports(options)
        return trio.run(run_demo, options)
