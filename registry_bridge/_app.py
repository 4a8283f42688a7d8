"""The registry's Starlette app: JSON API, legacy text API and HTML pages.

``create_app(store, admin_password)`` returns an ASGI app. Store calls run on the store's
worker thread (:class:`AsyncStore`); every write is committed before the answer is sent.

Errors are answered in the caller's language: JSON ``{"error": "..."}`` under ``/api/v1``,
``Error: ...`` text on the legacy URLs, an HTML page elsewhere. Bodies are limited to
``max_body`` bytes (413); JSON writes need ``Content-Type: application/json`` (415), so a
browser cannot send them cross-site without a preflight. Registrations (and creations) are
limited per client address (429 with ``Retry-After``).

Admin actions (delete, reset) need HTTP Basic with the admin password; an address that sent
wrong passwords is slowed (429). The HTML forms are served only to a logged-in organiser, on
``/federations/{f}/admin``, which also sets a random session cookie (``HttpOnly``,
``SameSite=Strict``); each form carries a CSRF token, an HMAC of that session, the action and
the federation, so no public page reveals one and a token is worthless without its cookie.
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
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mesh._picture import mesh_picture
from registry_bridge._limits import (
    DEFAULT_LOGIN_BURST,
    DEFAULT_LOGIN_EVERY,
    DEFAULT_REGISTER_BURST,
    DEFAULT_REGISTER_RATE,
    Buckets,
    retry_after,
)
from registry_bridge._openapi import NODE_ID_EXCLUDED, TERM_LIMIT, openapi_document
from registry_bridge._store import (
    AsyncStore,
    RegistryStore,
    StoreError,
    handover_source,
    is_epoch_tag,
    is_generation,
)

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
_SESSION_RE = re.compile(r"[A-Za-z0-9_-]{43}\Z")
_PORT_RE = re.compile(r"[0-9]{1,5}\Z")  # ASCII digits only (str.isdigit() takes "²" too)
_HOST_MAX = 45  # the longest IP literal: ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255
# a node id is shown in error messages, the 2012 clients' among them: no character that
# starts a new line (for str.splitlines too) or controls a terminal
_NODE_ID_RE = re.compile(f"[^{NODE_ID_EXCLUDED}]{{1,128}}\\Z")
_HOLDER_MAX = 130  # "/" + orchestra + "/" + name, 64 characters each
SESSION_COOKIE = "stagemesh_admin"
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


def _shown(value: str, limit: int = 40) -> str:
    """*value* quoted for an error message, cut to *limit* characters."""
    return repr(value) if len(value) <= limit else repr(value[:limit]) + "..."


def _one_line(message: str) -> str:
    """*message* as one printable line: a character that is not printable (a line break, a
    control character) is written as its escape, so no error can add a line to an answer
    (a value stored before the checks above could hold one)."""
    if message.isprintable():
        return message
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


def _require_json(content_type: str | None) -> None:
    """Refuse a JSON write whose ``Content-Type`` is not ``application/json`` (415): browsers
    send other types cross-site without asking the server first."""
    if content_type is None or content_type.split(";", 1)[0].strip().lower() != "application/json":
        raise HttpError(415, "this call needs Content-Type: application/json")


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
        raise HttpError(400, f"{key} must be yes or no, not {_shown(value)}") from None


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    try:
        return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return "-"


def _duration(seconds: float) -> str:
    """*seconds* for a person: ``45 s``, ``12 min``, ``5 h 59 min``."""
    s = max(0, round(seconds))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _picture_view(view: Mapping[str, Any]) -> dict[str, Any]:
    """*view* with each orchestra's reported members (:mod:`registry_bridge._members`) drawn
    beside its registrations: the picture shows every player, not only the supernodes that
    register. A registered path is drawn once, with the state its supernode reported."""
    orchestras = []
    for orch in view.get("orchestras", ()):
        reported = {m["path"]: m for m in orch.get("members", ())}
        nodes = [
            {**n, "state": reported[n["path"]]["state"]} if n["path"] in reported else n
            for n in orch.get("nodes", ())
        ]
        registered = {n["path"] for n in nodes}
        nodes += [
            {
                "path": path,
                "name": path.rsplit("/", 1)[-1],
                "supernode": False,
                "conductor": "conductor" in m["posts"],
                "state": m["state"],
            }
            for path, m in reported.items()
            if path not in registered
        ]
        orchestras.append({**orch, "nodes": nodes})
    return {**view, "orchestras": orchestras}


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
    """An IP literal (normalised), without a scope id: addresses go to other hosts and into
    the 2012 clients' text answers, where a host name means a lookup and a ``%scope`` names
    an interface of the sender's machine (and could carry any character)."""
    if not isinstance(value, str):
        raise HttpError(400, "host must be an IP address (a string)")
    if len(value) <= _HOST_MAX and value.isprintable() and "%" not in value:
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            pass
    raise HttpError(
        400,
        "host must be an IP address such as 192.0.2.7 or 2001:db8::7 (no host name, no"
        f" %scope), not {_shown(value)}",
    )


