"""An HTTP client for the registry's JSON API, used by the node-side bridge.

Exceptions::

    RegistryError                   anything the registry client raises (a RegistryBridgeError)
    +-- RegistryUnreachable         no answer (connection refused, timeout, bad reply)
    +-- RegistryRejected            a 4xx answer; ``status`` and the registry's ``message``
        +-- RegistryNotFound        404 (e.g. a token that expired: register again)
        +-- RegistryConflict        409
            +-- ConductorConflict   the conductor compare-and-set saw another term
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any

import attrs
import httpx

from mesh._lineage import Handover
from registry_bridge._errors import RegistryBridgeError
from registry_bridge._openapi import MAX_CLOCK_READING, MAX_HANDOVERS

__all__ = [
    "ConductorConflict",
    "ConductorState",
    "ElapsedSample",
    "Heartbeat",
    "Peer",
    "Registration",
    "RegistryClient",
    "RegistryConflict",
    "RegistryError",
    "RegistryNotFound",
    "RegistryRejected",
    "RegistryUnreachable",
    "RelayedFrame",
]


class RegistryError(RegistryBridgeError):
    """Base of every error :class:`RegistryClient` raises."""


class RegistryUnreachable(RegistryError):
    """Raised when the registry does not answer (connection error, timeout, non-JSON reply,
    or a 5xx status)."""


class RegistryRejected(RegistryError):
    """Raised when the registry answers with a 4xx status; ``message`` is its explanation."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class RegistryNotFound(RegistryRejected):
    """Raised on 404: unknown federation or orchestra, or an unknown/expired token."""


class RegistryConflict(RegistryRejected):
    """Raised on 409: the name exists, or the path is held by another live node."""


class ConductorConflict(RegistryConflict):
    """Raised by :meth:`RegistryClient.set_conductor` when the term was not the expected one;
    ``current`` is the registry's conductor state."""

    def __init__(self, status: int, message: str, current: ConductorState) -> None:
        super().__init__(status, message)
        self.current = current


@attrs.frozen
class Peer:
    """A registered node as the registry reports it."""

    federation: str
    orchestra: str
    name: str
    path: str
    host: str
    port: int
    node_id: str | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Peer:
        return cls(
            d["federation"],
            d["orchestra"],
            d["name"],
            d["path"],
            d["host"],
            d["port"],
            d.get("node_id"),
        )


@attrs.frozen
class ConductorState:
    """The federation's conductor (``holder`` is ``None`` when free) and its fencing term."""

    holder: str | None
    term: int
    node_id: str | None = None
    host: str | None = None
    port: int | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ConductorState:
        return cls(d["holder"], d["term"], d.get("node_id"), d.get("host"), d.get("port"))


@attrs.frozen
class Registration:
    """The answer to :meth:`RegistryClient.register`."""

    token: str
    federation: str
    path: str
    elapsed: float
    epoch: float | None
    ttl: float
    version: int
    supernode_granted: bool
    conductor_granted: bool
    supernode: Peer | None
    other_supernodes: tuple[Peer, ...]
    conductor: Peer | None
    conductor_term: int


@attrs.frozen
class Heartbeat:
    """The answer to a heartbeat; ``version`` changes whenever the federation's members do."""

    elapsed: float
    ttl: float
    version: int
    conductor_term: int


@attrs.frozen
class RelayedFrame:
    """A datagram another site's supernode sent through the registry's relay: who sent it
    (its registered path), the bytes (a signed datagram, checked by the node like any other)
    and how long it waited in the registry (seconds)."""

    sender: str
    frame: bytes
    age: float


@attrs.frozen
class ElapsedSample:
    """One clock-sync exchange: local send/receive times (``t1``, ``t4``, from the clock given
    to the client) and the registry's federation times on receive and send (``t2``, ``t3``);
    ``epoch`` and ``lineage`` are ``None`` while the federation has no time (before its first
    registration, after a reset); ``tag`` is the one the node that handed the epoch over gave
    with it (``None``: none, or the registry's own epoch). ``handovers`` are every epoch the
    registry keeps for the federation, oldest first (the first is ``epoch``; a keyed node
    takes the oldest whose tag it verifies), and ``generation`` the registry's generation of
    the federation (replaced at every reset; keyed nodes sign it with the epoch)."""

    t1: float
    t2: float
    t3: float
    t4: float
    epoch: float | None
    lineage: str | None = None
    clock_t2: float | None = None
    """The registry's own clock when the request arrived (present with or without an epoch)."""
    clock_t3: float | None = None
    """... and when the answer left."""
    tag: str | None = None
    handovers: tuple[Handover, ...] = ()
    generation: str | None = None

    @property
    def offset(self) -> float:
        """Federation time minus local time (NTP's estimate)."""
        return ((self.t2 - self.t1) + (self.t3 - self.t4)) / 2

    @property
    def round_trip(self) -> float:
        """Network round trip, excluding the registry's processing time."""
        return (self.t4 - self.t1) - (self.t3 - self.t2)


