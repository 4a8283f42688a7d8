"""The registry's Starlette app: JSON API, legacy text API and HTML pages.

``create_app(store, admin_password)`` returns an ASGI app. Store calls run on the store's
worker thread (:class:`AsyncStore`); every write is committed before the answer is sent.

Errors are answered in the caller's language: JSON ``{"error": "..."}`` under ``/api/v1``,
``Error: ...`` text on the legacy URLs, an HTML page elsewhere. Bodies are limited to
``max_body`` bytes (413). Admin actions (delete, reset) need HTTP Basic with the admin password;
the HTML forms also carry a CSRF token (an HMAC of the action and federation under a secret made
per process); the JSON reset needs ``Content-Type: application/json`` so browsers cannot send it
cross-site without a preflight.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import functools
import hashlib
import hmac
import ipaddress
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qs, parse_qsl

import jinja2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from registry_bridge._openapi import openapi_document
from registry_bridge._picture import mesh_picture
from registry_bridge._store import AsyncStore, RegistryStore, StoreError

__all__ = ["DEFAULT_MAX_BODY", "LEGACY_PATHS", "create_app"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_BODY = 64 * 1024
LEGACY_PATHS = frozenset({"/federation", "/orchestra", "/register", "/unregister"})
DEFAULT_NODE_PORT = 7471
ADMIN_HINTS = (
    "stagemesh registry --admin-password-file /path/to/password-file",
    "STAGEMESH_ADMIN_PASSWORD=... stagemesh registry",
)
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
_HOST_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?\Z")
_YES = {"yes": True, "no": False, "true": True, "false": False, "1": True, "0": False}

Handler = Callable[[Request], Awaitable[Response]]


class HttpError(Exception):
    """Raised inside a handler to answer with *status* and *message* (never escapes the app)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


def _json(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_dumps(obj), status_code=status, media_type="application/json", headers=headers)


def _decode_json(raw: bytes) -> Any:
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise HttpError(400, "the body is not valid JSON") from None


def _param(query: Mapping[str, str], key: str) -> str:
    value = query.get(key)
    if value is None or value == "":
        raise HttpError(400, f"missing parameter {key}")
    return value