def _check_port(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        shown = _shown(value) if isinstance(value, str) else repr(value)[:40]
        raise HttpError(400, f"port must be an integer 1-65535, not {shown}")
    return value


def _legacy_port(raw: str | None) -> int:
    """The legacy ``port`` parameter: 1-5 ASCII digits, 1-65535 (default 7471)."""
    if not raw:
        return DEFAULT_NODE_PORT
    if _PORT_RE.match(raw) is None or not 1 <= int(raw) <= 65535:
        raise HttpError(400, f"port must be an integer 1-65535 in ASCII digits, not {_shown(raw)}")
    return int(raw)


def _legacy_host(host: str) -> str:
    """*host* for an entry line of a 2012 answer; ``-`` if it could break the line format
    (stored by a registry older than the checks above)."""
    return host if host.isprintable() and " " not in host and host else "-"


def _refuse_head(request: Request) -> None:
    """The legacy URLs change the registry on GET; a HEAD must not (405)."""
    if request.method == "HEAD":
        raise HttpError(
            405,
            "HEAD is not allowed here: this URL changes the registry; use GET",
            {"Allow": "GET"},
        )


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
            # quoted and cut: a field name may hold control characters or be 60 KiB long
            shown = ", ".join(_shown(k, 20) for k in unknown[:5])
            more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            fields = ", ".join(sorted(allowed)) or "none"
            raise HttpError(400, f"unknown field(s) {shown}{more}; the fields are: {fields}")
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
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # JSON has one number type: 7471.0 is the integer 7471
        if isinstance(value, bool) or not isinstance(value, int):
            raise HttpError(400, f"{key} must be an integer")
        if not -TERM_LIMIT <= value <= TERM_LIMIT:
            raise HttpError(400, f"{key} must be between -2**62 and 2**62")
        return value


@functools.cache
def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(  # the federation picture is the node dashboard's, too
            [
                jinja2.PackageLoader("registry_bridge", "templates"),
                jinja2.PackageLoader("mesh", "templates"),
            ]
        ),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
    )
    env.filters["when"] = _when
    env.filters["duration"] = _duration
    return env


