"""A harness for multi-host tests: network namespaces on a private bridge (iproute2, root).

    with Lan(3) as lan:                       # or the ``lan`` pytest fixture below
        proc = lan.spawn(lan.hosts[0], sys.executable, "-m", "mesh", "node", ...)
        line = proc.wait_for(lambda line: line.startswith("ready"), timeout=10)
        lan.link_down(lan.hosts[2])           # "unplug the cable" of host 2
        lan.link_up(lan.hosts[2])

Layout: one namespace holds a bridge ``br0`` (multicast snooping off); each host is a namespace
with ``lo`` up and ``eth0`` (a veth whose peer ``p<i>`` is a port of the bridge) holding
``10.77.0.<i+1>/24`` and a multicast route, so broadcast and mDNS work between hosts. Every name
lives inside the namespaces this harness made (nothing is added to the root namespace, and
nothing is sent on the machine's real interfaces). Namespace names carry the creating process id
and a random part (``smt-<pid>-<hex>-h0``), so parallel runs never collide, and namespaces left by
a dead run are swept at the next start, with any process a killed run left in them. Everything
is removed on exit, also after a failure.

Process ids are the harness's own: :meth:`Lan.close` ends only the processes
:meth:`Lan.spawn` started (by pid), then deletes the namespaces.

**A bad network** (``Lan(8, impair=Link(loss=0.05, delay=0.02, jitter=0.01))``): instead of the
kernel bridge, a user-space hub (:mod:`tests.impair`, in namespace ``smt-...-hub``) forwards every
frame between the hosts and loses, delays, reorders and duplicates them as its rules say
(``lan.hub``: per host pair and direction, partitions, counters). The kernel here has no
``netem``; see :mod:`tests.impair`. :meth:`Lan.link_down` then unplugs the host at the hub.

**Talking to a host's loopback** from the test process: :meth:`Lan.get_json` opens its TCP
connection inside the host's namespace (``setns`` in a short-lived thread), so a node's status
API on ``127.0.0.1`` can be read without starting a process per request.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import ipaddress
import json
import os
import queue
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import attrs
import pytest

from tests.impair import Hub, Link

__all__ = ["Host", "Lan", "NetnsError", "Spawned", "enter_netns", "in_netns", "lan", "socket_in"]

PREFIX = "smt"
SUBNET = "10.77.0.0/24"
IMPAIR_SCRIPT = str(Path(__file__).with_name("impair.py"))
_CLONE_NEWNET = 0x40000000
T = TypeVar("T")


class NetnsError(RuntimeError):
    """Raised when an ``ip`` command of the harness fails (the message has its stderr), or when
    the harness is used without root."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def list_namespaces() -> list[str]:
    """Names of the network namespaces in ``/run/netns`` (``ip netns list``)."""
    out = _ip("netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def sweep_stale() -> list[str]:
    """Delete namespaces of this harness whose creating process is gone, ending the processes
    still running in them (orphans of a run that was killed); return their names."""
    removed = []
    for name in list_namespaces():
        parts = name.split("-")
        if len(parts) < 4 or parts[0] != PREFIX or not parts[1].isdigit():
            continue
        pid = int(parts[1])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            for orphan in _ip("netns", "pids", name, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(orphan), signal.SIGKILL)
            _ip("netns", "del", name, check=False)
            removed.append(name)
        except PermissionError:
            pass
    return removed


def socket_in(
    netns: str, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM
) -> socket.socket:
    """A new socket that lives in network namespace *netns* (it keeps working from any
    thread: a socket belongs to the namespace it was made in). Made by a short-lived thread
    that enters the namespace, so the caller's own namespace never changes."""
    return in_netns(netns, lambda: socket.socket(family, kind))


def enter_netns(netns: str) -> None:
    """Move the calling *thread* into network namespace *netns* (for good: call it only in a
    thread of your own, which then makes its sockets, and starts its processes, there)."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open(f"/run/netns/{netns}", "rb") as handle:
        if libc.setns(handle.fileno(), _CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns {netns}: {os.strerror(errno)}")


def in_netns(netns: str, call: Callable[[], T]) -> T:
    """Run *call* in a short-lived thread inside network namespace *netns* and return what it
    returns (or raise what it raised): the sockets it makes live there, and so do the
    processes it starts (``subprocess`` forks from that thread), whatever user they run as.
    The caller's own namespace never changes."""
    made: list[T] = []
    failed: list[BaseException] = []

    def run() -> None:
        try:
            enter_netns(netns)
            made.append(call())
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=run, name=f"setns-{netns}")
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return made[0]


