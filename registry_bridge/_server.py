"""Serve the registry app with hypercorn's trio worker."""

from __future__ import annotations

import functools
import ipaddress
import os
import socket
from collections.abc import Awaitable, Callable
from typing import cast

import hypercorn.config
import hypercorn.trio
import ifaddr
import trio
from hypercorn.typing import ASGIFramework
from starlette.applications import Starlette

from mesh._interfaces import local_addresses

__all__ = [
    "BACKLOG",
    "DEFAULT_BIND",
    "listen_socket",
    "parse_bind",
    "reachable_urls",
    "serve_registry",
]

DEFAULT_BIND = "127.0.0.1:7480"
BACKLOG = 2048
"""Listen backlog: 1000 nodes (re)connecting at once must not overflow the accept queue (an
overflow costs a dropped SYN and a 1 s retransmission; hypercorn's default is 100)."""

ACCEPTORS = 8
"""Accept loops per listening socket. trio's accept loop takes one connection per pass of the
scheduler; when the registry is busy a pass can take tens of milliseconds, so 1000 nodes
connecting at once would wait seconds in the accept queue. hypercorn runs one accept loop per
bound socket, so the socket is handed to it this many times (duplicated descriptors)."""


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


def listen_socket(bind: str) -> socket.socket:
    """A listening TCP socket on *bind* (``HOST:PORT``), inheritable, for worker processes that
    share it (``stagemesh registry --workers N``); :class:`OSError` if it cannot be bound."""
    host, port = parse_bind(bind)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
        sock.set_inheritable(True)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve_registry(
    app: Starlette | ASGIFramework,
    bind: str = DEFAULT_BIND,
    *,
    sock: socket.socket | None = None,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve *app* on *bind* until *shutdown_trigger* returns (or until cancelled).

    ``await nursery.start(serve_registry, app, "127.0.0.1:0")`` returns the bound URL, e.g.
    ``http://127.0.0.1:45547``. Stop it through *shutdown_trigger* (for example an event's
    ``wait``) so hypercorn closes connections gracefully. With *sock* (a listening socket, see
    :func:`listen_socket`) it serves that socket instead of binding *bind*; several processes
    can serve one socket, the kernel hands each connection to one of them.
    """
    own = listen_socket(bind) if sock is None else None
    listening = sock if sock is not None else own
    assert listening is not None
    config = hypercorn.config.Config()
    # hypercorn takes ownership of the descriptors it is given: give it duplicates, ACCEPTORS
    # of them, so it runs that many accept loops on the one socket (see ACCEPTORS).
    config.bind = [f"fd://{os.dup(listening.fileno())}" for _ in range(ACCEPTORS)]
    config.backlog = BACKLOG
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 2.0
    config.include_server_header = False
    config.keep_alive_timeout = 30.0
    trigger = shutdown_trigger if shutdown_trigger is not None else trio.sleep_forever
    try:
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(
                functools.partial(
                    hypercorn.trio.serve, cast(ASGIFramework, app), config, shutdown_trigger=trigger
                )
            )
            task_status.started(str(binds[0]))
    finally:
        if own is not None:
            own.close()
