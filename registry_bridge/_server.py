"""Serve the registry app with hypercorn's trio worker."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import cast

import hypercorn.config
import hypercorn.trio
import trio
from hypercorn.typing import ASGIFramework
from starlette.applications import Starlette

__all__ = ["DEFAULT_BIND", "parse_bind", "serve_registry"]

DEFAULT_BIND = "127.0.0.1:7480"


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


async def serve_registry(
    app: Starlette | ASGIFramework,
    bind: str = DEFAULT_BIND,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve *app* on *bind* until *shutdown_trigger* returns (or until cancelled).

    ``await nursery.start(serve_registry, app, "127.0.0.1:0")`` returns the bound URL, e.g.
    ``http://127.0.0.1:45547``. Stop it through *shutdown_trigger* (for example an event's
    ``wait``) so hypercorn closes connections gracefully.
    """
    host, port = parse_bind(bind)
    config = hypercorn.config.Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 2.0
    config.include_server_header = False
    config.keep_alive_timeout = 30.0
    trigger = shutdown_trigger if shutdown_trigger is not None else trio.sleep_forever
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            functools.partial(
                hypercorn.trio.serve, cast(ASGIFramework, app), config, shutdown_trigger=trigger
            )
        )
        task_status.started(str(binds[0]))
