"""The OSC bridge's protocol as a sans-IO state machine (python-osc does the OSC codec).

:class:`OscBridgeCore` takes datagrams from local apps and returns the datagrams to send back;
it keeps the apps' subscriptions and watches and the queue of scheduled messages, enforces the
limits of :class:`OscLimits` (what a stranger on loopback can make the node hold), and counts
every refusal by reason. It reads the node through a :class:`BridgeHost` (federation time,
members, conductor, tempo; publishing), which tests implement by hand. The trio driver that
owns the UDP socket is :mod:`mesh._osc`; the addresses are documented in ``docs/osc.md``.

Scheduled messages and bundles are timed in federation time. A bundle's OSC timetag is read as
federation time: its upper 32 bits are whole seconds since the federation's epoch, its lower 32
bits the fraction (:func:`federation_timetag`); the timetag ``1`` means "now".
"""

from __future__ import annotations

import collections
import heapq
import itertools
import json
import math
import struct
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import attrs
from pythonosc.osc_bundle import OscBundle
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.parsing import osc_types

from mesh._nodecore import Publication
from mesh._tempo import InvalidTempo, NotConductor, Tempo
from mesh._wire import Address, Value

__all__ = [
    "BridgeHost",
    "OscBridgeCore",
    "OscLimits",
    "OscStatistics",
    "Outgoing",
    "build_message",
    "federation_timetag",
    "timetag_seconds",
]

PREFIX = "/stagemesh/"
IMMEDIATELY = 1
_WALL_CLOCK_TIMETAG = 10 * 365 * 86400  # seconds: more is an NTP wall-clock time, not ours
_FLOAT32 = struct.Struct(">f")
_SUPPORTED_TAGS = frozenset("ihfdsbTFN")


def federation_timetag(t: float) -> int:
    """The OSC timetag (64-bit fixed point) of federation time *t*."""
    return max(2, round(t * 2**32))


def timetag_seconds(timetag: int) -> float:
    """The federation time an OSC timetag stands for."""
    return timetag / 2**32


class BridgeHost(Protocol):
    """What the bridge reads from and asks of its node."""

    def now(self) -> float:
        """Federation time."""

    def error_bound(self) -> float | None:
        """The clock's error bound in seconds, or ``None`` while it is not synced."""

    def members(self) -> list[tuple[str, str]]:
        """``(path, state)`` of every live member, this node first."""

    def conductor(self) -> str | None:
        """The conductor's path, if any."""

    def tempo(self) -> Tempo | None:
        """The federation's tempo, if one is known."""

    def publish(self, topic: str, payload: Value) -> None:
        """Publish to every node (raises ValueError if too large)."""

    def set_tempo(self, bpm: float, meter: int | None, at: float | None, restart: bool) -> None:
        """Change (or, with *restart*, start anew) the tempo; conductor only (raises
        :class:`~mesh.NotConductor`, :class:`~mesh.InvalidTempo`)."""


@attrs.frozen
class OscLimits:
    """Bounds on what local apps (anyone on loopback) can make the bridge hold or send."""

    max_datagram: int = 8192
    """Largest datagram read (bigger ones are refused as ``too large``)."""
    max_clients: int = 32
    """Apps (reply addresses) with subscriptions, watches or scheduled messages."""
    max_subscriptions: int = 64
    """Topics per app."""
    max_topic: int = 128
    """Characters in a topic; also the limit of an OSC address the bridge forwards (x2)."""
    max_scheduled: int = 1024
    """Messages waiting in the schedule, all apps together."""
    max_scheduled_per_client: int = 256
    max_ahead: float = 3600.0
    """How far in the future (seconds) a message may be scheduled."""
    max_members_listed: int = 512
    """Members listed in one ``/stagemesh/members`` answer."""
    error_replies_per_second: float = 50.0
    """Error replies sent per second at most (every error is counted even when not answered)."""


@attrs.frozen
class OscStatistics:
    """The bridge's counters (``/api/status`` shows them under ``osc``)."""

    received: int
    sent: int
    errors: dict[str, int]
    """Refused input by reason: ``malformed``, ``too large``, ``unknown address``,
    ``bad arguments``, ``limit``, ``refused`` (not the conductor, an invalid tempo)."""
    error_replies_suppressed: int
    clients: int
    subscriptions: int
    scheduled: int
    """Messages waiting now."""
    scheduled_sent: int
    late_on_arrival: int
    """Scheduled messages whose time had already passed when they arrived (sent at once)."""
    publications_delivered: int
    send_lateness_ms: dict[str, float] | None
    """How late the bridge handed its last (up to 1000) scheduled messages to the socket, by
    this node's federation clock: ``p50``, ``p99``, ``max`` in milliseconds (``None`` before
    the first). What the app's own wake-up adds is not in it."""


