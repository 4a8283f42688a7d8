"""Serve the registry app with granian (Rust HTTP, the app on an asyncio loop).

The registry is its own process, so its HTTP server is chosen for the load it takes, not for
the nodes' event loop: granian parses HTTP and handles sockets in Rust threads that do not
wait for the Python interpreter, so an answer's tail latency stays low while Python is busy
(figures in docs/registry.md, from ``bench/registry_servers.py``). The app and its store run
on an asyncio loop (uvloop) in a thread of their own; :func:`serve_registry` keeps a trio
API around it, so a trio program (the CLI's supervisor, the tests) starts and stops it like
any trio service.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import socket
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import ifaddr
import trio
import uvloop
from granian.constants import Interfaces
from granian.server.embed import Server
from starlette.applications import Starlette

from mesh._interfaces import local_addresses

__all__ = [
    "BACKLOG",
    "DEFAULT_BIND",
    "parse_bind",
    "reachable_urls",
    "reserve_port",
    "serve_registry",
]

logger = logging.getLogger(__name__)

DEFAULT_BIND = "127.0.0.1:7480"
BACKLOG = 2048
"""Listen backlog: 1000 nodes (re)connecting at once must not overflow the accept queue (an
overflow costs a dropped SYN and a 1 s retransmission; granian's default is 1024)."""

READY_TIMEOUT = 30.0
"""Seconds the server may take to start listening before :func:`serve_registry` gives up."""


def parse_bind(bind: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6]:PORT`` for IPv6) and check the port; :class:`ValueError`
    if malformed."""
    host, sep, port = bind.rpartition(":")
    if not sep or not host:
        raise ValueError(f"bind address must be HOST:PORT, not {bind!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"bind port must be 0-65535, not {port!r}")
    return host, int(port)


def reachable_urls(host: str, port: int) -> list[str]:
    """The URLs a registry bound to *host* and *port* is reached at: the bound address
    itself, or for a wildcard (``0.0.0.0``, ``::``) one URL per address of this host (IPv4,
    and IPv6 too for ``::``; no link-local IPv6, which needs an interface), loopback first.
    """
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:  # a host name
        return [_url(host, port)]
    if not ip.is_unspecified:
        return [_url(host, port)]
    found = [a.address for a in local_addresses()]
    if ip.version == 6:
        for adapter in ifaddr.get_adapters():
            for entry in adapter.ips:
                if isinstance(entry.ip, tuple):
                    v6 = ipaddress.IPv6Address(entry.ip[0].split("%")[0])
                    if not v6.is_link_local:
                        found.append(str(v6))
    unique = list(dict.fromkeys(found))
    unique.sort(key=lambda a: not ipaddress.ip_address(a).is_loopback)
    return [_url(a, port) for a in unique] or [_url(host, port)]


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def reserve_port(bind: str) -> socket.socket:
    """Hold *bind*'s TCP port for the registry's listening sockets: a socket bound (not
    listening) with ``SO_REUSEPORT``, inheritable, so this process and its ``--workers`` each
    open a listener on the same port (granian binds with ``SO_REUSEPORT``; the kernel hands
    each connection to one listener). Port 0 picks a free port, read back with
    ``getsockname``. :class:`OSError` (``EADDRINUSE``) if another program holds the port."""
    host, port = parse_bind(bind)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if port:
        # a plain bind first: SO_REUSEPORT alone would join another registry of this user
        # on the same port instead of refusing it
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # SO_REUSEADDR: connections of an earlier registry in TIME_WAIT do not count,
            # a socket listening on the port does
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.set_inheritable(True)
    except BaseException:
        sock.close()
        raise
    return sock


class _Granian:
    """One embedded granian server on its own thread and asyncio loop."""

    def __init__(self, app: Any, host: str, port: int) -> None:
        self.server = Server(
            app,
            address=host,
            port=port,
            interface=Interfaces.ASGINL,  # the app has no lifespan events
            backlog=BACKLOG,
            log_enabled=False,
        )
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._lock = threading.Lock()
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="registry-http", daemon=True)

    def _run(self) -> None:
        try:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                with self._lock:
                    self.loop = runner.get_loop()
                    if self._stopping:  # stopped before it started: serve() returns at once
                        self.server.stop()  # type: ignore[no-untyped-call]
                runner.run(self.server.serve())
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()

    def stop(self) -> None:
        """Ask the server to stop (from any thread); :meth:`wait` for it."""
        with self._lock:
            self._stopping = True
            loop = self.loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self.server.stop)

    async def wait(self) -> None:
        await trio.to_thread.run_sync(self.done.wait)


async def _wait_listening(served: _Granian, host: str, port: int) -> None:
    """Return once *port* accepts connections; raise the server's error if it stopped."""
    probe = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    with trio.fail_after(READY_TIMEOUT):
        while True:
            if served.done.is_set():
                raise served.error or OSError(errno.EADDRINUSE, "the HTTP server stopped")
            try:
                stream = await trio.open_tcp_stream(probe, port)
            except OSError:
                await trio.sleep(0.01)
                continue
            await stream.aclose()
            return


async def serve_registry(
    app: Starlette | Any,
    bind: str = DEFAULT_BIND,
    *,
    sock: socket.socket | None = None,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve *app* on *bind* until *shutdown_trigger* returns (or until cancelled).

    ``await nursery.start(serve_registry, app, "127.0.0.1:0")`` returns the bound URL, e.g.
    ``http://127.0.0.1:45547``, once the port accepts connections. With *sock* (a port held
    by :func:`reserve_port`) it serves that port instead of *bind*'s: several processes can
    serve one port, the kernel hands each connection to one of them. Stopping (trigger or
    cancellation) closes the listener and waits for the server's thread to end.
    """
    own = reserve_port(bind) if sock is None else None
    held = sock if sock is not None else own
    assert held is not None
    host, port = held.getsockname()[:2]
    served = _Granian(app, host, port)
    trigger = shutdown_trigger if shutdown_trigger is not None else trio.sleep_forever
    try:
        served.thread.start()
        try:
            await _wait_listening(served, host, port)
            task_status.started(_url(host, port))
            await trigger()
        finally:
            with trio.CancelScope(shield=True):
                served.stop()
                await served.wait()
        if served.error is not None:
            raise served.error
    finally:
        if own is not None:
            own.close()
