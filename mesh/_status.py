"""The node's HTTP status API and dashboard (hypercorn's trio worker serving Starlette).

- ``GET /api/status``: the node's view (:meth:`Node.status`), stable field names.
- ``GET /api/clock``: ``{"federation_time", "host_time"}`` read at one instant, so a test on
  one host can compare the clocks of several nodes.
- ``POST /api/request``: ``{"path", "kind", "payload", "timeout"}`` sends a request into the
  mesh through this node (how command-line tools such as ``stagemesh roles`` reach any member)
  and answers ``{"ok": true, "payload": ...}`` or ``{"ok": false, "error_type", "error"}``.
- ``GET /``: the HTML dashboard, which refreshes itself from ``/api/status``.
"""

from __future__ import annotations

import json
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

_MAX_BODY = 1024 * 1024


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"ok": False, "error_type": "BadRequest", "error": message}, status)


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

    async def forward(request: Request) -> Response:
        from mesh._node import NoSuchMember, RemoteError, RequestError

        body = await request.body()
        if len(body) > _MAX_BODY:
            return _error(413, f"request body over {_MAX_BODY} bytes")
        try:
            doc = json.loads(body)
        except ValueError as exc:
            return _error(400, f"body is not JSON: {exc}")
        if not isinstance(doc, dict):
            return _error(400, "body must be a JSON object")
        path, kind = doc.get("path"), doc.get("kind")
        timeout = doc.get("timeout", 10.0)
        if not isinstance(path, str) or not path.startswith("/"):
            return _error(400, "'path' must be a member path such as /room-a/station1")
        if not isinstance(kind, str) or not kind:
            return _error(400, "'kind' must be a non-empty string")
        if not isinstance(timeout, int | float) or not 0 < timeout <= 300:
            return _error(400, "'timeout' must be a number of seconds in (0, 300]")
        try:
            payload = await node.request(path, kind, doc.get("payload"), timeout=float(timeout))
        except NoSuchMember as exc:
            return JSONResponse({"ok": False, "error_type": "NoSuchMember", "error": str(exc)}, 404)
        except RemoteError as exc:
            return JSONResponse({"ok": False, "error_type": exc.error_type, "error": exc.message})
        except RequestError as exc:
            return JSONResponse(
                {"ok": False, "error_type": type(exc).__name__, "error": str(exc)}, 502
            )
        except ValueError as exc:
            return _error(400, f"payload is not plain data: {exc}")
        return JSONResponse({"ok": True, "payload": payload})

    async def dashboard(request: Request) -> Response:
        html = _templates.get_template("dashboard.html").render(status=node.status())
        return HTMLResponse(html)

    return Starlette(
        routes=[
            Route("/", dashboard),
            Route("/api/status", status),
            Route("/api/clock", clock),
            Route("/api/request", forward, methods=["POST"]),
        ]
    )


def _bind_error(exc: BaseException) -> OSError | None:
    """The ``OSError`` of hypercorn's failed bind, inside the groups its nurseries wrap it in."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, OSError) else None


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
        try:
            binds = await nursery.start(run)
        except BaseException as exc:
            cause = _bind_error(exc)
            if cause is None:
                raise
            where = f"status API port {bind[1]} on {bind[0]}"
            raise OSError(cause.errno, f"{where}: {cause.strerror}") from exc
        task_status.started(str(binds[0]))
        try:
            await trio.sleep_forever()
        finally:
            shutdown.set()