@attrs.frozen
class Outgoing:
    """A datagram for the driver to send."""

    dest: Address
    data: bytes


@attrs.define
class _Client:
    subscriptions: set[str] = attrs.Factory(set)
    members: bool = False
    conductor: bool = False
    tempo: bool = False
    scheduled: int = 0
    float32: bool = False
    """Send this app only OSC 1.0's 32-bit types (``/stagemesh/float32``)."""


@attrs.frozen(order=True)
class _Scheduled:
    due: float
    seq: int
    client: Address = attrs.field(order=False)
    address: str = attrs.field(order=False)
    params: tuple[Any, ...] = attrs.field(order=False)


class _BadInput(Exception):
    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def _typed_args(builder: OscMessageBuilder, args: Iterable[Any], float32: bool) -> None:
    for value in args:
        if float32 and (isinstance(value, bool) or value is None):
            builder.add_arg(int(bool(value)), "i")
        elif isinstance(value, bool) or value is None or isinstance(value, str | bytes):
            builder.add_arg(value)
        elif isinstance(value, int):
            fits = -(2**31) <= value < 2**31
            builder.add_arg(value if fits or not float32 else float(value),
                            "i" if fits else "f" if float32 else "h")  # fmt: skip
        elif float32 and isinstance(value, float):
            builder.add_arg(value, "f")
        elif isinstance(value, float):
            exact32 = math.isfinite(value) and _FLOAT32.unpack(_FLOAT32.pack(value))[0] == value
            builder.add_arg(value, "f" if exact32 or not math.isfinite(value) else "d")
        else:
            builder.add_arg(json.dumps(value, default=_jsonable, separators=(",", ":")))


def _jsonable(value: object) -> object:
    return value.hex() if isinstance(value, bytes) else repr(value)


def build_message(
    address: str, args: Sequence[Any] = (), types: str | None = None, float32: bool = False
) -> bytes:
    """One OSC message (python-osc's builder). Floats go as float32 when that is exact, else
    as float64; ints as int32 or int64; anything nested as a JSON string. *types* forces the
    type tag of the leading arguments. With *float32*, only the types every OSC 1.0 app reads
    (Pd vanilla's ``oscparse`` reads no others): floats and int64s as float32, true, false and
    nil as the int32s 1, 0 and 0."""
    builder = OscMessageBuilder(address)
    forced = types or ""
    if float32:
        forced = forced.replace("d", "f").replace("h", "f")
    for tag, value in zip(forced, args, strict=False):
        builder.add_arg(float(value) if tag == "f" else value, tag)
    _typed_args(builder, args[len(forced) :], float32)
    return builder.build().dgram


def _payload_args(payload: Value) -> list[Any]:
    if isinstance(payload, list | tuple):
        return list(payload)
    if isinstance(payload, dict):
        return [json.dumps(payload, default=_jsonable, separators=(",", ":"))]
    return [payload]


def _plain_args(params: Sequence[Any]) -> list[Value]:
    out: list[Value] = []
    for value in params:
        if value is None or isinstance(value, bool | int | float | str | bytes):
            out.append(value)
        else:
            raise _BadInput("bad arguments", f"argument {value!r} has a type the bridge does "
                            "not carry (int, float, string, blob, true, false, nil)")  # fmt: skip
    return out


def _percentiles_ms(values: Iterable[float]) -> dict[str, float] | None:
    ordered = sorted(values)
    if not ordered:
        return None
    picks = {"p50": int(0.5 * len(ordered)), "p99": int(0.99 * len(ordered)), "max": -1}
    return {name: round(ordered[min(i, len(ordered) - 1)] * 1000, 3) for name, i in picks.items()}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