def _yes(query: Mapping[str, str], key: str) -> bool:
    value = query.get(key)
    if value is None or value == "":
        return False
    try:
        return _YES[value.lower()]
    except KeyError:
        raise HttpError(400, f"{key} must be yes or no, not {value!r}") from None


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    try:
        return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return "-"


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise HttpError(413, f"body larger than {limit} bytes")
        except ValueError:
            raise HttpError(400, "bad Content-Length") from None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HttpError(413, f"body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _check_host(value: object) -> str:
    if not isinstance(value, str):
        raise HttpError(400, "host must be a string")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if _HOST_RE.match(value) is None:
        raise HttpError(400, f"host {value!r} is neither an IP address nor a host name")
    return value


def _check_port(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise HttpError(400, f"port must be an integer 1-65535, not {value!r}")
    return value


def _check_token(value: str) -> str:
    if _TOKEN_RE.match(value) is None:
        raise HttpError(404, "unknown or expired registration token")
    return value


class _Fields:
    """Typed access to a JSON object body, rejecting unknown fields and wrong types."""

    def __init__(self, body: object, allowed: set[str]) -> None:
        if not isinstance(body, dict):
            raise HttpError(400, "the body must be a JSON object")
        unknown = sorted(str(k) for k in body if k not in allowed)
        if unknown:
            raise HttpError(400, f"unknown field(s): {', '.join(unknown)}")
        self.body: dict[str, Any] = body

    def has(self, key: str) -> bool:
        return key in self.body

    def string(self, key: str, *, required: bool = False) -> str | None:
        value = self.body.get(key)
        if value is None:
            if required:
                raise HttpError(400, f"missing field {key!r}")
            return None
        if not isinstance(value, str):
            raise HttpError(400, f"{key} must be a string")
        return value

    def flag(self, key: str) -> bool:
        value = self.body.get(key, False)
        if not isinstance(value, bool):
            raise HttpError(400, f"{key} must be true or false")
        return value

    def integer(self, key: str, *, required: bool = False) -> int | None:
        value = self.body.get(key)
        if value is None:
            if required:
                raise HttpError(400, f"missing field {key!r}")
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise HttpError(400, f"{key} must be an integer")
        if not -(2**62) <= value <= 2**62:
            raise HttpError(400, f"{key} is out of range")
        return value


@functools.cache
def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("registry_bridge", "templates"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
    )
    env.filters["when"] = _when
    return env


class _Registry:
    """The handlers, sharing the store, the templates and the admin secret."""

    def __init__(
        self,
        store: RegistryStore,
        admin_password: str | None,
        max_body: int,
        secret: bytes | None,
    ) -> None:
        self.raw = store
        self.store = AsyncStore(store)
        self.admin_password = admin_password or None
        self.max_body = max_body
        self.secret = secret or secrets.token_bytes(32)
        self.templates = _templates()

    # ------------------------------------------------------------ helpers

    async def json_body(self, request: Request) -> Any:
        return _decode_json(await _read_body(request, self.max_body))

    def html(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        text = self.templates.get_template(template).render(**context)
        return HTMLResponse(text, status_code=status)

    def csrf_token(self, action: str, federation: str) -> str:
        msg = f"{action}\0{federation}".encode()
        return hmac.new(self.secret, msg, hashlib.sha256).hexdigest()

    def check_admin(self, request: Request) -> None:
        """Raise :class:`HttpError` 403 (no password configured) or 401 (missing or wrong)."""
        if self.admin_password is None:
            raise HttpError(
                403,
                "admin actions are disabled: no admin password is configured. Start the "
                "registry with --admin-password-file PATH or set STAGEMESH_ADMIN_PASSWORD.",
            )
        challenge = {"WWW-Authenticate": 'Basic realm="stagemesh registry admin", charset="UTF-8"'}
        header = request.headers.get("authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic" or not encoded:
            raise HttpError(401, "admin login required", challenge)
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise HttpError(401, "malformed Basic credentials", challenge) from None
        _, _, password = decoded.partition(":")
        if not hmac.compare_digest(password.encode(), self.admin_password.encode()):
            logger.warning("wrong admin password from %s", self.client_host(request))
            raise HttpError(401, "wrong admin password", challenge)
        logger.info(
            "admin %s %s from %s", request.method, request.url.path, self.client_host(request)
        )

    def client_host(self, request: Request) -> str:
        client = request.client
        return client.host if client is not None and client.host else "0.0.0.0"

    # ------------------------------------------------------------ the hot calls
    # Shared by the Starlette routes and the raw-ASGI fast path (_HotPaths): same checks,
    # same store call, same answer.

    async def do_register(self, federation: str, body: object, client_host: str) -> bytes:
        """JSON register: validate *body*, register, return the JSON answer (status 201)."""
        allowed = {"orchestra", "name", "host", "port", "node_id", "supernode", "conductor"}
        fields = _Fields(body, allowed | {"create", "takeover"})
        host = fields.string("host")
        port = fields.integer("port")
        node_id = fields.string("node_id")
        if node_id is not None and not 1 <= len(node_id) <= 128:
            raise HttpError(400, "node_id must be 1-128 characters")
        answer = await self.store.call(
            self.raw.register,
            federation,
            fields.string("orchestra", required=True),
            fields.string("name", required=True),
            host=client_host if host is None else _check_host(host),
            port=DEFAULT_NODE_PORT if port is None else _check_port(port),
            supernode=fields.flag("supernode"),
            conductor=fields.flag("conductor"),
            node_id=node_id,
            heartbeat=True,
            create=fields.flag("create"),
            takeover=fields.flag("takeover"),
        )
        return _dumps(answer)

    async def do_heartbeat(self, token: str) -> bytes:
        """JSON heartbeat: return the JSON answer (status 200)."""
        return _dumps(await self.store.call(self.raw.heartbeat, _check_token(token)))

    async def do_legacy_register(self, query: Mapping[str, str], client_host: str) -> str:
        """Legacy ``register``: return the text answer (status 200)."""
        fed = _param(query, "federation")
        orch = _param(query, "orchestra")
        name = _param(query, "name")
        supernode = _yes(query, "supernode")
        conductor = _yes(query, "conductor")
        raw_port = query.get("port")
        port = DEFAULT_NODE_PORT
        if raw_port:
            if not raw_port.isdigit() or not 1 <= int(raw_port) <= 65535:
                raise HttpError(400, f"port must be an integer 1-65535, not {raw_port!r}")
            port = int(raw_port)
        a = await self.store.call(
            self.raw.register,
            fed,
            orch,
            name,
            host=client_host,
            port=port,
            supernode=supernode,
            conductor=conductor,
            heartbeat=False,
            conductor_required=True,
        )
        role = "supernode" if a["supernode_granted"] else "node"
        if a["conductor_granted"]:
            role += " and conductor"

        def line(e: dict[str, Any]) -> str:
            return f"{e['federation']} {e['orchestra']} {e['path']} {e['host']} {e['port']}"

        lines = [
            f"Registered {a['path']} as {role} in federation {a['federation']}",
            f"Elapsed: {a['elapsed']:.6f}",
        ]
        if a["supernode_granted"]:
            lines.append("Other supernodes:")
            lines.extend(line(e) for e in a["other_supernodes"])
        elif a["supernode"] is not None:
            lines.append("Your supernode:")
            lines.append(line(a["supernode"]))
        if a["conductor"] is not None:
            lines.append("Conductor:")
            lines.append(line(a["conductor"]))
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------ JSON API

    async def openapi(self, request: Request) -> Response:
        return _json(openapi_document())

    async def list_federations(self, request: Request) -> Response:
        feds = await self.store.call(self.raw.list_federations)
        return _json({"federations": feds})

    async def create_federation(self, request: Request) -> Response:
        fields = _Fields(await self.json_body(request), {"name"})
        name = fields.string("name", required=True)
        return _json(await self.store.call(self.raw.create_federation, name), 201)

    async def show_federation(self, request: Request) -> Response:
        view = await self.store.call(self.raw.federation, request.path_params["federation"])
        return _json(view)

    async def delete_federation(self, request: Request) -> Response:
        self.check_admin(request)
        name = request.path_params["federation"]
        await self.store.call(self.raw.delete_federation, name)
        return _json({"deleted": name})

    async def reset_federation(self, request: Request) -> Response:
        self.check_admin(request)
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise HttpError(415, "reset needs Content-Type: application/json")
        _Fields(await self.json_body(request), set())
        name = request.path_params["federation"]
        return _json(await self.store.call(self.raw.reset_federation, name))

    async def list_orchestras(self, request: Request) -> Response:
        fed = request.path_params["federation"]
        return _json({"orchestras": await self.store.call(self.raw.list_orchestras, fed)})

    async def create_orchestra(self, request: Request) -> Response:
        fields = _Fields(await self.json_body(request), {"name"})
        name = fields.string("name", required=True)
        fed = request.path_params["federation"]
        return _json(await self.store.call(self.raw.create_orchestra, fed, name), 201)

    async def register(self, request: Request) -> Response:
        body = await self.do_register(
            request.path_params["federation"],
            await self.json_body(request),
            self.client_host(request),
        )
        return Response(body, status_code=201, media_type="application/json")

    async def heartbeat(self, request: Request) -> Response:
        body = await self.do_heartbeat(request.path_params["token"])
        return Response(body, media_type="application/json")

    async def unregister(self, request: Request) -> Response:
        token = _check_token(request.path_params["token"])
        await self.store.call(self.raw.unregister, token)
        return _json({"unregistered": True})

    async def get_conductor(self, request: Request) -> Response:
        fed = request.path_params["federation"]
        return _json(await self.store.call(self.raw.conductor, fed))

    async def set_conductor(self, request: Request) -> Response:
        fields = _Fields(
            await self.json_body(request), {"expected_term", "holder", "node_id", "host", "port"}
        )
        expected = fields.integer("expected_term", required=True)
        assert expected is not None
        if not fields.has("holder"):
            raise HttpError(400, "missing field 'holder' (a path, or null to release)")
        host = fields.string("host")
        port = fields.integer("port")
        answer = await self.store.call(
            self.raw.set_conductor,
            request.path_params["federation"],
            expected_term=expected,
            holder=fields.string("holder"),
            node_id=fields.string("node_id"),
            host=None if host is None else _check_host(host),
            port=None if port is None else _check_port(port),
        )
        return _json(answer)

    async def elapsed(self, request: Request) -> Response:
        received = self.raw.now()
        fed = request.path_params["federation"]
        epoch = await self.store.call(self.raw.epoch, fed)
        base = received if epoch is None else epoch
        t2 = max(0.0, received - base) if epoch is not None else 0.0
        t3 = max(0.0, self.raw.now() - base) if epoch is not None else 0.0
        return _json({"federation": fed, "epoch": epoch, "elapsed": t3, "t2": t2, "t3": t3})

    # ------------------------------------------------------------ legacy text API

    async def legacy_federation(self, request: Request) -> Response:
        query = request.query_params
        fed = _param(query, "federation")
        fid = await self.store.call(self.raw.federation_id, fed, create=_yes(query, "create"))
        return PlainTextResponse(f"{fid}\n")

    async def legacy_orchestra(self, request: Request) -> Response:
        query = request.query_params
        fed = _param(query, "federation")
        orch = _param(query, "orchestra")
        create = _yes(query, "create")
        oid = await self.store.call(self.raw.orchestra_id, fed, orch, create=create)
        return PlainTextResponse(f"{oid}\n")

    async def legacy_register(self, request: Request) -> Response:
        text = await self.do_legacy_register(request.query_params, self.client_host(request))
        return PlainTextResponse(text)

    async def legacy_unregister(self, request: Request) -> Response:
        query = request.query_params
        fed = _param(query, "federation")
        orch = _param(query, "orchestra")
        name = _param(query, "name")
        await self.store.call(self.raw.unregister_path, fed, orch, name)
        return PlainTextResponse("OK\n")

    # ------------------------------------------------------------ HTML pages

    async def index(self, request: Request) -> Response:
        feds = await self.store.call(self.raw.list_federations)
        return self.html("index.html", federations=feds)

    async def federation_page(self, request: Request) -> Response:
        view = await self.store.call(self.raw.federation, request.path_params["federation"])
        name = view["name"]
        return self.html(
            "federation.html",
            f=view,
            pic=mesh_picture(view),
            now=self.raw.now(),
            csrf_delete=self.csrf_token("delete", name),
            csrf_reset=self.csrf_token("reset", name),
        )

    async def admin_action(self, request: Request) -> Response:
        action = request.path_params["action"]
        if action not in ("delete", "reset"):
            raise HttpError(404, f"no page {request.url.path}")
        self.check_admin(request)
        name = request.path_params["federation"]
        form = parse_qs((await _read_body(request, self.max_body)).decode("latin-1"))
        sent = form.get("csrf", [""])[0]
        if not hmac.compare_digest(
            sent.encode("utf-8", "replace"), self.csrf_token(action, name).encode()
        ):
            raise HttpError(403, "missing or wrong CSRF token: use the button on the page")
        if action == "delete":
            await self.store.call(self.raw.delete_federation, name)
            return RedirectResponse("/", status_code=303)
        await self.store.call(self.raw.reset_federation, name)
        return RedirectResponse(f"/federations/{name}", status_code=303)

    # ------------------------------------------------------------ errors

    def render_error(self, path: str, exc: HttpError | StoreError) -> Response:
        """The answer to *exc* raised while serving *path* (routes and fast path alike)."""
        if isinstance(exc, HttpError):
            return self.error_response(path, exc.status, exc.message, exc.headers)
        status = exc.status
        if path in LEGACY_PATHS and status == 404:
            status = 400
        if isinstance(exc.detail, dict) and path.startswith("/api/"):
            return _json({"error": exc.message, "current": exc.detail}, status)
        return self.error_response(path, status, exc.message, None)

    def error_response(
        self, path: str, status: int, message: str, headers: dict[str, str] | None
    ) -> Response:
        if path.startswith("/api/"):
            return _json({"error": message}, status, headers)
        if path in LEGACY_PATHS:
            return PlainTextResponse(f"Error: {message}\n", status_code=status, headers=headers)
        titles = {401: "Login required", 403: "Not allowed", 404: "Not found"}
        hints = ADMIN_HINTS if status == 403 and "admin password" in message else ()
        response = self.html(
            "message.html",
            status,
            title=titles.get(status, "Error"),
            message=message,
            hints=hints,
        )
        if headers:
            response.headers.update(headers)
        return response


_HEARTBEAT = ("/api/v1/registrations/", "/heartbeat")
_REGISTER = ("/api/v1/federations/", "/registrations")
_JSON_TYPE = (b"content-type", b"application/json")
_TEXT_TYPE = (b"content-type", b"text/plain; charset=utf-8")


def _between(path: str, ends: tuple[str, str]) -> str | None:
    """The one path segment between ``ends[0]`` and ``ends[1]``, or ``None``."""
    head, tail = ends
    if len(path) > len(head) + len(tail) and path.startswith(head) and path.endswith(tail):
        middle = path[len(head) : -len(tail)]
        if "/" not in middle:
            return middle
    return None


class _HotPaths:
    """Raw-ASGI fast path for the calls every node makes: JSON register and heartbeat, and the
    legacy ``GET /register``.

    It sits in front of Starlette's routing (inside its ServerErrorMiddleware) and answers
    exactly what the routes would (it calls the same ``_Registry.do_*`` code and renders
    errors with the same ``render_error``), without building a Request, matching ~20 route
    regexes and running the exception middleware for every heartbeat. Everything else, and
    any request it does not recognise exactly (other methods, HEAD, a ``root_path``), goes
    on to Starlette.
    """

    def __init__(self, app: ASGIApp, registry: _Registry) -> None:
        self.app = app
        self.reg = registry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            path: str = scope["path"]
            method: str = scope["method"]
            if method == "POST":
                token = _between(path, _HEARTBEAT)
                if token is not None:
                    try:
                        body = await self.reg.do_heartbeat(token)
                    except (HttpError, StoreError) as exc:
                        await self.reg.render_error(path, exc)(scope, receive, send)
                        return
                    await _send(send, 200, body, _JSON_TYPE)
                    return
                federation = _between(path, _REGISTER)
                if federation is not None:
                    try:
                        raw = await self._body(scope, receive)
                        if raw is None:
                            return  # the client went away before sending its body
                        client = scope.get("client")
                        host = client[0] if client and client[0] else "0.0.0.0"
                        body = await self.reg.do_register(federation, _decode_json(raw), host)
                    except (HttpError, StoreError) as exc:
                        await self.reg.render_error(path, exc)(scope, receive, send)
                        return
                    await _send(send, 201, body, _JSON_TYPE)
                    return
            elif method == "GET" and path == "/register":
                try:
                    query = dict(
                        parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
                    )
                    client = scope.get("client")
                    host = client[0] if client and client[0] else "0.0.0.0"
                    text = await self.reg.do_legacy_register(query, host)
                except (HttpError, StoreError) as exc:
                    await self.reg.render_error(path, exc)(scope, receive, send)
                    return
                await _send(send, 200, text.encode(), _TEXT_TYPE)
                return
        await self.app(scope, receive, send)

    async def _body(self, scope: Scope, receive: Receive) -> bytes | None:
        """The request body (at most ``max_body`` bytes, else 413), ``None`` on disconnect."""
        limit = self.reg.max_body
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value.decode("latin-1"))
                except ValueError:
                    raise HttpError(400, "bad Content-Length") from None
                if declared > limit:
                    raise HttpError(413, f"body larger than {limit} bytes")
                break
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise HttpError(413, f"body larger than {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


async def _send(send: Send, status: int, body: bytes, content_type: tuple[bytes, bytes]) -> None:
    headers = [(b"content-length", str(len(body)).encode()), content_type]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def create_app(
    store: RegistryStore,
    admin_password: str | None = None,
    *,
    max_body: int = DEFAULT_MAX_BODY,
    csrf_secret: bytes | None = None,
    fast_path: bool = True,
) -> Starlette:
    """Return the registry's ASGI app over *store*.

    *admin_password* enables delete and reset (HTTP Basic, any user name); ``None`` or empty
    refuses them with a page that says how to set one. *max_body* limits request bodies.
    *csrf_secret* keys the admin forms' CSRF tokens (random per app when ``None``); worker
    processes serving one registry must share it, so a form served by one is accepted by all.
    *fast_path* answers register, heartbeat and legacy register in front of the routing (same
    answers, less work per request); ``False`` leaves them to the routes (for comparison).
    """
    reg = _Registry(store, admin_password, max_body, csrf_secret)
    v1 = "/api/v1"
    routes = [
        Route(f"{v1}/openapi.json", reg.openapi, methods=["GET"]),
        Route(f"{v1}/federations", reg.list_federations, methods=["GET"]),
        Route(f"{v1}/federations", reg.create_federation, methods=["POST"]),
        Route(f"{v1}/federations/{{federation}}", reg.show_federation, methods=["GET"]),
        Route(f"{v1}/federations/{{federation}}", reg.delete_federation, methods=["DELETE"]),
        Route(f"{v1}/federations/{{federation}}/reset", reg.reset_federation, methods=["POST"]),
        Route(f"{v1}/federations/{{federation}}/orchestras", reg.list_orchestras, methods=["GET"]),
        Route(
            f"{v1}/federations/{{federation}}/orchestras", reg.create_orchestra, methods=["POST"]
        ),
        Route(f"{v1}/federations/{{federation}}/registrations", reg.register, methods=["POST"]),
        Route(f"{v1}/federations/{{federation}}/conductor", reg.get_conductor, methods=["GET"]),
        Route(f"{v1}/federations/{{federation}}/conductor", reg.set_conductor, methods=["POST"]),
        Route(f"{v1}/federations/{{federation}}/elapsed", reg.elapsed, methods=["GET"]),
        Route(f"{v1}/registrations/{{token}}/heartbeat", reg.heartbeat, methods=["POST"]),
        Route(f"{v1}/registrations/{{token}}", reg.unregister, methods=["DELETE"]),
        Route("/federation", reg.legacy_federation, methods=["GET"]),
        Route("/orchestra", reg.legacy_orchestra, methods=["GET"]),
        Route("/register", reg.legacy_register, methods=["GET"]),
        Route("/unregister", reg.legacy_unregister, methods=["GET"]),
        Route("/", reg.index, methods=["GET"]),
        Route("/federations/{federation}", reg.federation_page, methods=["GET"]),
        Route("/federations/{federation}/{action}", reg.admin_action, methods=["POST"]),
    ]

    async def on_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HttpError | StoreError)
        return reg.render_error(request.url.path, exc)

    async def on_starlette_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = {404: f"no such resource: {request.url.path}", 405: "method not allowed"}.get(
            exc.status_code, str(exc.detail)
        )
        return reg.error_response(
            request.url.path, exc.status_code, message, dict(exc.headers) if exc.headers else None
        )

    async def on_unicode_error(request: Request, exc: Exception) -> Response:
        return reg.error_response(request.url.path, 400, "the request is not valid UTF-8", None)

    app = Starlette(
        routes=routes,
        middleware=[Middleware(_HotPaths, registry=reg)] if fast_path else [],
        exception_handlers={
            HttpError: on_error,
            StoreError: on_error,
            HTTPException: on_starlette_error,
            UnicodeDecodeError: on_unicode_error,
        },
    )
    app.state.registry = reg
    app.state.started = time.time()
    return app