class _NetnsHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection whose socket is made inside a network namespace."""

    def __init__(self, netns: str, host: str, port: int | None, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.netns = netns

    def connect(self) -> None:
        sock = socket_in(self.netns)
        sock.settimeout(self.timeout)
        try:
            sock.connect((self.host, self.port))
        except BaseException:
            sock.close()
            raise
        self.sock = sock


@attrs.frozen
class Host:
    """One simulated machine: its namespace, address and the bridge port its cable goes to."""

    index: int
    netns: str
    address: str
    interface: str = "eth0"

    @property
    def port(self) -> str:
        """The bridge-side end of this host's cable."""
        return f"p{self.index}"


class Spawned:
    """A process started in a namespace, with its stdout lines collected by a thread."""

    def __init__(self, process: subprocess.Popen[str], host: Host) -> None:
        self._send_lock = threading.Lock()
        self.process = process
        self.host = host
        self.lines: list[str] = []
        self._stderr: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._threads = [
            threading.Thread(target=target, daemon=True)
            for target in (self._read, self._read_stderr)  # a full pipe would block the process
        ]
        for thread in self._threads:
            thread.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._stderr.append(line)

    def wait_for(self, predicate: Callable[[str], bool], timeout: float) -> str:
        """Return the first new stdout line satisfying *predicate*; raise ``TimeoutError`` after
        *timeout* seconds, or ``NetnsError`` if the process ends first."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no matching line from {self.host.netns} in {timeout} s")
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self._queue.put(None)
                raise NetnsError(
                    f"process in {self.host.netns} exited ({self.process.wait()}) "
                    f"before a matching line; stderr: {self.stderr()[-2000:]}"
                )
            self.lines.append(line)
            if predicate(line):
                return line

    def stderr(self) -> str:
        """Its stderr so far."""
        return "".join(self._stderr)

    def send(self, line: str) -> None:
        """Write *line* to its stdin (spawned with ``stdin=True``); ``NetnsError`` if it is
        gone."""
        if self.process.stdin is None:
            raise NetnsError("the process was spawned without a stdin")
        with self._send_lock:
            try:
                self.process.stdin.write(line + "\n")
                self.process.stdin.flush()
            except (BrokenPipeError, ValueError) as exc:
                raise NetnsError(f"process in {self.host.netns} is gone: {exc}") from exc

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM, then SIGKILL after *timeout*; return the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        status = self.process.wait()
        self._close_pipes()
        return status

    def kill(self) -> None:
        """SIGKILL (a crash)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._close_pipes()

    def _close_pipes(self) -> None:
        for thread in self._threads:
            thread.join(timeout=5)
        for pipe in (self.process.stdin, self.process.stdout, self.process.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


class Lan:
    """``size`` hosts (namespaces) on one bridge, or on an impairing hub with *impair*; a
    context manager that always cleans up.

    With ``impair=Link(...)`` the hosts hang off a :class:`tests.impair.Hub` (``lan.hub``)
    whose default rule is *impair* (``Link()`` for a hub that impairs nothing until told),
    whose random decisions come from *seed*, and which stops by itself after *hub_seconds*.
    ``bridge_netns`` is then the hub's namespace."""

    def __init__(
        self,
        size: int = 3,
        subnet: str = SUBNET,
        *,
        impair: Link | None = None,
        seed: int = 0,
        hub_seconds: float = 3600.0,
    ) -> None:
        if os.geteuid() != 0:
            raise NetnsError("network-namespace tests need root (CI runs them as root)")
        network = ipaddress.IPv4Network(subnet)
        if not network.is_private or size + 2 > network.num_addresses:
            raise ValueError(f"{subnet} must be a private network with room for {size} hosts")
        self.prefix = network.prefixlen
        self.run_id = f"{PREFIX}-{os.getpid()}-{secrets.token_hex(3)}"
        self.impair = impair
        self.seed = seed
        self.hub_seconds = hub_seconds
        self.bridge_netns = f"{self.run_id}-{'hub' if impair is not None else 'br'}"
        self.hosts = [
            Host(i, f"{self.run_id}-h{i}", str(network.network_address + i + 1))
            for i in range(size)
        ]
        self._hub: Hub | None = None
        self._sites: dict[int, tuple[Host, str]] = {}  # site host index -> (router, subnet)
        self._spawned: list[Spawned] = []
        self._created: list[str] = []

    # -- life cycle

    def __enter__(self) -> Lan:
        try:
            self.create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _add_netns(self, name: str) -> None:
        _ip("netns", "add", name)
        self._created.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def _add_host(self, host: Host) -> None:
        self._add_netns(host.netns)
        for key in ("all", "default"):
            subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    host.netns,
                    "sysctl",
                    "-q",
                    "-w",
                    f"net.ipv6.conf.{key}.disable_ipv6=1",
                ],
                capture_output=True,
                timeout=30,
            )

    def _configure(self, host: Host) -> None:
        _ip("-n", host.netns, "addr", "add", f"{host.address}/{self.prefix}", "brd", "+",
            "dev", host.interface)  # fmt: skip
        _ip("-n", host.netns, "link", "set", host.interface, "up")
        _ip("-n", host.netns, "route", "add", "224.0.0.0/4", "dev", host.interface)

    def create(self) -> None:
        """Make the bridge (or the hub) and the hosts (called by ``__enter__``)."""
        sweep_stale()
        if self.impair is not None:
            self._create_hub(self.impair)
            return
        br = self.bridge_netns
        self._add_netns(br)
        _ip("-n", br, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
        _ip("-n", br, "link", "set", "br0", "up")
        for host in self.hosts:
            self._add_host(host)
            _ip(
                "-n", br, "link", "add", host.port, "type", "veth",
                "peer", "name", host.interface, "netns", host.netns,
            )  # fmt: skip
            _ip("-n", br, "link", "set", host.port, "master", "br0", "up")
            self._configure(host)

    def _create_hub(self, link: Link) -> None:
        hub_ns = self.bridge_netns
        self._add_netns(hub_ns)
        for host in self.hosts:
            self._add_host(host)
        proc = self.spawn(
            Host(-1, hub_ns, ""),
            sys.executable,
            IMPAIR_SCRIPT,
            "hub",
            "--ports",
            str(len(self.hosts)),
            "--seed",
            str(self.seed),
            "--max-seconds",
            str(self.hub_seconds),
            "--link",
            json.dumps(link.to_json()),
            stdin=True,
        )
        proc.wait_for(lambda line: line.startswith('{"ready"'), timeout=30)
        self._hub = Hub(proc, len(self.hosts))
        for host in self.hosts:
            tap = f"t{host.index}"
            _ip("-n", hub_ns, "link", "set", tap, "netns", host.netns)
            _ip("-n", host.netns, "link", "set", tap, "name", host.interface)
            self._configure(host)

    def close(self) -> None:
        """Stop the hub (keeping its final counters in ``hub.final``), end the processes
        :meth:`spawn` started, then delete every namespace made."""
        if self._hub is not None:
            with contextlib.suppress(Exception):
                self._hub.close()
        for proc in self._spawned:
            with contextlib.suppress(OSError):
                proc.kill()
        self._spawned.clear()
        for name in reversed(self._created):
            _ip("netns", "del", name, check=False)
        self._created.clear()

    # -- using it

    @property
    def hub(self) -> Hub:
        """The impairing hub (only with ``impair=``)."""
        if self._hub is None:
            raise NetnsError("this Lan has a kernel bridge; pass impair=Link(...) for a hub")
        return self._hub

    @property
    def namespaces(self) -> list[str]:
        """Every namespace this harness made (hosts and bridge or hub)."""
        return [self.bridge_netns, *(h.netns for h in self.hosts)]

    def command(self, host: Host, *argv: str) -> list[str]:
        """*argv* prefixed to run inside *host* (for ``subprocess`` or ``trio.run_process``)."""
        return ["ip", "netns", "exec", host.netns, *argv]

    def run(
        self, host: Host, *argv: str, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """Run *argv* in *host* to completion; raise ``NetnsError`` if it fails and *check*."""
        result = subprocess.run(
            self.command(host, *argv), capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise NetnsError(f"{' '.join(argv)} in {host.netns}: {result.stderr.strip()}")
        return result

    def spawn(
        self,
        host: Host,
        *argv: str,
        env: dict[str, str] | None = None,
        stdin: bool = False,
    ) -> Spawned:
        """Start *argv* in *host* with stdout collected (see :class:`Spawned`; with *stdin*,
        :meth:`Spawned.send` writes to it); it is killed when the harness closes."""
        process = subprocess.Popen(
            self.command(host, *argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            text=True,
            env=env,
        )
        spawned = Spawned(process, host)
        self._spawned.append(spawned)
        return spawned

    def keep_multicast_local(self) -> None:
        """Stop the bridge from flooding multicast between hosts (broadcast and unicast still
        pass): each host's multicast stays on that host, as on laptops at different sites.
        Ableton Link finds its peers by multicast, so each host then has its own Link session.
        (Kernel bridge only: ``NetnsError`` on a hub.)"""
        if self._hub is not None:
            raise NetnsError("keep_multicast_local needs the kernel bridge, not impair=")
        for host in self.hosts:
            _ip("-n", self.bridge_netns, "link", "set", "dev", host.port,
                "type", "bridge_slave", "mcast_flood", "off")  # fmt: skip

    def get_json(self, host: Host, url: str, timeout: float = 5.0) -> Any:
        """``GET`` *url* from inside *host* (e.g. a node's status API on its loopback) and
        decode the JSON answer; ``NetnsError`` on a non-2xx status, ``OSError`` if it does not
        answer within *timeout* seconds."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"only http:// URLs, not {url!r}")
        conn = _NetnsHTTPConnection(host.netns, parts.hostname, parts.port, timeout)
        try:
            conn.request("GET", parts.path or "/", headers={"Accept": "application/json"})
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        if not 200 <= response.status < 300:
            raise NetnsError(f"GET {url} in {host.netns}: {response.status} {body[:200]!r}")
        return json.loads(body)

    def link_down(self, host: Host) -> None:
        """Unplug *host*: its bridge port goes down, or the hub stops forwarding to and from
        it (its own interface keeps its address)."""
        if self._hub is not None:
            self._hub.down(host.index)
        else:
            _ip("-n", self.bridge_netns, "link", "set", host.port, "down")

    def link_up(self, host: Host) -> None:
        """Plug *host* back in."""
        if self._hub is not None:
            self._hub.up(host.index)
        else:
            _ip("-n", self.bridge_netns, "link", "set", host.port, "up")

    # -- sites behind NATs

    def add_site(self, router: Host, subnet: str) -> Host:
        """A venue's private network behind its NAT: a new host (its own namespace, address
        ``.2`` of *subnet*) cabled to *router* (one of this Lan's hosts, ``.1`` on that
        side), which forwards the site's traffic to the Lan masqueraded (nftables, in the
        router's namespace) and lets in from outside only what answers the site's own
        connections: nothing from another site reaches it (see :meth:`open_sites`).
        :meth:`add_site_host` puts more hosts on the same private network."""
        net = ipaddress.IPv4Network(subnet)
        inside_address = str(net.network_address + 1)
        index = len(self.hosts) + len(self._sites)
        inside = f"site{index}"  # a bridge in the router's namespace: the site's LAN
        _ip("-n", router.netns, "link", "add", inside, "type", "bridge", "mcast_snooping", "0")
        _ip("-n", router.netns, "addr", "add", f"{inside_address}/{net.prefixlen}", "dev", inside)
        _ip("-n", router.netns, "link", "set", inside, "up")
        self.run(router, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        self._nft(
            router,
            f"""table ip stagemesh_nat {{
                chain postrouting {{
                    type nat hook postrouting priority srcnat; policy accept;
                    ip saddr {subnet} oifname "{router.interface}" masquerade
                }}
                chain forward {{
                    type filter hook forward priority filter; policy drop;
                    ct state established,related accept
                    iifname "{inside}" accept
                }}
            }}""",
        )
        return self._cable_site_host(router, subnet, inside, index, 2)

    def add_site_host(self, site: Host) -> Host:
        """Another host on the private network of *site* (a host :meth:`add_site` made), at
        the next address, behind the same NAT."""
        router, subnet = self._sites[site.index]
        first = next(i for i, (r, n) in self._sites.items() if (r, n) == (router, subnet))
        taken = sum(1 for r, n in self._sites.values() if (r, n) == (router, subnet))
        index = len(self.hosts) + len(self._sites)
        return self._cable_site_host(router, subnet, f"site{first}", index, 2 + taken)

    def _cable_site_host(
        self, router: Host, subnet: str, inside: str, index: int, offset: int
    ) -> Host:
        net = ipaddress.IPv4Network(subnet)
        site = Host(index, f"{self.run_id}-s{index}", str(net.network_address + offset))
        self._add_host(site)
        cable = f"sh{index}"
        _ip("-n", router.netns, "link", "add", cable, "type", "veth",
            "peer", "name", site.interface, "netns", site.netns)  # fmt: skip
        _ip("-n", router.netns, "link", "set", cable, "master", inside, "up")
        _ip("-n", site.netns, "addr", "add", f"{site.address}/{net.prefixlen}", "brd", "+",
            "dev", site.interface)  # fmt: skip
        _ip("-n", site.netns, "link", "set", site.interface, "up")
        _ip("-n", site.netns, "route", "add", "default", "via", str(net.network_address + 1))
        self._sites[site.index] = (router, subnet)
        return site

    def open_sites(self, a: Host, b: Host) -> None:
        """Let sites *a* and *b* (from :meth:`add_site`) reach each other directly, as a
        path opened between the venues: each router routes the other site's subnet through
        the other router, without masquerading, and forwards what comes from it."""
        (router_a, net_a), (router_b, net_b) = self._sites[a.index], self._sites[b.index]
        for router, other_router, other in (
            (router_a, router_b, net_b),
            (router_b, router_a, net_a),
        ):
            _ip("-n", router.netns, "route", "add", other, "via", other_router.address)
            self._nft(router, f"insert rule ip stagemesh_nat postrouting ip daddr {other} accept")
            self._nft(router, f"add rule ip stagemesh_nat forward ip saddr {other} accept")

    def _nft(self, host: Host, ruleset: str) -> None:
        done = subprocess.run(
            self.command(host, "nft", "-f", "-"),
            input=ruleset,
            capture_output=True,
            text=True,
            timeout=30,
        )
        if done.returncode != 0:
            raise NetnsError(
                f"nft in {host.netns}: {done.stderr.strip()} (apt-get install -y nftables)"
            )


@pytest.fixture
def lan() -> Iterator[Lan]:
    """Three hosts on a private bridge, removed after the test whatever happens."""
    with Lan(3) as made:
        yield made
