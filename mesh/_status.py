"""The node's HTTP status API and dashboard (hypercorn's trio worker serving Starlette).

Reading is open (to whoever can reach the address, 127.0.0.1 by default):

- ``GET /api/status``: the node's view (:meth:`Node.status`), stable field names, plus
  ``security`` (``"open"`` without a federation key, ``"keyed"`` with one) and ``local_api``
  (the state-changing calls this API refused, by reason).
- ``GET /api/clock``: ``{"federation_time", "host_time", "host_window"}``, so a test on one
  host can compare the clocks of several nodes: the host's wall clock is read just before and
  just after federation time, ``host_time`` is the middle of the two and ``host_window`` the
  time between them (federation time was read within ``host_window / 2`` of ``host_time``; a
  busy machine that preempts the node in between widens it).
- ``GET /``: the HTML dashboard: the federation drawn (``mesh._picture``), every member's
  clock offset and error bound, the stations' role processes and the conductor's last push
  to each (``mesh._dashboard``, which asks the members with a read-only request this server
  answers too), with a banner when the federation is open.
- ``GET /live``: the live part of the dashboard, which the page fetches every second.

Changing state is for this machine's operator only. ``POST /api/request``, ``{"path", "kind",
"payload", "timeout"}``, sends a request into the mesh through this node (how command-line
tools such as ``stagemesh roles`` reach any member; a request to this node's own path whose
kind an extension lists in :meth:`~mesh.Extension.local_handlers` is answered by that local
handler, with the authority of the machine's operator) and answers ``{"ok": true, "payload":
...}`` or ``{"ok": false, "error_type", "error_family", "error"}``. It is refused unless:

* the ``Host`` header is a loopback name (``localhost``, ``127.x.x.x``, ``::1``) and the client
  is on loopback (no other machine, no DNS rebinding);
* there is no ``Origin`` other than this API's own (no web page the operator visits);
* ``Content-Type`` is ``application/json`` (a cross-site "simple" request cannot send it);
* ``Authorization: Bearer <secret>`` carries the node's secret: a random token the node
  writes at start to ``<runtime>/api-secret-<node id>`` (mode 0600, in a 0700 folder, removed
  at exit), which only its user can read. ``stagemesh roles`` reads it by itself
  (:func:`read_api_secret`).

Bodies are limited to 1 MiB *while they are read*: a larger ``Content-Length`` is refused at
once and a longer stream is cut off, so a huge body never sits in memory.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hypercorn.config
import hypercorn.trio
import jinja2
import trio
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from mesh._dashboard import (
    FederationSummaries,
    dashboard_view,
    install_summary_handler,
    wall_clock,
)
from mesh._state import default_runtime_dir
from mesh._wire import Address, Value

if TYPE_CHECKING:
    from mesh._node import Node

__all__ = [
    "MAX_BODY",
    "api_secret_path",
    "create_status_app",
    "read_api_secret",
    "serve_status",
    "status_document",
]

#: The largest request body the API reads (bytes).
MAX_BODY = 1024 * 1024
_LOOPBACK_NAMES = ("localhost", "localhost.")

LocalHandler = Callable[[Value], Awaitable[Value]]


def _error(status: int, message: str, error_type: str = "BadRequest") -> JSONResponse:
    return JSONResponse({"ok": False, "error_type": error_type, "error": message}, status)


_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("mesh", "templates"),
    autoescape=jinja2.select_autoescape(default=True),
)
_templates.filters["clock"] = wall_clock


def api_secret_path(runtime_dir: Path, node_id: str) -> Path:
    """Where the node *node_id* keeps the secret of its local API."""
    return runtime_dir / f"api-secret-{node_id}"


def read_api_secret(runtime_dir: Path, node_id: str) -> str | None:
    """The local API secret of node *node_id* on this machine, or ``None`` if this user
    cannot read it (another user's node, or no such node)."""
    try:
        return api_secret_path(runtime_dir, node_id).read_text().strip() or None
    except OSError:
        return None


@contextmanager
def _secret_file(runtime_dir: Path, node_id: str) -> Iterator[str]:
    """Create a fresh secret readable only by this user, for the life of the context."""
    runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = api_secret_path(runtime_dir, node_id)
    secret = secrets.token_urlsafe(32)
    with suppress(FileNotFoundError):
        path.unlink()  # left by a killed run of this node
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    try:
        yield secret
    finally:
        with suppress(OSError):
            path.unlink()


def status_document(node: Node) -> dict[str, Any]:
    """What ``GET /api/status`` serves: :meth:`Node.status` plus ``security``."""
    doc = node.status()
    doc["security"] = "keyed" if node.config.keyring is not None else "open"
    return doc


def _host_name(host_header: str) -> str:
    """The host part of a ``Host`` header (``[::1]:8080`` -> ``::1``)."""
    if host_header.startswith("["):
        return host_header[1:].partition("]")[0]
    if host_header.count(":") == 1:
        return host_header.partition(":")[0]
    return host_header


def _is_loopback(name: str) -> bool:
    if name.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class _Guard:
    """The checks every state-changing call passes (see the module docstring), counted by
    reason when they refuse."""

    def __init__(self, secret: str, secret_path: Path) -> None:
        self.secret = secret
        self.secret_path = secret_path
        self.refused: dict[str, int] = {}

    def _refuse(self, reason: str, status: int, message: str) -> JSONResponse:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        return _error(status, message, "Forbidden" if status in (401, 403) else "BadRequest")

    def check(self, request: Request) -> Response | None:
        """``None`` if *request* may change state, else the refusal to send."""
        host = request.headers.get("host", "")
        if not _is_loopback(_host_name(host)):
            return self._refuse(
                "host",
                403,
                f"Host {host!r} is not a loopback name: this API changes state only for "
                "requests made to localhost or 127.0.0.1 on this machine",
            )
        client = request.client.host if request.client is not None else ""
        if not _is_loopback(client):
            return self._refuse(
                "client", 403, f"{client or 'an unknown client'} is not on this machine"
            )
        origin = request.headers.get("origin")
        if origin is not None and origin != f"http://{host}":
            return self._refuse(
                "origin",
                403,
                f"Origin {origin!r} is not this API: web pages cannot change this node",
            )
        if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return self._refuse("origin", 403, "a cross-site request cannot change this node")
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), self.secret.encode()
        ):
            return self._refuse(
                "secret",
                401,
                "this call needs the node's secret: 'Authorization: Bearer <the contents of "
                f"{self.secret_path}>' (stagemesh roles reads it by itself)",
            )
        media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media != "application/json":
            return self._refuse(
                "content-type", 415, "the body must be JSON with Content-Type: application/json"
            )
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            return self._refuse("size", 413, f"request body over {MAX_BODY} bytes")
        return None

    async def body(self, request: Request) -> bytes | Response:
        """Read the body, stopping as soon as it passes :data:`MAX_BODY`."""
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_BODY:
                    return self._refuse("size", 413, f"request body over {MAX_BODY} bytes")
                chunks.append(chunk)
        except ClientDisconnect:
            return self._refuse("size", 400, "the client went away while sending the body")
        return b"".join(chunks)