class _Body(httpx.AsyncByteStream):
    """A request body of one piece, sent without an async generator: httpx's own leaves one
    unfinished (a ``ResourceWarning`` when it is collected) whenever a request is cancelled
    mid-way, as every in-flight heartbeat is when its node stops."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def __aiter__(self) -> AsyncIterator[bytes]:
        return _Once(self._data)


class _Once:
    """An async iterator over one chunk."""

    def __init__(self, data: bytes) -> None:
        self._data: bytes | None = data

    def __aiter__(self) -> _Once:
        return self

    async def __anext__(self) -> bytes:
        data, self._data = self._data, None
        if data is None:
            raise StopAsyncIteration
        return data


class RegistryClient:
    """Async client of one registry (``base_url`` like ``http://host:7480``).

    Use as ``async with RegistryClient(url) as client: ...``; *transport* lets tests pass an
    ``httpx.ASGITransport``.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Any = time.monotonic,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + "/api/v1", timeout=timeout, transport=transport
        )
        self._clock = clock

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def _call(
        self, method: str, url: str, body: Any = None, *, read_timeout: float | None = None
    ) -> Any:
        # a long poll's answer may take longer than the client's timeout to start
        extra: dict[str, Any] = {} if read_timeout is None else {"timeout": read_timeout}
        request = self._http.build_request(method, url, json=body, **extra)
        if body is not None:
            request.stream = _Body(request.content)
        try:
            response = await self._http.send(request)
        except httpx.HTTPError as exc:
            raise RegistryUnreachable(f"{method} {url}: {exc!r}") from exc
        try:
            data = response.json()
        except ValueError:
            raise RegistryUnreachable(
                f"{method} {url}: non-JSON answer with status {response.status_code}"
            ) from None
        status = response.status_code
        if status < 400:
            return data
        message = data.get("error", "") if isinstance(data, dict) else str(data)
        if status == 404:
            raise RegistryNotFound(status, message)
        if status == 409:
            if isinstance(data, dict) and isinstance(data.get("current"), dict):
                raise ConductorConflict(status, message, ConductorState.from_json(data["current"]))
            raise RegistryConflict(status, message)
        if status < 500:
            raise RegistryRejected(status, message)
        raise RegistryUnreachable(f"{method} {url}: status {status}: {message}")

    async def register(
        self,
        federation: str,
        orchestra: str,
        name: str,
        *,
        port: int = 7471,
        host: str | None = None,
        node_id: str | None = None,
        supernode: bool = False,
        conductor: bool = False,
        create: bool = True,
        takeover: bool = False,
    ) -> Registration:
        """Register ``/<orchestra>/<name>`` (creating federation and orchestra when *create*)."""
        body: dict[str, Any] = {
            "orchestra": orchestra,
            "name": name,
            "port": port,
            "supernode": supernode,
            "conductor": conductor,
            "create": create,
            "takeover": takeover,
        }
        if host is not None:
            body["host"] = host
        if node_id is not None:
            body["node_id"] = node_id
        d = await self._call("POST", f"/federations/{federation}/registrations", body)
        return Registration(
            token=d["token"],
            federation=d["federation"],
            path=d["path"],
            elapsed=d["elapsed"],
            epoch=d["epoch"],
            ttl=d["ttl"],
            version=d["version"],
            supernode_granted=d["supernode_granted"],
            conductor_granted=d["conductor_granted"],
            supernode=None if d["supernode"] is None else Peer.from_json(d["supernode"]),
            other_supernodes=tuple(Peer.from_json(p) for p in d["other_supernodes"]),
            conductor=None if d["conductor"] is None else Peer.from_json(d["conductor"]),
            conductor_term=d["conductor_term"],
        )

    async def heartbeat(self, token: str, members: list[dict[str, Any]] | None = None) -> Heartbeat:
        """Keep the registration alive; :class:`RegistryNotFound` once it has expired. A
        supernode's heartbeat carries its orchestra's *members* report (path, state, posts)."""
        body = None if members is None else {"members": members}
        d = await self._call("POST", f"/registrations/{token}/heartbeat", body)
        return Heartbeat(d["elapsed"], d["ttl"], d["version"], d["conductor_term"])

    async def unregister(self, token: str) -> None:
        """Remove the registration; :class:`RegistryNotFound` if it is already gone."""
        await self._call("DELETE", f"/registrations/{token}")

    async def federation(self, federation: str) -> dict[str, Any]:
        """The registry's whole view of a federation (as JSON)."""
        result: dict[str, Any] = await self._call("GET", f"/federations/{federation}")
        return result

    async def conductor(self, federation: str) -> ConductorState:
        """The federation's conductor and term."""
        return ConductorState.from_json(
            await self._call("GET", f"/federations/{federation}/conductor")
        )

    async def set_conductor(
        self,
        federation: str,
        *,
        token: str,
        expected_term: int,
        holder: str | None,
    ) -> ConductorState:
        """Compare-and-set the conductor as the registration *token* (the holder releasing or
        handing over the post, or a registration claiming a free one for itself);
        :class:`ConductorConflict` if the term moved on, :class:`RegistryRejected` (403) if the
        registration may not make that change."""
        body: dict[str, Any] = {"token": token, "expected_term": expected_term, "holder": holder}
        d = await self._call("POST", f"/federations/{federation}/conductor", body)
        return ConductorState.from_json(d)

    async def elapsed(self, federation: str) -> ElapsedSample:
        """One clock-sync exchange with the registry."""
        t1 = self._clock()
        d = await self._call("GET", f"/federations/{federation}/elapsed")
        t4 = self._clock()
        lineage = d.get("lineage")
        tag = d.get("tag")
        generation = d.get("generation")
        t2, t3 = _reading(d.get("t2")), _reading(d.get("t3"))
        if t2 is None or t3 is None:
            raise RegistryUnreachable("the registry answered an elapsed without its t2 and t3")
        return ElapsedSample(
            t1,
            t2,
            t3,
            t4,
            _reading(d.get("epoch")),
            lineage if isinstance(lineage, str) else None,
            _reading(d.get("clock_t2")),
            _reading(d.get("clock_t3")),
            tag if isinstance(tag, str) else None,
            _handovers(d),
            generation if isinstance(generation, str) else None,
        )

    async def offer_epoch(
        self,
        federation: str,
        token: str,
        epoch: float,
        lineage: str,
        tag: str | None = None,
        generation: str | None = None,
    ) -> dict[str, Any]:
        """Hand the registry the federation's time: *epoch* is the registry's clock reading
        at which federation time (of *lineage*) was 0. It keeps it among the federation's
        handovers (see ``docs/registry.md``). Needs a live registration's *token*. *tag* (a
        keyed federation's signature of the epoch at *generation*, see
        :class:`mesh._lineage.EpochSeal`) is kept with the epoch and handed back with it; an
        offer for another *generation* than the registry's (a reset came between) is not
        taken."""
        body: dict[str, Any] = {"token": token, "epoch": epoch, "lineage": lineage}
        if tag is not None:
            body["tag"] = tag
        if generation is not None:
            body["generation"] = generation
        result: dict[str, Any] = await self._call("POST", f"/federations/{federation}/epoch", body)
        return result

    async def relay_queue(self, token: str, to: str, frames: Sequence[bytes]) -> int:
        """Queue *frames* (signed datagrams, at most 64) for the supernode registered at path
        *to*, as the supernode holding *token*; return how many older frames the registry
        dropped to keep that queue bounded."""
        body = {"to": to, "frames": [base64.b64encode(f).decode() for f in frames]}
        d = await self._call("POST", f"/registrations/{token}/relay", body)
        return int(d["dropped"])

    async def relay_take(self, token: str, wait: float = 0.0) -> list[RelayedFrame]:
        """Take the frames queued for the supernode holding *token*, waiting up to *wait*
        seconds (at most 25) for a first one."""
        d = await self._call(
            "POST", f"/registrations/{token}/relay/take", {"wait": wait}, read_timeout=wait + 10.0
        )
        out = []
        for item in d.get("frames", ()):
            try:
                frame = base64.b64decode(item["frame"], validate=True)
            except (binascii.Error, KeyError, TypeError, ValueError):
                raise RegistryUnreachable("the relay answered a malformed frame") from None
            out.append(RelayedFrame(str(item.get("from")), frame, float(item.get("age", 0.0))))
        return out


def _reading(value: object) -> float | None:
    """*value* as a clock reading of the registry's answer, or ``None`` when it is not one (a
    number within the registry's own bound: not a bool, a NaN or an infinity)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not abs(value) <= MAX_CLOCK_READING:  # NaN fails this too
        return None
    return float(value)


def _handovers(answer: dict[str, Any]) -> tuple[Handover, ...]:
    """The handovers of an ``elapsed`` answer, oldest first (a registry that lists none
    gives its epoch alone); entries of the wrong shape are left out."""
    listed = answer.get("handovers")
    if not isinstance(listed, list):
        epoch, lineage, tag = answer.get("epoch"), answer.get("lineage"), answer.get("tag")
        listed = [{"epoch": epoch, "lineage": lineage, "tag": tag}] if epoch is not None else []
    out = []
    for entry in listed[:MAX_HANDOVERS]:
        if not isinstance(entry, dict):
            continue
        epoch, lineage, tag = _reading(entry.get("epoch")), entry.get("lineage"), entry.get("tag")
        if epoch is not None and isinstance(lineage, str) and (tag is None or isinstance(tag, str)):
            out.append(Handover(epoch, lineage, tag))
    return tuple(sorted(out, key=lambda h: h.epoch))