class OscBridgeCore:
    """The OSC bridge of one node (sans-IO). *reply_to*, if given, receives every answer,
    delivery and scheduled message (for apps that cannot receive on the port they send from);
    otherwise each app is answered at the address it sends from."""

    def __init__(self, limits: OscLimits | None = None, reply_to: Address | None = None) -> None:
        self.limits = limits or OscLimits()
        self.reply_to = reply_to
        self._clients: dict[Address, _Client] = {}
        self._queue: list[_Scheduled] = []
        self._seq = itertools.count()
        self._received = 0
        self._sent = 0
        self._errors: dict[str, int] = {}
        self._suppressed = 0
        self._tokens = self.limits.error_replies_per_second
        self._tokens_at = -math.inf
        self._scheduled_sent = 0
        self._late = 0
        self._lateness: collections.deque[float] = collections.deque(maxlen=1000)
        self._delivered = 0
        self._conductor: str | None = None
        self._tempo_push: float | None = None

    # -- input from apps ----------------------------------------------------------------------

    def handle_datagram(self, host: BridgeHost, src: Address, data: bytes) -> list[Outgoing]:
        """One datagram from a local app at *src*."""
        self._received += 1
        out: list[Outgoing] = []
        dest = self.reply_to or src
        try:
            if len(data) > self.limits.max_datagram:
                raise _BadInput("too large", f"datagram of {len(data)} bytes is over the "
                                f"{self.limits.max_datagram}-byte limit")  # fmt: skip
            if OscBundle.dgram_is_bundle(data):
                self._bundle(host, dest, data, out)
            else:
                address, params = self._parse_message(data)
                self._command(host, dest, address, params, out)
        except _BadInput as exc:
            self._error(host, dest, exc, out)
        return self._count(out)

    def _parse_message(self, data: bytes) -> tuple[str, list[Any]]:
        try:
            _, index = osc_types.get_string(data, 0)
            if data[index:]:
                tags, _ = osc_types.get_string(data, index)
                unknown = set(tags[1:]) - _SUPPORTED_TAGS
                if tags.startswith(",") and unknown:
                    raise _BadInput("bad arguments", f"unsupported OSC type tag {min(unknown)!r}")
            message = OscMessage(data)
            return message.address, list(message.params)
        except _BadInput:
            raise
        except Exception as exc:  # python-osc raises several kinds on garbage
            raise _BadInput("malformed", f"not an OSC message: {exc}") from None

    def _bundle(self, host: BridgeHost, dest: Address, data: bytes, out: list[Outgoing]) -> None:
        try:
            bundle = OscBundle(data)
        except Exception as exc:
            raise _BadInput("malformed", f"not an OSC bundle: {exc}") from None
        messages: list[tuple[float | None, OscMessage]] = []
        self._flatten(bundle, None, messages)
        now = host.now()
        for due, message in messages:
            if due is None or due <= now:
                item = _Scheduled(now, 0, dest, message.address, tuple(message.params))
                self._fire(host, item, out)
            else:
                self._check_due(due, now)
                self._enqueue(dest, due, message.address, tuple(message.params))

    def _flatten(
        self, bundle: OscBundle, outer: float | None, into: list[tuple[float | None, OscMessage]]
    ) -> None:
        (timetag,) = struct.unpack(">Q", bundle.dgram[8:16])
        due = outer if timetag == IMMEDIATELY else timetag_seconds(timetag)
        if timetag >= _WALL_CLOCK_TIMETAG * 2**32:
            raise _BadInput("bad arguments", "the bundle's timetag is a wall-clock (NTP) time; "
                            "stagemesh reads timetags as federation time")  # fmt: skip
        for content in bundle:
            if isinstance(content, OscBundle):
                self._flatten(content, due, into)
            else:
                into.append((due, content))

    def _command(self, host: BridgeHost, dest: Address, address: str, params: list[Any],
                 out: list[Outgoing]) -> None:  # fmt: skip
        handler = _COMMANDS.get(address)
        if handler is None:
            raise _BadInput("unknown address", f"unknown address {address[:80]!r} (the bridge "
                            f"answers {', '.join(sorted(_COMMANDS))})")  # fmt: skip
        handler(self, host, dest, params, out)

    # -- commands -----------------------------------------------------------------------------

    def _time(
        self, host: BridgeHost, dest: Address, params: list[Any], out: list[Outgoing]
    ) -> None:
        t = host.now()
        bound = host.error_bound()
        whole = math.floor(t)
        args = [t, -1.0 if bound is None else bound, whole, t - whole]
        out.append(Outgoing(dest, build_message(PREFIX + "time", args, "ddif",
                                                self._float32(dest))))  # fmt: skip

    def _subscribe(self, host: BridgeHost, dest: Address, params: list[Any],
                   out: list[Outgoing]) -> None:  # fmt: skip
        topic = self._topic(params, "subscribe")
        client = self._client(dest)
        if topic not in client.subscriptions:
            if len(client.subscriptions) >= self.limits.max_subscriptions:
                raise _BadInput("limit", f"{self.limits.max_subscriptions} subscriptions "
                                "already; unsubscribe first")  # fmt: skip
            client.subscriptions.add(topic)
        out.append(Outgoing(dest, build_message(PREFIX + "subscribed", [topic])))

    def _unsubscribe(self, host: BridgeHost, dest: Address, params: list[Any],
                     out: list[Outgoing]) -> None:  # fmt: skip
        client = self._clients.get(dest)
        if not params:
            if client is not None:
                client.subscriptions.clear()
                client.members = client.conductor = client.tempo = False
                self._forget_if_idle(dest)
            out.append(Outgoing(dest, build_message(PREFIX + "unsubscribed", [])))
            return
        topic = self._topic(params, "unsubscribe")
        if client is not None:
            client.subscriptions.discard(topic)
            self._forget_if_idle(dest)
        out.append(Outgoing(dest, build_message(PREFIX + "unsubscribed", [topic])))

    def _publish(self, host: BridgeHost, dest: Address, params: list[Any],
                 out: list[Outgoing]) -> None:  # fmt: skip
        if not params:
            raise _BadInput("bad arguments", "usage: /stagemesh/publish <topic> <args...>")
        topic = self._topic(params[:1], "publish")
        payload = _plain_args(params[1:])
        try:
            host.publish(topic, payload)
        except ValueError as exc:
            raise _BadInput("limit", str(exc)) from None

    def _schedule(self, host: BridgeHost, dest: Address, params: list[Any],
                  out: list[Outgoing]) -> None:  # fmt: skip
        usage = "usage: /stagemesh/schedule <federation time> <address> <args...>"
        first = _number(params[0]) if params else None
        if first is None:
            raise _BadInput("bad arguments", usage)
        rest = params[1:]
        second = _number(rest[0]) if rest else None
        if second is not None:
            # <whole seconds> <fraction>: exact for apps with only float32 (the whole seconds
            # as an int32, or as a float32, exact up to 2^24 s, what Pd's oscformat sends).
            first += second
            rest = rest[1:]
        if not rest or not isinstance(rest[0], str) or not rest[0].startswith("/"):
            raise _BadInput("bad arguments", usage)
        address = rest[0]
        if len(address) > 2 * self.limits.max_topic:
            raise _BadInput("bad arguments", "the address to schedule is too long")
        now = host.now()
        self._check_due(first, now)
        params_out = tuple(_plain_args(rest[1:]))
        if first <= now:
            self._late += 1
            self._fire(host, _Scheduled(first, 0, dest, address, params_out), out)
        else:
            self._enqueue(dest, first, address, params_out)

    def _float32_cmd(self, host: BridgeHost, dest: Address, params: list[Any],
                     out: list[Outgoing]) -> None:  # fmt: skip
        if len(params) > 1 or (params and _number(params[0]) not in (0.0, 1.0)):
            raise _BadInput("bad arguments", "usage: /stagemesh/float32 [1|0]")
        on = not params or _number(params[0]) == 1.0
        if on:
            self._client(dest).float32 = True
        elif (client := self._clients.get(dest)) is not None:
            client.float32 = False
            self._forget_if_idle(dest)
        out.append(Outgoing(dest, build_message(PREFIX + "float32", [int(on)], "i")))

    def _float32(self, dest: Address) -> bool:
        client = self._clients.get(dest)
        return client is not None and client.float32

    def _members(self, host: BridgeHost, dest: Address, params: list[Any],
                 out: list[Outgoing]) -> None:  # fmt: skip
        self._client(dest).members = True
        members = host.members()
        out.append(Outgoing(dest, build_message(PREFIX + "members", [len(members)], "i")))
        for path, state in members[: self.limits.max_members_listed]:
            out.append(Outgoing(dest, build_message(PREFIX + "member", [path, state])))

    def _conductor_cmd(self, host: BridgeHost, dest: Address, params: list[Any],
                       out: list[Outgoing]) -> None:  # fmt: skip
        self._client(dest).conductor = True
        self._conductor = host.conductor()
        out.append(Outgoing(dest, build_message(PREFIX + "conductor", [self._conductor or ""])))

    def _tempo_cmd(self, host: BridgeHost, dest: Address, params: list[Any],
                   out: list[Outgoing]) -> None:  # fmt: skip
        self._client(dest).tempo = True
        out.append(Outgoing(dest, self._tempo_message(host, self._float32(dest))))

    def _tempo_set(self, host: BridgeHost, dest: Address, params: list[Any],
                   out: list[Outgoing], restart: bool = False) -> None:  # fmt: skip
        name = "start" if restart else "set"
        usage = f"usage: /stagemesh/tempo/{name} <bpm> [<meter> [<federation time>]]"
        numbers = [_number(p) for p in params]
        if not 1 <= len(params) <= 3 or any(n is None for n in numbers):
            raise _BadInput("bad arguments", usage)
        meter = params[1] if len(params) > 1 else None
        if meter is not None and (float(meter) != int(meter)):
            raise _BadInput("bad arguments", "the meter is a whole number of beats")
        at = numbers[2] if len(params) > 2 else None
        try:
            host.set_tempo(float(params[0]), None if meter is None else int(meter), at, restart)
        except (NotConductor, InvalidTempo) as exc:
            raise _BadInput("refused", str(exc)) from None

    def _tempo_start(self, host: BridgeHost, dest: Address, params: list[Any],
                     out: list[Outgoing]) -> None:  # fmt: skip
        self._tempo_set(host, dest, params, out, restart=True)

    # -- input from the node ------------------------------------------------------------------

    def handle_publication(self, publication: Publication) -> list[Outgoing]:
        """A publication from any node: delivered to the apps subscribed to its topic."""
        out: list[Outgoing] = []
        targets = [(a, c.float32) for a, c in self._clients.items()
                   if publication.topic in c.subscriptions]  # fmt: skip
        if targets:
            args = [publication.topic, publication.origin_path or "",
                    *_payload_args(publication.payload)]  # fmt: skip
            data = {f32: build_message(PREFIX + "msg", args, float32=f32)
                    for f32 in {f32 for _, f32 in targets}}  # fmt: skip
            out = [Outgoing(dest, data[f32]) for dest, f32 in targets]
            self._delivered += len(out)
        return self._count(out)

    def handle_member(self, path: str, state: str) -> list[Outgoing]:
        """A member changed state: pushed to the apps watching members."""
        data = build_message(PREFIX + "member", [path, state])
        return self._count([Outgoing(a, data) for a, c in self._clients.items() if c.members])

    def handle_conductor(self, path: str | None) -> list[Outgoing]:
        """The conductor may have changed: pushed to the apps watching it if it did."""
        if path == self._conductor:
            return []
        self._conductor = path
        data = build_message(PREFIX + "conductor", [path or ""])
        return self._count([Outgoing(a, data) for a, c in self._clients.items() if c.conductor])

    def handle_tempo(self, host: BridgeHost) -> list[Outgoing]:
        """The tempo changed: pushed to the apps watching it (again when a scheduled change
        takes effect)."""
        tempo = host.tempo()
        self._tempo_push = None if tempo is None else tempo.next_change(host.now())
        data = {f32: self._tempo_message(host, f32) for f32 in (False, True)}
        return self._count([Outgoing(a, data[c.float32]) for a, c in self._clients.items()
                            if c.tempo])  # fmt: skip

    def _tempo_message(self, host: BridgeHost, float32: bool) -> bytes:
        tempo = host.tempo()
        if tempo is None:
            return build_message(PREFIX + "tempo", [])
        pos = tempo.at(host.now())
        return build_message(PREFIX + "tempo", [pos.bpm, pos.meter, pos.time, pos.beat, pos.bar,
                                                pos.beat_in_bar], "diddid", float32)  # fmt: skip

    # -- time ---------------------------------------------------------------------------------

    def next_due(self) -> float | None:
        """The federation time of the next scheduled message (or tempo push), if any."""
        due = self._queue[0].due if self._queue else None
        if self._tempo_push is not None:
            due = self._tempo_push if due is None else min(due, self._tempo_push)
        return due

    def handle_timer(self, host: BridgeHost, early: float = 0.0) -> list[Outgoing]:
        """Send what is due at federation time ``host.now()`` (or within *early* seconds)."""
        t = host.now()
        now = t + early
        out: list[Outgoing] = []
        while self._queue and self._queue[0].due <= now:
            item = heapq.heappop(self._queue)
            self._lateness.append(t - item.due)
            client = self._clients.get(item.client)
            if client is not None:
                client.scheduled -= 1
            self._fire(host, item, out)
            self._forget_if_idle(item.client)
        self._count(out)
        if self._tempo_push is not None and self._tempo_push <= now:
            out.extend(self.handle_tempo(host))  # counted there
        return out

    def _fire(self, host: BridgeHost, item: _Scheduled, out: list[Outgoing]) -> None:
        self._scheduled_sent += 1
        if item.address.startswith(PREFIX):
            try:
                self._command(host, item.client, item.address, list(item.params), out)
            except _BadInput as exc:
                self._error(host, item.client, exc, out)
            return
        try:
            data = build_message(item.address, item.params, float32=self._float32(item.client))
            out.append(Outgoing(item.client, data))
        except Exception as exc:  # an address python-osc cannot write
            self._error(host, item.client, _BadInput("bad arguments", str(exc)), out)

    def _check_due(self, due: float, now: float) -> None:
        if not math.isfinite(due):
            raise _BadInput("bad arguments", "the federation time must be finite")
        if due - now > self.limits.max_ahead:
            raise _BadInput("limit", f"{due:.3f} is more than {self.limits.max_ahead:g} s "
                            f"ahead of federation time {now:.3f}")  # fmt: skip

    def _enqueue(self, dest: Address, due: float, address: str, params: tuple[Any, ...]) -> None:
        limits = self.limits
        if len(self._queue) >= limits.max_scheduled:
            raise _BadInput("limit", f"{limits.max_scheduled} messages are scheduled already")
        client = self._client(dest)
        if client.scheduled >= limits.max_scheduled_per_client:
            raise _BadInput("limit", f"{limits.max_scheduled_per_client} messages of this app "
                            "are scheduled already")  # fmt: skip
        _plain_args(params)
        client.scheduled += 1
        heapq.heappush(self._queue, _Scheduled(due, next(self._seq), dest, address, params))

    # -- bookkeeping --------------------------------------------------------------------------

    def _topic(self, params: list[Any], what: str) -> str:
        if len(params) != 1 or not isinstance(params[0], str) or not params[0]:
            raise _BadInput("bad arguments", f"usage: /stagemesh/{what} <topic>")
        topic = params[0]
        if len(topic) > self.limits.max_topic:
            raise _BadInput("bad arguments", f"a topic has at most {self.limits.max_topic} "
                            "characters")  # fmt: skip
        return topic

    def _client(self, dest: Address) -> _Client:
        client = self._clients.get(dest)
        if client is None:
            if len(self._clients) >= self.limits.max_clients:
                raise _BadInput("limit", f"{self.limits.max_clients} apps use this bridge "
                                "already")  # fmt: skip
            client = self._clients[dest] = _Client()
        return client

    def _forget_if_idle(self, dest: Address) -> None:
        c = self._clients.get(dest)
        if c is not None and not (c.subscriptions or c.members or c.conductor or c.tempo
                                  or c.scheduled or c.float32):  # fmt: skip
            del self._clients[dest]

    def _error(self, host: BridgeHost, dest: Address, exc: _BadInput, out: list[Outgoing]) -> None:
        self._errors[exc.kind] = self._errors.get(exc.kind, 0) + 1
        now = host.now()
        rate = self.limits.error_replies_per_second
        self._tokens = min(rate, self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        if self._tokens < 1.0:
            self._suppressed += 1
            return
        self._tokens -= 1.0
        out.append(Outgoing(dest, build_message(PREFIX + "error", [exc.reason[:400]])))

    def _count(self, out: list[Outgoing]) -> list[Outgoing]:
        self._sent += len(out)
        return out

    def statistics(self) -> OscStatistics:
        """The bridge's counters."""
        return OscStatistics(
            received=self._received,
            sent=self._sent,
            errors=dict(self._errors),
            error_replies_suppressed=self._suppressed,
            clients=len(self._clients),
            subscriptions=sum(len(c.subscriptions) for c in self._clients.values()),
            scheduled=len(self._queue),
            scheduled_sent=self._scheduled_sent,
            late_on_arrival=self._late,
            publications_delivered=self._delivered,
            send_lateness_ms=_percentiles_ms(self._lateness),
        )


_COMMANDS = {
    PREFIX + "time": OscBridgeCore._time,
    PREFIX + "subscribe": OscBridgeCore._subscribe,
    PREFIX + "unsubscribe": OscBridgeCore._unsubscribe,
    PREFIX + "publish": OscBridgeCore._publish,
    PREFIX + "schedule": OscBridgeCore._schedule,
    PREFIX + "members": OscBridgeCore._members,
    PREFIX + "conductor": OscBridgeCore._conductor_cmd,
    PREFIX + "float32": OscBridgeCore._float32_cmd,
    PREFIX + "tempo": OscBridgeCore._tempo_cmd,
    PREFIX + "tempo/set": OscBridgeCore._tempo_set,
    PREFIX + "tempo/start": OscBridgeCore._tempo_start,
}