def _local_handlers(node: Node) -> dict[str, LocalHandler]:
    table: dict[str, LocalHandler] = {}
    for ext in node.config.extensions:
        for kind, handler in ext.local_handlers().items():
            table.setdefault(kind, handler)
    return table


def _family(node: Node, error_type: str, exc: BaseException | None = None) -> str | None:
    family = getattr(exc, "family", None)
    if isinstance(family, str):
        return family
    for ext in node.config.extensions:
        found = ext.error_family(error_type)
        if found is not None:
            return found
    return None


def create_status_app(node: Node, secret: str, secret_path: Path | None = None) -> Starlette:
    """The status ASGI app of *node*; state-changing calls need *secret* (kept at
    *secret_path*, named in refusals)."""
    guard = _Guard(secret, secret_path or Path("the node's api-secret file"))

    async def status(request: Request) -> Response:
        doc = status_document(node)
        doc["local_api"] = {"refused": dict(guard.refused)}
        return JSONResponse(doc)

    async def clock(request: Request) -> Response:
        before = time.time()
        federation_time = node.now()
        after = time.time()
        return JSONResponse(
            {
                "federation_time": federation_time,
                "host_time": (before + after) / 2,
                "host_window": after - before,
            }
        )

    def failure(error_type: str, message: str, exc: BaseException | None = None) -> JSONResponse:
        return JSONResponse(
            {
                "ok": False,
                "error_type": error_type,
                "error_family": _family(node, error_type, exc),
                "error": message,
            }
        )

    async def forward(request: Request) -> Response:
        from mesh._node import NoSuchMember, RemoteError, RequestError
        from mesh._wire import check_value

        refused = guard.check(request)
        if refused is not None:
            return refused
        body = await guard.body(request)
        if isinstance(body, Response):
            return body
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError) as exc:
            return _error(400, f"body is not JSON: {exc}")
        if not isinstance(doc, dict):
            return _error(400, "body must be a JSON object")
        path, kind = doc.get("path"), doc.get("kind")
        timeout = doc.get("timeout", 10.0)
        if not isinstance(path, str) or not path.startswith("/"):
            return _error(400, "'path' must be a member path such as /room-a/station1")
        if not isinstance(kind, str) or not kind:
            return _error(400, "'kind' must be a non-empty string")
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not 0 < timeout <= 300
        ):
            return _error(400, "'timeout' must be a number of seconds in (0, 300]")
        local = _local_handlers(node).get(kind) if path == node.path else None
        if local is not None:
            try:
                payload = await local(check_value(doc.get("payload"), "payload"))
            except Exception as exc:  # the same answer a remote handler's failure gives
                return failure(getattr(exc, "wire_name", type(exc).__name__), str(exc), exc)
            return JSONResponse({"ok": True, "payload": payload})
        try:
            payload = await node.request(path, kind, doc.get("payload"), timeout=float(timeout))
        except NoSuchMember as exc:
            return JSONResponse({"ok": False, "error_type": "NoSuchMember", "error": str(exc)}, 404)
        except RemoteError as exc:
            return failure(exc.error_type, exc.message)
        except RequestError as exc:
            response = failure(type(exc).__name__, str(exc))
            response.status_code = 502
            return response
        except ValueError as exc:
            return _error(400, f"payload is not plain data: {exc}")
        return JSONResponse({"ok": True, "payload": payload})

    summaries = FederationSummaries(node)

    async def dashboard(request: Request) -> Response:
        view = dashboard_view(status_document(node), await summaries.get())
        return HTMLResponse(_templates.get_template("dashboard.html").render(v=view))

    async def live(request: Request) -> Response:
        view = dashboard_view(status_document(node), await summaries.get())
        return HTMLResponse(_templates.get_template("dashboard_live.html").render(v=view))

    return Starlette(
        routes=[
            Route("/", dashboard),
            Route("/live", live),
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
    the URL (so port 0 works). The local API secret lives for as long as this runs."""
    install_summary_handler(node)
    config = hypercorn.config.Config()
    config.bind = [f"{bind[0]}:{bind[1]}"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 0.5
    shutdown = trio.Event()
    runtime_dir = node.config.runtime_dir or default_runtime_dir()

    with _secret_file(runtime_dir, node.id) as secret:
        app = create_status_app(node, secret, api_secret_path(runtime_dir, node.id))

        async def run(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            await hypercorn.trio.serve(
                app,  # type: ignore[arg-type]
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
