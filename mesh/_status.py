"""The node's HTTP status API and dashboard (hypercorn's trio worker serving Starlette).

- ``GET /api/status``: the node's view (:meth:`Node.status`), stable field names.
- ``GET /api/clock``: ``{"federation_time", "host_time"}`` read at one instant, so a test on
  one host can compare the clocks of several nodes.
- ``GET /``: the HTML dashboard, which refreshes itself from ``/api/status``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import hypercorn.config
import hypercorn.trio
import jinja2
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from mesh._wire import Address

if TYPE_CHECKING:
    from mesh._node import Node

__all__ = ["create_status_app", "serve_status"]

_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("mesh", "templates"),
    autoescape=jinja2.select_autoescape(default=True),
)


def create_status_app(node: Node) -> Starlette:
    """The status ASGI app of *node*."""

    async def status(request: Request) -> Response:
        return JSONResponse(node.status())

    async def clock(request: Request) -> Response:
        return JSONResponse({"federation_time": node.now(), "host_time": time.time()})

    async def dashboard(request: Request) -> Response:
        html = _templates.get_template("dashboard.html").render(status=node.status())
        return HTMLResponse(html)

    return Starlette(
        routes=[
            Route("/", dashboard),
            Route("/api/status", status),
            Route("/api/clock", clock),
        ]
    )


async def serve_status(
    node: Node, bind: Address, *, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve the status app of *node* on *bind* until cancelled; ``nursery.start`` returns
    the URL (so port 0 works)."""
    config = hypercorn.config.Config()
    config.bind = [f"{bind[0]}:{bind[1]}"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 0.5
    shutdown = trio.Event()

    async def run(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        await hypercorn.trio.serve(
            create_status_app(node),  # type: ignore[arg-type]
            config,
            shutdown_trigger=shutdown.wait,
            task_status=task_status,
        )

    async with trio.open_nursery() as nursery:
        binds = await nursery.start(run)
        task_status.started(str(binds[0]))
        try:
            await trio.sleep_forever()
        finally:
            shutdown.set()
