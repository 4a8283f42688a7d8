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
a dead run are swept at the next start. Everything is removed on exit, also after a failure.

Process ids are the harness's own: :meth:`Lan.close` ends only the processes
:meth:`Lan.spawn` started (by pid), then deletes the namespaces.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import queue
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from types import TracebackType

import attrs
import pytest

__all__ = ["Host", "Lan", "NetnsError", "Spawned", "lan"]

PREFIX = "smt"
SUBNET = "10.77.0.0/24"


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
    """Delete namespaces of this harness whose creating process is gone; return their names."""
    removed = []
    for name in list_namespaces():
        parts = name.split("-")
        if len(parts) < 4 or parts[0] != PREFIX or not parts[1].isdigit():
            continue
        pid = int(parts[1])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            _ip("netns", "del", name, check=False)
            removed.append(name)
        except PermissionError:
            pass
    return removed


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
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()


class Lan:
    """``size`` hosts (namespaces) on one bridge; a context manager that always cleans up."""

    def __init__(self, size: int = 3, subnet: str = SUBNET) -> None:
        if os.geteuid() != 0:
            raise NetnsError("network-namespace tests need root (CI runs them as root)")
        network = ipaddress.IPv4Network(subnet)
        if not network.is_private or size + 2 > network.num_addresses:
            raise ValueError(f"{subnet} must be a private network with room for {size} hosts")
        self.prefix = network.prefixlen
        self.run_id = f"{PREFIX}-{os.getpid()}-{secrets.token_hex(3)}"
        self.bridge_netns = f"{self.run_id}-br"
        self.hosts = [
            Host(i, f"{self.run_id}-h{i}", str(network.network_address + i + 1))
            for i in range(size)
        ]
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

    def create(self) -> None:
        """Make the bridge and the hosts (called by ``__enter__``)."""
        sweep_stale()
        br = self.bridge_netns
        self._add_netns(br)
        _ip("-n", br, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
        _ip("-n", br, "link", "set", "br0", "up")
        for host in self.hosts:
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
            _ip(
                "-n", br, "link", "add", host.port, "type", "veth",
                "peer", "name", host.interface, "netns", host.netns,
            )  # fmt: skip
            _ip("-n", br, "link", "set", host.port, "master", "br0", "up")
            _ip("-n", host.netns, "addr", "add", f"{host.address}/{self.prefix}", "brd", "+",
                "dev", host.interface)  # fmt: skip
            _ip("-n", host.netns, "link", "set", host.interface, "up")
            _ip("-n", host.netns, "route", "add", "224.0.0.0/4", "dev", host.interface)

    def close(self) -> None:
        """End the processes :meth:`spawn` started, then delete every namespace made."""
        for proc in self._spawned:
            with contextlib.suppress(OSError):
                proc.kill()
        self._spawned.clear()
        for name in reversed(self._created):
            _ip("netns", "del", name, check=False)
        self._created.clear()

    # -- using it

    @property
    def namespaces(self) -> list[str]:
        """Every namespace this harness made (hosts and bridge)."""
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

    def spawn(self, host: Host, *argv: str, env: dict[str, str] | None = None) -> Spawned:
        """Start *argv* in *host* with stdout collected (see :class:`Spawned`); it is killed
        when the harness closes."""
        process = subprocess.Popen(
            self.command(host, *argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        spawned = Spawned(process, host)
        self._spawned.append(spawned)
        return spawned

    def keep_multicast_local(self) -> None:
        """Stop the bridge from flooding multicast between hosts (broadcast and unicast still
        pass): each host's multicast stays on that host, as on laptops at different sites.
        Ableton Link finds its peers by multicast, so each host then has its own Link session."""
        for host in self.hosts:
            _ip("-n", self.bridge_netns, "link", "set", "dev", host.port,
                "type", "bridge_slave", "mcast_flood", "off")  # fmt: skip

    def link_down(self, host: Host) -> None:
        """Unplug *host*: its bridge port goes down (its own interface keeps its address)."""
        _ip("-n", self.bridge_netns, "link", "set", host.port, "down")

    def link_up(self, host: Host) -> None:
        """Plug *host* back in."""
        _ip("-n", self.bridge_netns, "link", "set", host.port, "up")


@pytest.fixture
def lan() -> Iterator[Lan]:
    """Three hosts on a private bridge, removed after the test whatever happens."""
    with Lan(3) as made:
        yield made