class _Registry:
    """The handlers, sharing the store, the templates and the admin secret."""

    def __init__(
        self,
        store: RegistryStore,
        admin_password: str | None,
        max_body: int,
        secret: bytes | None,
        registrations: Buckets | None,
    ) -> None:
        self.raw = store
        self.store = AsyncStore(store)
        self.admin_password = admin_password or None
        self.max_body = max_body
        self.secret = secret or secrets.token_bytes(32)
        self.templates = _templates()
        self.registrations = registrations
        self.failed_logins = Buckets(DEFAULT_LOGIN_BURST, 1 / DEFAULT_LOGIN_EVERY)

    # ------------------------------------------------------------ helpers

    async def json_body(self, request: Request) -> Any:
        return _decode_json(await _read_body(request, self.max_body))

    def html(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        text = self.templates.get_template(template).render(**context)
        return HTMLResponse(text, status_code=status)

    def csrf_token(self, session: str, action: str, federation: str) -> str:
        """The token of one admin form: bound to the login *session* (its cookie), the action
        and the federation, under the registry's secret."""
        msg = f"{session}\0{action}\0{federation}".encode()
        return hmac.new(self.secret, msg, hashlib.sha256).hexdigest()

    def limit_registrations(self, client_host: str) -> None:
        """Spend one of *client_host*'s registrations, or raise :class:`HttpError` 429."""
        if self.registrations is None:
            return
        wait = self.registrations.take(client_host)
        if wait > 0:
            after = retry_after(wait)
            raise HttpError(
                429,
                f"too many registrations from {client_host} (at most"
                f" {self.registrations.burst:.0f} at once, then {self.registrations.rate:g} a"
                f" second); try again in {after} s",
                {"Retry-After": after},
            )

    def check_admin(self, request: Request) -> None:
        """Raise :class:`HttpError` 403 (no password configured), 429 (this address sent too
        many wrong passwords: try later, the password is not even checked) or 401 (missing or
        wrong)."""
        if self.admin_password is None:
            raise HttpError(
                403,
                "admin actions are disabled: no admin password is configured. Start the "
                "registry with --admin-password-file PATH or set STAGEMESH_ADMIN_PASSWORD.",
            )
        address = self.client_host(request)
        wait = self.failed_logins.wait(address)
        if wait > 0:
            after = retry_after(wait)
            raise HttpError(
                429,
                f"too many wrong admin passwords from {address}; try again in {after} s",
                {"Retry-After": after},
            )
        challenge = {"WWW-Authenticate": 'Basic realm="stagemesh registry admin", charset="UTF-8"'}
        header = request.headers.get("authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic" or not encoded:
            raise HttpError(401, "admin login required", challenge)
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            self.failed_logins.take(address)
            raise HttpError(401, "malformed Basic credentials", challenge) from None
        _, _, password = decoded.partition(":")
        if not hmac.compare_digest(password.encode(), self.admin_password.encode()):
            self.failed_logins.take(address)
            logger.warning("wrong admin password from %s", address)
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
        self.limit_registrations(client_host)
        allowed = {"orchestra", "name", "host", "port", "node_id", "supernode", "conductor"}
        fields = _Fields(body, allowed | {"create", "takeover"})
        host = fields.string("host")
        port = fields.integer("port")
        node_id = fields.string("node_id")
        if node_id is not None and _NODE_ID_RE.match(node_id) is None:
            raise HttpError(
                400,
                "node_id must be 1-128 characters without control characters or line breaks,"
                f" not {_shown(node_id)}",
            )
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

    async def do_heartbeat(self, token: str, raw: bytes, content_type: str | None) -> bytes:
        """JSON heartbeat: return the JSON answer (status 200). An empty body (the usual) just
        keeps the registration alive; a supernode's may carry ``{"members": [...]}``, its
        orchestra's members report (:mod:`registry_bridge._members`)."""
        token = _check_token(token)
        if not raw.strip():
            return _dumps(await self.store.call(self.raw.heartbeat, token))
        _require_json(content_type)
        fields = _Fields(_decode_json(raw), {"members"})
        members = fields.body.get("members")
        if members is None:
            return _dumps(await self.store.call(self.raw.heartbeat, token))
        return _dumps(await self.store.call(self.raw.heartbeat, token, members))

    async def do_legacy_register(
        self, query: Mapping[str, str], client_host: str
    ) -> tuple[int, str]:
        """Legacy ``register``: return the status and the text answer.

        200, or 409 when the conductor claim was refused: the laptop is then registered as a
        plain node all the same, and the first line says who holds the post (a 2012 client
        reads only the body). A refused supernode claim is said on the first line too.
        """
        self.limit_registrations(client_host)
        fed = _param(query, "federation")
        orch = _param(query, "orchestra")
        name = _param(query, "name")
        supernode = _yes(query, "supernode")
        conductor = _yes(query, "conductor")
        port = _legacy_port(query.get("port"))
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
        )
        role = "supernode" if a["supernode_granted"] else "node"
        if a["conductor_granted"]:
            role += " and conductor"

        def line(e: dict[str, Any]) -> str:
            host = _legacy_host(e["host"])
            return f"{e['federation']} {e['orchestra']} {e['path']} {host} {e['port']}"

        first = f"Registered {a['path']} as {role} in federation {a['federation']}"
        refused = []
        if supernode and not a["supernode_granted"] and a["supernode"] is not None:
            sup = a["supernode"]
            refused.append(
                f"not as supernode: {sup['path']} is already orchestra {sup['orchestra']}'s"
                " supernode"
            )
        if conductor and not a["conductor_granted"] and a["conductor"] is not None:
            refused.append(f"not as conductor: {a['conductor']['path']} already is the conductor")
        if refused:
            first += ", " + "; ".join(refused)
        lines = [first, f"Elapsed: {a['elapsed']:.6f}"]
        if a["supernode_granted"]:
            lines.append("Other supernodes:")
            lines.extend(line(e) for e in a["other_supernodes"])
        elif a["supernode"] is not None:
            lines.append("Your supernode:")
            lines.append(line(a["supernode"]))
        if a["conductor"] is not None:
            lines.append("Conductor:")
            lines.append(line(a["conductor"]))
        status = 409 if conductor and not a["conductor_granted"] else 200
        return status, "\n".join(lines) + "\n"

    # ------------------------------------------------------------ JSON API

    async def openapi(self, request: Request) -> Response:
        return _json(openapi_document())

    async def list_federations(self, request: Request) -> Response:
        feds = await self.store.call(self.raw.list_federations)
        return _json({"federations": feds})

    async def create_federation(self, request: Request) -> Response:
        _require_json(request.headers.get("content-type"))
        self.limit_registrations(self.client_host(request))
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
        _require_json(request.headers.get("content-type"))
        _Fields(await self.json_body(request), set())
        name = request.path_params["federation"]
        return _json(await self.store.call(self.raw.reset_federation, name))

    async def list_orchestras(self, request: Request) -> Response:
        fed = request.path_params["federation"]
        return _json({"orchestras": await self.store.call(self.raw.list_orchestras, fed)})

    async def create_orchestra(self, request: Request) -> Response:
        _require_json(request.headers.get("content-type"))
        self.limit_registrations(self.client_host(request))
        fields = _Fields(await self.json_body(request), {"name"})
        name = fields.string("name", required=True)
        fed = request.path_params["federation"]
        return _json(await self.store.call(self.raw.create_orchestra, fed, name), 201)

    async def register(self, request: Request) -> Response:
        _require_json(request.headers.get("content-type"))
        body = await self.do_register(
            request.path_params["federation"],
            await self.json_body(request),
            self.client_host(request),
        )
        return Response(body, status_code=201, media_type="application/json")

    async def heartbeat(self, request: Request) -> Response:
        body = await self.do_heartbeat(
            request.path_params["token"],
            await _read_body(request, self.max_body),
            request.headers.get("content-type"),
        )
        return Response(body, media_type="application/json")

    async def unregister(self, request: Request) -> Response:
        token = _check_token(request.path_params["token"])
        await self.store.call(self.raw.unregister, token)
        return _json({"unregistered": True})

    async def get_conductor(self, request: Request) -> Response:
        fed = request.path_params["federation"]
        return _json(await self.store.call(self.raw.conductor, fed))

    async def set_conductor(self, request: Request) -> Response:
        _require_json(request.headers.get("content-type"))
        fields = _Fields(await self.json_body(request), {"token", "expected_term", "holder"})
        token = fields.string("token")
        if token is None:
            raise HttpError(400, "missing field 'token' (the claimant's registration token)")
        expected = fields.integer("expected_term", required=True)
        assert expected is not None
        if not fields.has("holder"):
            raise HttpError(400, "missing field 'holder' (a path, or null to release)")
        holder = fields.string("holder")
        if holder is not None and len(holder) > _HOLDER_MAX:
            raise HttpError(
                400,
                f"holder must be a path /<orchestra>/<name> of at most {_HOLDER_MAX} characters,"
                f" not {_shown(holder)}",
            )
        answer = await self.store.call(
            self.raw.set_conductor,
            request.path_params["federation"],
            token=_check_token(token),
            expected_term=expected,
            holder=holder,
        )
        return _json(answer)

    async def elapsed(self, request: Request) -> Response:
        received = self.raw.now()
        fed = request.path_params["federation"]
        time = await self.store.call(self.raw.federation_time, fed)
        sent = self.raw.now()
        epoch = time["epoch"]
        base = received if epoch is None else epoch
        t2 = max(0.0, received - base) if epoch is not None else 0.0
        t3 = max(0.0, sent - base) if epoch is not None else 0.0
        return _json(
            {
                "federation": fed,
                **time,
                "elapsed": t3,
                "t2": t2,
                "t3": t3,
                "clock_t2": received,
                "clock_t3": sent,
            }
        )

    async def offer_epoch(self, request: Request) -> Response:
        """A running node hands over the federation's time (see RegistryStore.offer_epoch).
        It changes the federation's state, so it is a JSON write on behalf of a registration
        of that federation (its token, as for the conductor's compare-and-set): a stranger's
        offer is refused (404) and changes nothing. ``tag`` (optional: a keyed federation's
        signature of generation, epoch and lineage) is kept opaquely and handed back with
        them, one handover per client address (:func:`handover_source`)."""
        _require_json(request.headers.get("content-type"))
        fields = _Fields(
            await self.json_body(request), {"token", "epoch", "lineage", "tag", "generation"}
        )
        token = fields.string("token")
        if token is None:
            raise HttpError(400, "missing field 'token' (the offering node's registration token)")
        value = fields.body.get("epoch")
        if value is None:
            raise HttpError(400, "missing field 'epoch' (seconds on the registry's clock)")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise HttpError(400, "epoch must be a number of seconds on the registry's clock")
        lineage = fields.string("lineage", required=True) or ""
        tag = fields.string("tag")
        if tag is not None and not is_epoch_tag(tag):
            raise HttpError(
                400,
                f"tag must be null or 1-128 letters, digits, '.', '_' or '-', not {_shown(tag)}",
            )
        generation = fields.string("generation")
        if generation is not None and not is_generation(generation):
            raise HttpError(
                400,
                "generation must be null or 1-128 letters, digits, '.', '_' or '-', not"
                f" {_shown(generation)}",
            )
        token = _check_token(token)
        answer = await self.store.call(
            self.raw.offer_epoch,
            request.path_params["federation"],
            token,
            float(value),
            lineage,
            tag,
            generation=generation,
            source=handover_source(self.client_host(request)),
        )
        return _json(answer)

    # ------------------------------------------------------------ legacy text API

    async def legacy_federation(self, request: Request) -> Response:
        _refuse_head(request)
        query = request.query_params
        fed = _param(query, "federation")
        create = _yes(query, "create")
        if create:
            self.limit_registrations(self.client_host(request))
        fid = await self.store.call(self.raw.federation_id, fed, create=create)
        return PlainTextResponse(f"{fid}\n")

    async def legacy_orchestra(self, request: Request) -> Response:
        _refuse_head(request)
        query = request.query_params
        fed = _param(query, "federation")
        orch = _param(query, "orchestra")
        create = _yes(query, "create")
        if create:
            self.limit_registrations(self.client_host(request))
        oid = await self.store.call(self.raw.orchestra_id, fed, orch, create=create)
        return PlainTextResponse(f"{oid}\n")

    async def legacy_register(self, request: Request) -> Response:
        _refuse_head(request)
        status, text = await self.do_legacy_register(
            request.query_params, self.client_host(request)
        )
        return PlainTextResponse(text, status_code=status)

    async def legacy_unregister(self, request: Request) -> Response:
        _refuse_head(request)
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
        pic = mesh_picture(_picture_view(view))
        return self.html("federation.html", f=view, pic=pic, now=self.raw.now())

    async def federation_live(self, request: Request) -> Response:
        """The live part of a federation's page (picture, conductor, orchestras), which the
        page fetches every two seconds to update itself."""
        view = await self.store.call(self.raw.federation, request.path_params["federation"])
        pic = mesh_picture(_picture_view(view))
        return self.html("federation_live.html", f=view, pic=pic, now=self.raw.now())

    def session_of(self, request: Request) -> str | None:
        """The admin session id of *request*'s cookie, if it carries a well-formed one."""
        value = request.cookies.get(SESSION_COOKIE)
        return value if value is not None and _SESSION_RE.match(value) else None

    async def admin_page(self, request: Request) -> Response:
        """The reset and delete forms, for a logged-in organiser only: their CSRF tokens are
        bound to a session cookie this page sets (``HttpOnly``, ``SameSite=Strict``)."""
        self.check_admin(request)
        view = await self.store.call(self.raw.federation, request.path_params["federation"])
        session = self.session_of(request)
        fresh = session is None
        if session is None:
            session = secrets.token_urlsafe(32)
        name = view["name"]
        response = self.html(
            "admin.html",
            f=view,
            csrf_delete=self.csrf_token(session, "delete", name),
            csrf_reset=self.csrf_token(session, "reset", name),
        )
        response.headers["cache-control"] = "no-store"
        if fresh:
            response.headers["set-cookie"] = (
                f"{SESSION_COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict"
            )
        return response

    async def admin_action(self, request: Request) -> Response:
        action = request.path_params["action"]
        if action not in ("delete", "reset"):
            raise HttpError(404, f"no page {request.url.path}")
        self.check_admin(request)
        name = request.path_params["federation"]
        form = parse_qs((await _read_body(request, self.max_body)).decode("latin-1"))
        sent = form.get("csrf", [""])[0]
        session = self.session_of(request)
        if session is None or not hmac.compare_digest(
            sent.encode("utf-8", "replace"), self.csrf_token(session, action, name).encode()
        ):
            raise HttpError(
                403,
                f"missing or wrong CSRF token: use the buttons of /federations/{name}/admin",
            )
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
        message = _one_line(message)
        if path.startswith("/api/"):
            return _json({"error": message}, status, headers)
        if path in LEGACY_PATHS:
            return PlainTextResponse(f"Error: {message}\n", status_code=status, headers=headers)
        titles = {
            401: "Login required",
            403: "Not allowed",
            404: "Not found",
            429: "Too many attempts",
        }
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


class _BodyFirst:
    """Raw-ASGI middleware, outermost: read the request's body (up to *limit* bytes) before the
    app answers, and hand it to the app as it came.

    granian (hyper underneath) closes a keep-alive connection after an answer sent before the
    request's body has arrived, without a ``Connection: close`` to say so: an answer that needs
    no body (an unknown path or token, a wrong ``Content-Type``) can leave before the client's
    second write. A client that reuses the connection for its next call then sees it drop with
    no answer (httpx: "Server disconnected without sending a response"), a failed heartbeat or
    registration where nothing was wrong. At most *limit* bytes (and the chunk that passes
    them) are read ahead: the rest of a longer body is left to the app, which answers 413, and
    the connection closes, as it should for a client that sends too much.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ahead: list[Message] = []
        size = 0
        while size <= self.limit:
            message = await receive()
            ahead.append(message)
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
            size += len(message.get("body", b""))
        ahead.reverse()

        async def replay() -> Message:
            return ahead.pop() if ahead else await receive()

        await self.app(scope, replay, send)


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
                        raw = await self._body(scope, receive)
                        if raw is None:
                            return  # the client went away before sending its body
                        body = await self.reg.do_heartbeat(
                            token, raw, _header(scope, b"content-type")
                        )
                    except (HttpError, StoreError) as exc:
                        await self.reg.render_error(path, exc)(scope, receive, send)
                        return
                    await _send(send, 200, body, _JSON_TYPE)
                    return
                federation = _between(path, _REGISTER)
                if federation is not None:
                    try:
                        _require_json(_header(scope, b"content-type"))
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
                    status, text = await self.reg.do_legacy_register(query, host)
                except (HttpError, StoreError) as exc:
                    await self.reg.render_error(path, exc)(scope, receive, send)
                    return
                await _send(send, status, text.encode(), _TEXT_TYPE)
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


def _header(scope: Scope, name: bytes) -> str | None:
    """The value of header *name* (lower case) in an ASGI *scope*, if present."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def _send(send: Send, status: int, body: bytes, content_type: tuple[bytes, bytes]) -> None:
    headers = [(b"content-length", str(len(body)).encode()), content_type]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _allowed_methods(routes: list[Route], scope: Scope) -> list[str]:
    """The methods of every route whose path matches *scope*'s: the ``Allow`` of a 405 (each
    Route holds one method, so Starlette's own names only the first route's). The legacy URLs
    refuse HEAD (:func:`_refuse_head`), so they do not offer it."""
    allowed: set[str] = set()
    for route in routes:
        if route.matches(scope)[0] is not Match.NONE:
            allowed |= route.methods or set()
    if scope["path"] in LEGACY_PATHS:
        allowed.discard("HEAD")
    return sorted(allowed)


def create_app(
    store: RegistryStore,
    admin_password: str | None = None,
    *,
    max_body: int = DEFAULT_MAX_BODY,
    csrf_secret: bytes | None = None,
    fast_path: bool = True,
    register_burst: int = DEFAULT_REGISTER_BURST,
    register_rate: float | None = DEFAULT_REGISTER_RATE,
) -> Starlette:
    """Return the registry's ASGI app over *store*.

    *admin_password* enables delete and reset (HTTP Basic, any user name); ``None`` or empty
    refuses them with a page that says how to set one. *max_body* limits request bodies.
    *csrf_secret* keys the admin forms' CSRF tokens (random per app when ``None``); worker
    processes serving one registry must share it, so a form served by one is accepted by all.
    *fast_path* answers register, heartbeat and legacy register in front of the routing (same
    answers, less work per request); ``False`` leaves them to the routes (for comparison).
    Each client address may make *register_burst* registrations (and creations) at once and
    *register_rate* a second after that (``None``: no limit); more get 429.
    """
    from registry_bridge._relayapi import RelayApi  # it builds on this module's helpers

    limit = None if register_rate is None else Buckets(register_burst, register_rate)
    reg = _Registry(store, admin_password, max_body, csrf_secret, limit)
    relay = RelayApi(reg)
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
        Route(f"{v1}/federations/{{federation}}/epoch", reg.offer_epoch, methods=["POST"]),
        Route(f"{v1}/registrations/{{token}}/heartbeat", reg.heartbeat, methods=["POST"]),
        Route(f"{v1}/registrations/{{token}}", reg.unregister, methods=["DELETE"]),
        Route(f"{v1}/registrations/{{token}}/relay", relay.queue, methods=["POST"]),
        Route(f"{v1}/registrations/{{token}}/relay/take", relay.take, methods=["POST"]),
        Route("/federation", reg.legacy_federation, methods=["GET"]),
        Route("/orchestra", reg.legacy_orchestra, methods=["GET"]),
        Route("/register", reg.legacy_register, methods=["GET"]),
        Route("/unregister", reg.legacy_unregister, methods=["GET"]),
        Route("/", reg.index, methods=["GET"]),
        Route("/federations/{federation}", reg.federation_page, methods=["GET"]),
        Route("/federations/{federation}/live", reg.federation_live, methods=["GET"]),
        Route("/federations/{federation}/admin", reg.admin_page, methods=["GET"]),
        Route("/federations/{federation}/{action}", reg.admin_action, methods=["POST"]),
    ]

    async def on_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HttpError | StoreError)
        return reg.render_error(request.url.path, exc)

    async def on_starlette_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        path = request.url.path
        shown = path if len(path) <= 100 else f"{path[:100]}..."  # a path may be 60 KiB long
        headers = dict(exc.headers) if exc.headers else None
        if exc.status_code == 405:
            allowed = ", ".join(_allowed_methods(routes, request.scope))
            headers = {"Allow": allowed}
            message = f"method {request.method} is not allowed on {shown}; allowed: {allowed}"
        else:
            message = {404: f"no such resource: {shown}"}.get(exc.status_code, str(exc.detail))
        return reg.error_response(path, exc.status_code, message, headers)

    async def on_unicode_error(request: Request, exc: Exception) -> Response:
        return reg.error_response(request.url.path, 400, "the request is not valid UTF-8", None)

    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(_BodyFirst, limit=max_body),
            *([Middleware(_HotPaths, registry=reg)] if fast_path else []),
        ],
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
