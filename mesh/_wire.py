"""The wire format: typed messages, their msgpack encoding, signing and the replay guard.

A datagram (UDP, at most :data:`MAX_DATAGRAM` bytes) is::

    magic "SM" (2) | wire version (1) | key id (1) | binding (1 + 2 + n) | msgpack body | tag (16)

Key id 0 means unsigned (no tag); any other id names a key of the federation's
:class:`Keyring`, and the HMAC-SHA256 tag (truncated to 16 bytes) covers the receiver's full
node id (16 bytes, not sent) followed by everything before the tag. The tag is checked
**before** the body is decoded.

The **binding** names the receiver, so a datagram captured on its way to one node is refused by
every other node, and by the same node after it restarted: its first byte ``n`` is the length of
the receiver's incarnation; ``n = 0`` means *unbound* (first contact, when the sender does not
know who answers at the address: only a TCP join push-pull and discovery beacons may be
unbound); ``n`` in 1..7 is followed by the first 2 bytes of the receiver's node id (so a
misdirected datagram is told apart from a forged one without computing a tag) and the
receiver's incarnation as the sender knows it (``n`` bytes, big-endian). A receiver accepts a
bound message only if that incarnation lies between the incarnation it started with and its
current one (:mod:`mesh._inbound`): a node's incarnation rises at every start and is persisted
before anything is sent at it, so what was bound to a previous run of the node never matches.

A frame (TCP) is a short prefix, then one message in the datagram format (at most
:data:`MAX_FRAME` bytes)::

    magic "SF" (2) | wire version (1) | key id (1) | length (4) | tag (16, if keyed) | message

The prefix's own tag (over the 8 bytes before it) is checked, and the length bounded, before a
single byte of the message is read: a stranger cannot make a node buffer anything, and a key
holder at most :data:`MAX_FRAME` bytes per connection it is allowed to hold.

The body is a msgpack array ``[type, federation, sender, incarnation, seq, sent_at, *fields]``;
nested updates are arrays ``[kind, *fields]``. Type and kind codes are append-only: they are part
of the protocol. Every integer is bounded at decode (counters by :data:`MAX_COUNTER`), and every
address is an IP literal (never a name: nothing that arrives is ever resolved).

Exception tree::

    InvalidMessage (ValueError)          not a valid message; ``reason`` says why
    └── MessageTooLarge                  an encoder was asked to exceed the size limit

Everything here is pure: no sockets, no clocks (the replay guard is told ``now``).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, TypeAlias, Union

import attrs
import msgpack

from mesh._errors import MeshError
from mesh._names import is_valid_name

__all__ = [
    "FRAME_MAGIC",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_COUNTER",
    "MAX_DATAGRAM",
    "MAX_FRAME",
    "MAX_PUSH_PULL_CURSOR",
    "NODE_ID_LENGTH",
    "TAG_SIZE",
    "WIRE_VERSION",
    "Ack",
    "Address",
    "Beacon",
    "ClockReply",
    "ClockRequest",
    "Dead",
    "Envelope",
    "Gossip",
    "InvalidMessage",
    "Keyring",
    "Lease",
    "MemberRecord",
    "MemberStatus",
    "Message",
    "MessageTooLarge",
    "Nack",
    "Ping",
    "PingReq",
    "Publish",
    "PushPull",
    "ReplayGuard",
    "Reply",
    "Request",
    "Suspect",
    "Update",
    "Value",
    "WireCodec",
    "check_value",
    "is_ip_literal",
    "update_size",
]

MAGIC = b"SM"
FRAME_MAGIC = b"SF"
WIRE_VERSION = 2
MAX_DATAGRAM = 1200
MAX_FRAME = 1024 * 1024
MAX_PUSH_PULL_CURSOR = 1 << 24
"""The bound of a push-pull's page cursor (a position in a member table: 16 million)."""
TAG_SIZE = 16
HEADER_SIZE = 5
"""The fixed part of the header: magic, version, key id and the binding's length byte."""
NODE_ID_LENGTH = 32  # 128 bits as lowercase hex
MAX_COUNTER = 2**53 - 1
"""The bound of every counter on the wire (incarnations, terms, sequence numbers, probe,
request and publication numbers): exact in a double, so JSON readers see it unchanged, and out
of reach (a node raising its incarnation a million times a second needs 285 years)."""

Address: TypeAlias = tuple[str, int]
"""A transport address: (host, port)."""

Value: TypeAlias = Union[bool, int, float, str, bytes, "list[Value]", "dict[str, Value]", None]
"""What an application payload or member metadata may hold: plain msgpack data."""

_MAX_VALUE_DEPTH = 8
_ID_PREFIX = 2  # bytes of the receiver's id sent in a binding
_MAX_BIND = 7  # bytes of the receiver's incarnation: MAX_COUNTER fits in 7


class InvalidMessage(MeshError, ValueError):
    """Raised when bytes are not a valid message for this node: foreign or corrupt bytes, a
    bad signature, an unknown newer wire version, a malformed body, or a replay.

    ``reason`` is a short, stable text suitable for counting (``"bad tag"``, ``"replayed"``...).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class MessageTooLarge(InvalidMessage):
    """Raised by an encoder when a message would exceed its size limit (never truncated)."""


# ---------------------------------------------------------------------------------------------
# Validation helpers for decoded data


def _fail(detail: str) -> InvalidMessage:
    return InvalidMessage("malformed", detail)


def _int(v: object, what: str, lo: int = 0, hi: int = MAX_COUNTER) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise _fail(f"{what} must be an integer in [{lo}, {hi}]")
    return v


def _float(v: object, what: str, lo: float = -math.inf) -> float:
    if type(v) is int and abs(v) <= 2**63:
        v = float(v)
    if type(v) is not float or not math.isfinite(v) or v < lo:
        raise _fail(f"{what} must be a finite number" + (f" >= {lo}" if lo > -math.inf else ""))
    return v


def _bool(v: object, what: str) -> bool:
    if type(v) is not bool:
        raise _fail(f"{what} must be a boolean")
    return v


def _str(v: object, what: str, max_len: int = 1024) -> str:
    if type(v) is not str or len(v) > max_len:
        raise _fail(f"{what} must be a string of at most {max_len} characters")
    return v


def _name(v: object, what: str) -> str:
    if not is_valid_name(v):
        raise _fail(f"{what} is not a valid name")
    assert isinstance(v, str)
    return v


_HEX = frozenset("0123456789abcdef")


def _node_id(v: object, what: str) -> str:
    if type(v) is not str or len(v) != NODE_ID_LENGTH or not _HEX.issuperset(v):
        raise _fail(f"{what} must be a {NODE_ID_LENGTH}-character lowercase hex node id")
    return v


def is_ip_literal(host: object) -> bool:
    """Whether *host* is an IPv4 or IPv6 address in its canonical text form that a datagram
    may be sent to: not a name (nothing from the network is ever resolved), no scope id, not
    unspecified (``0.0.0.0``, ``::``), multicast or the limited broadcast address."""
    if type(host) is not str or not 2 <= len(host) <= 45 or "%" in host:
        return False
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if str(ip) != host or ip.is_unspecified or ip.is_multicast:
        return False
    return not (ip.version == 4 and host == "255.255.255.255")


def _address(v: object, what: str) -> Address:
    if type(v) is not list or len(v) != 2:
        raise _fail(f"{what} must be [host, port]")
    if not is_ip_literal(v[0]):
        raise _fail(f"{what} host must be an IP address (never a name)")
    return (v[0], _int(v[1], f"{what} port", 1, 65535))


def _list(v: object, what: str) -> list[Any]:
    if type(v) is not list:
        raise _fail(f"{what} must be an array")
    return v


def check_value(v: object, what: str = "value", depth: int = 0) -> Value:
    """Return *v* if it is plain msgpack data (see :data:`Value`), else raise InvalidMessage."""
    if v is None or type(v) in (bool, int, str, bytes):
        if type(v) is int and not -(2**63) <= v <= 2**64 - 1:
            raise _fail(f"{what} is out of range")
        return v  # type: ignore[return-value]
    if type(v) is float:
        return v
    if depth >= _MAX_VALUE_DEPTH:
        raise _fail(f"{what} is nested too deeply")
    if type(v) is list:
        return [check_value(x, what, depth + 1) for x in v]
    if type(v) is dict:
        out: dict[str, Value] = {}
        for k, x in v.items():
            if type(k) is not str:
                raise _fail(f"{what} keys must be strings")
            out[k] = check_value(x, what, depth + 1)
        return out
    raise _fail(f"{what} holds a {type(v).__name__}")


def _meta(v: object, what: str) -> dict[str, Value]:
    if type(v) is not dict:
        raise _fail(f"{what} must be a map")
    checked = check_value(v, what)
    assert isinstance(checked, dict)
    return checked


# ---------------------------------------------------------------------------------------------
# Gossip updates: the items piggybacked on probes and carried by push-pull.


class MemberStatus:
    """The four states a member can be in (wire codes)."""

    ALIVE: ClassVar[int] = 0
    SUSPECT: ClassVar[int] = 1
    DEAD: ClassVar[int] = 2
    LEFT: ClassVar[int] = 3
    NAMES: ClassVar[tuple[str, ...]] = ("alive", "suspect", "dead", "left")


@attrs.frozen
class MemberRecord:
    """Everything known of one member at one incarnation; as an update it means "alive".

    In a :class:`PushPull` the ``status`` says what the sender believes; as a piggybacked update
    a record is always an alive announcement (``status`` ALIVE).
    """

    KIND: ClassVar[int] = 1
    node_id: str
    name: str
    orchestra: str
    address: Address
    incarnation: int
    meta: dict[str, Value] = attrs.field(factory=dict)
    status: int = MemberStatus.ALIVE

    @property
    def path(self) -> str:
        """The member's path, ``/<orchestra>/<name>``."""
        return f"/{self.orchestra}/{self.name}"

    def to_wire(self) -> list[Any]:
        return [
            self.KIND,
            self.node_id,
            self.name,
            self.orchestra,
            list(self.address),
            self.incarnation,
            self.meta,
            self.status,
        ]

    @classmethod
    def from_wire(cls, f: list[Any]) -> MemberRecord:
        if len(f) != 8:
            raise _fail("member record needs 8 fields")
        return cls(
            _node_id(f[1], "member id"),
            _name(f[2], "member name"),
            _name(f[3], "member orchestra"),
            _address(f[4], "member address"),
            _int(f[5], "member incarnation"),
            _meta(f[6], "member meta"),
            _int(f[7], "member status", 0, 3),
        )


@attrs.frozen
class Suspect:
    """``reporter`` suspects ``node_id`` at ``incarnation`` is dead."""

    KIND: ClassVar[int] = 2
    node_id: str
    incarnation: int
    reporter: str

    def to_wire(self) -> list[Any]:
        return [self.KIND, self.node_id, self.incarnation, self.reporter]

    @classmethod
    def from_wire(cls, f: list[Any]) -> Suspect:
        if len(f) != 4:
            raise _fail("suspect needs 4 fields")
        return cls(
            _node_id(f[1], "suspect id"),
            _int(f[2], "suspect incarnation"),
            _node_id(f[3], "suspect reporter"),
        )


@attrs.frozen
class Dead:
    """``node_id`` at ``incarnation`` is dead (declared by ``reporter``) or, when ``left``, has
    left gracefully (then ``reporter`` is the node itself)."""

    KIND: ClassVar[int] = 3
    node_id: str
    incarnation: int
    reporter: str
    left: bool = False

    def to_wire(self) -> list[Any]:
        return [self.KIND, self.node_id, self.incarnation, self.reporter, self.left]

    @classmethod
    def from_wire(cls, f: list[Any]) -> Dead:
        if len(f) != 5:
            raise _fail("dead needs 5 fields")
        return cls(
            _node_id(f[1], "dead id"),
            _int(f[2], "dead incarnation"),
            _node_id(f[3], "dead reporter"),
            _bool(f[4], "dead left"),
        )


@attrs.frozen
class Lease:
    """An elected post's lease record: who holds ``post`` in which ``term`` since when.

    ``post`` is ``"conductor"`` or ``"supernode:<orchestra>"``; ``tenure_start`` is federation
    time. Newer terms supersede older ones; conflicts are settled by the election core.
    """

    KIND: ClassVar[int] = 4
    post: str
    holder: str
    term: int
    tenure_start: float

    def to_wire(self) -> list[Any]:
        return [self.KIND, self.post, self.holder, self.term, self.tenure_start]

    @classmethod
    def from_wire(cls, f: list[Any]) -> Lease:
        if len(f) != 5:
            raise _fail("lease needs 5 fields")
        return cls(
            _str(f[1], "lease post", 80),
            _node_id(f[2], "lease holder"),
            _int(f[3], "lease term"),
            _float(f[4], "lease tenure start"),
        )


@attrs.frozen
class Publish:
    """An application message for every node: ``origin``'s ``number``-th publication."""

    KIND: ClassVar[int] = 5
    origin: str
    number: int
    topic: str
    payload: Value

    def to_wire(self) -> list[Any]:
        return [self.KIND, self.origin, self.number, self.topic, self.payload]

    @classmethod
    def from_wire(cls, f: list[Any]) -> Publish:
        if len(f) != 5:
            raise _fail("publish needs 5 fields")
        return cls(
            _node_id(f[1], "publish origin"),
            _int(f[2], "publish number"),
            _str(f[3], "publish topic", 128),
            check_value(f[4], "publish payload"),
        )


Update: TypeAlias = MemberRecord | Suspect | Dead | Lease | Publish
"""A gossip item: piggybacked on probes, carried in :class:`Gossip` datagrams."""

_UPDATE_KINDS: dict[int, Any] = {c.KIND: c for c in (MemberRecord, Suspect, Dead, Lease, Publish)}


def _updates(v: object, what: str = "updates") -> tuple[Update, ...]:
    out = []
    for item in _list(v, what):
        if type(item) is not list or not item:
            raise _fail(f"each of {what} must be a non-empty array")
        cls = _UPDATE_KINDS.get(item[0]) if type(item[0]) is int else None
        if cls is None:
            raise _fail(f"unknown update kind {item[0]!r}")
        out.append(cls.from_wire(item))
    return tuple(out)


def update_size(update: Update) -> int:
    """The encoded size of one update in bytes (what it costs inside a datagram)."""
    return len(msgpack.packb(update.to_wire()))


# ---------------------------------------------------------------------------------------------
# Messages: the body of one datagram or frame.


@attrs.frozen
class Ping:
    """Direct probe ``probe`` of ``target`` (by id, so a reused address is not mistaken)."""

    TYPE: ClassVar[int] = 1
    probe: int
    target: str
    updates: tuple[Update, ...] = ()

    def fields(self) -> list[Any]:
        return [self.probe, self.target, [u.to_wire() for u in self.updates]]

    @classmethod
    def from_fields(cls, f: list[Any]) -> Ping:
        if len(f) != 3:
            raise _fail("ping needs 3 fields")
        return cls(_int(f[0], "probe"), _node_id(f[1], "ping target"), _updates(f[2]))


@attrs.frozen
class PingReq:
    """Ask the receiver to probe ``target`` at ``target_address`` and report back;
    ``target_incarnation`` is the target's incarnation as the asker knows it (the helper's
    ping is bound to it, see the module docstring)."""

    TYPE: ClassVar[int] = 2
    probe: int
    target: str
    target_address: Address
    target_incarnation: int = 0
    updates: tuple[Update, ...] = ()

    def fields(self) -> list[Any]:
        return [
            self.probe,
            self.target,
            list(self.target_address),
            self.target_incarnation,
            [u.to_wire() for u in self.updates],
        ]

    @classmethod
    def from_fields(cls, f: list[Any]) -> PingReq:
        if len(f) != 5:
            raise _fail("ping-req needs 5 fields")
        return cls(
            _int(f[0], "probe"),
            _node_id(f[1], "ping-req target"),
            _address(f[2], "ping-req address"),
            _int(f[3], "ping-req incarnation"),
            _updates(f[4]),
        )


@attrs.frozen
class Ack:
    """Answer to :class:`Ping` ``probe``; ``target`` is the node that was probed."""

    TYPE: ClassVar[int] = 3
    probe: int
    target: str
    updates: tuple[Update, ...] = ()

    def fields(self) -> list[Any]:
        return [self.probe, self.target, [u.to_wire() for u in self.updates]]

    @classmethod
    def from_fields(cls, f: list[Any]) -> Ack:
        if len(f) != 3:
            raise _fail("ack needs 3 fields")
        return cls(_int(f[0], "probe"), _node_id(f[1], "ack target"), _updates(f[2]))


@attrs.frozen
class Nack:
    """An indirect prober's "I asked, but the target did not answer" (Lifeguard)."""

    TYPE: ClassVar[int] = 4
    probe: int
    target: str

    def fields(self) -> list[Any]:
        return [self.probe, self.target]

    @classmethod
    def from_fields(cls, f: list[Any]) -> Nack:
        if len(f) != 2:
            raise _fail("nack needs 2 fields")
        return cls(_int(f[0], "probe"), _node_id(f[1], "nack target"))


@attrs.frozen
class Gossip:
    """A datagram carrying only updates (the gossip layer, and split state)."""

    TYPE: ClassVar[int] = 5
    updates: tuple[Update, ...]

    def fields(self) -> list[Any]:
        return [[u.to_wire() for u in self.updates]]

    @classmethod
    def from_fields(cls, f: list[Any]) -> Gossip:
        if len(f) != 1:
            raise _fail("gossip needs 1 field")
        return cls(_updates(f[0]))


@attrs.frozen
class PushPull:
    """Full state exchange (TCP): every member record the sender knows, with its status,
    and the other replicated items (leases...). ``join`` marks the first exchange of a node;
    ``reply`` marks the answer.

    A state larger than one frame goes in **pages**: the sender's own record first, then as
    many of its other records as fit. ``cursor`` is where the pages go on: in a reply, the
    position in the sender's state (its records after its own) of the first record this page
    left out, 0 if it is the last page; in a request, the position the reply is to start at (0
    for a whole exchange). A node that gets a reply with a cursor asks for the next page in a
    new exchange, until the cursor is 0. A cursor of 0 is not encoded (the message is then the
    4-field push-pull of earlier versions).
    """

    TYPE: ClassVar[int] = 6
    members: tuple[MemberRecord, ...]
    extras: tuple[Update, ...] = ()
    join: bool = False
    reply: bool = False
    cursor: int = 0

    def fields(self) -> list[Any]:
        out = [
            [m.to_wire() for m in self.members],
            [u.to_wire() for u in self.extras],
            self.join,
            self.reply,
        ]
        if self.cursor:
            out.append(self.cursor)
        return out

    @classmethod
    def from_fields(cls, f: list[Any]) -> PushPull:
        if len(f) not in (4, 5):
            raise _fail("push-pull needs 4 or 5 fields")
        members = _updates(f[0], "push-pull members")
        if not all(type(m) is MemberRecord for m in members):
            raise _fail("push-pull members must be member records")
        return cls(
            members,  # type: ignore[arg-type]
            _updates(f[1], "push-pull extras"),
            _bool(f[2], "push-pull join"),
            _bool(f[3], "push-pull reply"),
            _int(f[4], "push-pull cursor", 1, MAX_PUSH_PULL_CURSOR) if len(f) == 5 else 0,
        )


@attrs.frozen
class ClockRequest:
    """First half of an NTP-style exchange: ``t1`` is the asker's local send time."""

    TYPE: ClassVar[int] = 7
    probe: int
    t1: float

    def fields(self) -> list[Any]:
        return [self.probe, self.t1]

    @classmethod
    def from_fields(cls, f: list[Any]) -> ClockRequest:
        if len(f) != 2:
            raise _fail("clock request needs 2 fields")
        return cls(_int(f[0], "probe"), _float(f[1], "t1"))


@attrs.frozen
class ClockReply:
    """Second half: ``t2``/``t3`` are the reference's federation time at receive and send;
    ``error_bound`` is the reference's own bound; ``synced`` whether it has a good estimate."""

    TYPE: ClassVar[int] = 8
    probe: int
    t1: float
    t2: float
    t3: float
    error_bound: float
    synced: bool

    def fields(self) -> list[Any]:
        return [self.probe, self.t1, self.t2, self.t3, self.error_bound, self.synced]

    @classmethod
    def from_fields(cls, f: list[Any]) -> ClockReply:
        if len(f) != 6:
            raise _fail("clock reply needs 6 fields")
        return cls(
            _int(f[0], "probe"),
            _float(f[1], "t1"),
            _float(f[2], "t2"),
            _float(f[3], "t3"),
            _float(f[4], "error bound", lo=0.0),
            _bool(f[5], "synced"),
        )


@attrs.frozen
class Request:
    """A request to the node at ``target`` (a path) of a given ``kind`` (TCP)."""

    TYPE: ClassVar[int] = 9
    request_id: int
    target: str
    kind: str
    payload: Value

    def fields(self) -> list[Any]:
        return [self.request_id, self.target, self.kind, self.payload]

    @classmethod
    def from_fields(cls, f: list[Any]) -> Request:
        if len(f) != 4:
            raise _fail("request needs 4 fields")
        return cls(
            _int(f[0], "request id"),
            _str(f[1], "request target", 200),
            _str(f[2], "request kind", 128),
            check_value(f[3], "request payload"),
        )


@attrs.frozen
class Reply:
    """The answer to :class:`Request` ``request_id``: a payload, or an error type and text."""

    TYPE: ClassVar[int] = 10
    request_id: int
    ok: bool
    payload: Value
    error_type: str = ""
    error: str = ""

    def fields(self) -> list[Any]:
        return [self.request_id, self.ok, self.payload, self.error_type, self.error]

    @classmethod
    def from_fields(cls, f: list[Any]) -> Reply:
        if len(f) != 5:
            raise _fail("reply needs 5 fields")
        return cls(
            _int(f[0], "request id"),
            _bool(f[1], "reply ok"),
            check_value(f[2], "reply payload"),
            _str(f[3], "reply error type", 128),
            _str(f[4], "reply error", 4096),
        )


@attrs.frozen
class Beacon:
    """A discovery beacon: "a node named ``name`` of ``orchestra`` gossips on ``port``"
    (the host is the datagram's source address)."""

    TYPE: ClassVar[int] = 11
    name: str
    orchestra: str
    port: int

    def fields(self) -> list[Any]:
        return [self.name, self.orchestra, self.port]

    @classmethod
    def from_fields(cls, f: list[Any]) -> Beacon:
        if len(f) != 3:
            raise _fail("beacon needs 3 fields")
        return cls(
            _name(f[0], "beacon name"),
            _name(f[1], "beacon orchestra"),
            _int(f[2], "beacon port", 1, 65535),
        )


Message: TypeAlias = (
    Ping
    | PingReq
    | Ack
    | Nack
    | Gossip
    | PushPull
    | ClockRequest
    | ClockReply
    | Request
    | Reply
    | Beacon
)
"""The body of one datagram or frame."""

_MESSAGE_TYPES: dict[int, Any] = {
    c.TYPE: c
    for c in (
        Ping,
        PingReq,
        Ack,
        Nack,
        Gossip,
        PushPull,
        ClockRequest,
        ClockReply,
        Request,
        Reply,
        Beacon,
    )
}


@attrs.frozen
class Envelope:
    """A message with the sender's identity and replay-protection fields.

    ``seq`` grows with every message the sender sends during one incarnation-lineage;
    ``sent_at`` is the sender's wall-clock time (checked only for signed messages). ``to`` is
    the receiver's node id and ``to_incarnation`` its incarnation as the sender knows it (the
    binding, see the module docstring); ``to`` is ``None`` for an unbound message (first
    contact). A decoded envelope has ``to`` set to the decoding node's id when it was bound.
    """

    federation: str
    sender: str
    incarnation: int
    seq: int
    sent_at: float
    body: Message
    to: str | None = None
    to_incarnation: int = 0


# ---------------------------------------------------------------------------------------------
# Keys and the codec


@attrs.frozen
class Keyring:
    """The federation's secret keys by id (1-255); ``primary`` signs, all of them verify.

    ``retired`` are ids of keys taken out of use (a rotation, :mod:`mesh._keys`): what they
    sign is refused as ``retired key`` rather than ``unknown key``, so the count says that
    someone still uses an old key.
    """

    keys: Mapping[int, bytes]
    primary: int
    retired: frozenset[int] = frozenset()

    def __attrs_post_init__(self) -> None:
        if self.primary not in self.keys:
            raise ValueError("the primary key id must be one of the keys")
        if self.retired & set(self.keys):
            raise ValueError("a retired key id cannot be one of the keys")
        for key_id, key in self.keys.items():
            if not 1 <= key_id <= 255:
                raise ValueError(f"key id {key_id} is not in 1..255")
            if len(key) < 16:
                raise ValueError(f"key {key_id} is shorter than 16 bytes")

    @classmethod
    def single(cls, key: bytes, key_id: int = 1) -> Keyring:
        """A keyring of one key."""
        return cls({key_id: key}, key_id)


def _tag(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()[:TAG_SIZE]


_FRAME_PREFIX = struct.Struct("!2sBBI")
_FRAME_CONTEXT = b"stagemesh frame"  # keeps a prefix tag from ever equalling a message tag


def _binding(to: str | None, incarnation: int) -> bytes:
    if to is None:
        return b"\x00"
    if not 0 <= incarnation <= MAX_COUNTER:
        raise InvalidMessage("malformed", f"receiver incarnation {incarnation} is out of range")
    size = max(1, (incarnation.bit_length() + 7) // 8)
    return bytes((size,)) + bytes.fromhex(to[: 2 * _ID_PREFIX]) + incarnation.to_bytes(size, "big")


def _check_version(version: int) -> None:
    if version != WIRE_VERSION:
        raise InvalidMessage(
            "unsupported version", f"wire version {version}, this node speaks {WIRE_VERSION}"
        )


class WireCodec:
    """Encodes and decodes envelopes for one federation key setting.

    Without a keyring messages are sent unsigned, and signed ones are refused (a node never
    mixes with a keyed federation it cannot verify); with one, unsigned messages are refused.
    """

    def __init__(self, keyring: Keyring | None = None) -> None:
        self.keyring = keyring

    @property
    def overhead(self) -> int:
        """Bytes an unbound datagram spends outside the msgpack body (a bound one spends 3
        to 9 more)."""
        return HEADER_SIZE + (TAG_SIZE if self.keyring else 0)

    @property
    def frame_prefix_size(self) -> int:
        """Bytes of a frame's prefix (read, and checked, before the message)."""
        return _FRAME_PREFIX.size + (TAG_SIZE if self.keyring else 0)

    def _seal(self, body: bytes, to: str | None, to_incarnation: int) -> bytes:
        binding = _binding(to, to_incarnation)
        if self.keyring is None:
            return MAGIC + bytes((WIRE_VERSION, 0)) + binding + body
        key_id = self.keyring.primary
        data = MAGIC + bytes((WIRE_VERSION, key_id)) + binding + body
        receiver = b"" if to is None else bytes.fromhex(to)
        return data + _tag(self.keyring.keys[key_id], receiver + data)

    @staticmethod
    def _body(env: Envelope) -> bytes:
        msg = env.body
        return msgpack.packb(
            [
                msg.TYPE,
                env.federation,
                env.sender,
                env.incarnation,
                env.seq,
                env.sent_at,
                *msg.fields(),
            ]
        )

    def encode(self, env: Envelope, limit: int = MAX_DATAGRAM) -> bytes:
        """Encode one envelope (bound to ``env.to`` if set); raise :class:`MessageTooLarge`
        if it exceeds *limit* bytes."""
        data = self._seal(self._body(env), env.to, env.to_incarnation)
        if len(data) > limit:
            raise MessageTooLarge(
                "too large", f"{type(env.body).__name__} is {len(data)} bytes, limit {limit}"
            )
        return data

    def encode_updates(
        self, env: Envelope, updates: Sequence[Update], limit: int = MAX_DATAGRAM
    ) -> list[bytes]:
        """Encode *updates* as as few :class:`Gossip` datagrams as fit *limit* each.

        *env* supplies the header fields (its body is ignored); each datagram takes the next
        sequence number from ``env.seq``. An update that alone cannot fit raises
        :class:`MessageTooLarge`.
        """
        # Measured with the highest seq this call may use: a larger int may encode longer.
        empty = attrs.evolve(env, seq=env.seq + len(updates), body=Gossip(()))
        base = len(self.encode(empty, limit)) + 4  # room for the array header to grow
        out: list[bytes] = []
        batch: list[Update] = []
        size = base
        seq = env.seq
        for update in updates:
            cost = update_size(update)
            if base + cost > limit:
                raise MessageTooLarge("too large", f"one {type(update).__name__} is {cost} bytes")
            if size + cost > limit:
                batch_env = attrs.evolve(env, seq=seq, body=Gossip(tuple(batch)))
                out.append(self.encode(batch_env, limit))
                seq += 1
                batch, size = [], base
            batch.append(update)
            size += cost
        if batch:
            out.append(self.encode(attrs.evolve(env, seq=seq, body=Gossip(tuple(batch))), limit))
        return out

    def decode(self, data: bytes, limit: int = MAX_DATAGRAM, me: str | None = None) -> Envelope:
        """Decode and verify one datagram received by node *me*; raise :class:`InvalidMessage`
        if it is not valid. A message bound to another node (or bound at all, when *me* is
        ``None``) is refused as ``misdirected``; the binding's incarnation is returned in the
        envelope for the caller to check (:mod:`mesh._inbound`)."""
        if len(data) > limit:
            raise InvalidMessage("too large", f"{len(data)} bytes, limit {limit}")
        if len(data) < 4 or data[:2] != MAGIC:
            raise InvalidMessage("not stagemesh", "bad magic")
        _check_version(data[2])
        if len(data) < HEADER_SIZE + 1:
            raise InvalidMessage("truncated", f"{len(data)} bytes")
        key_id, size = data[3], data[4]
        start = HEADER_SIZE
        receiver = b""
        to_incarnation = 0
        if size:
            start += _ID_PREFIX + size
            if size > _MAX_BIND or len(data) < start + 1:
                raise _fail("bad binding")
            if me is None or data[HEADER_SIZE : HEADER_SIZE + _ID_PREFIX] != bytes.fromhex(
                me[: 2 * _ID_PREFIX]
            ):
                raise InvalidMessage("misdirected", "bound to another node")
            receiver = bytes.fromhex(me)
            to_incarnation = int.from_bytes(data[HEADER_SIZE + _ID_PREFIX : start], "big")
        key = self._verifying_key(key_id)
        if key is None:
            body = data[start:]
        else:
            if len(data) < start + TAG_SIZE + 1:
                raise InvalidMessage("bad tag", "too short for a tag")
            signed, tag = data[:-TAG_SIZE], data[-TAG_SIZE:]
            if not hmac.compare_digest(_tag(key, receiver + signed), tag):
                raise InvalidMessage("bad tag", "signature does not match")
            body = signed[start:]
        env = self._decode_body(body)
        if to_incarnation > MAX_COUNTER:
            raise _fail("receiver incarnation out of range")
        if size:
            return attrs.evolve(env, to=me, to_incarnation=to_incarnation)
        return env

    def _verifying_key(self, key_id: int) -> bytes | None:
        """The key that checks a message signed with *key_id* (``None``: unsigned); refuse
        what this node cannot verify, or may not accept unsigned."""
        if key_id == 0:
            if self.keyring is not None:
                raise InvalidMessage("unsigned", "this federation requires a key")
            return None
        if self.keyring is None:
            raise InvalidMessage("signed", f"signed with key {key_id}; this node has no key")
        key = self.keyring.keys.get(key_id)
        if key is None:
            if key_id in self.keyring.retired:
                raise InvalidMessage("retired key", f"key id {key_id} was retired")
            raise InvalidMessage("unknown key", f"key id {key_id}")
        return key

    def encode_frame(self, env: Envelope, limit: int = MAX_FRAME) -> bytes:
        """Encode an envelope as a TCP frame: the (signed) prefix, then the message."""
        data = self.encode(env, limit)
        if self.keyring is None:
            return _FRAME_PREFIX.pack(FRAME_MAGIC, WIRE_VERSION, 0, len(data)) + data
        key_id = self.keyring.primary
        prefix = _FRAME_PREFIX.pack(FRAME_MAGIC, WIRE_VERSION, key_id, len(data))
        return prefix + _tag(self.keyring.keys[key_id], _FRAME_CONTEXT + prefix) + data

    def frame_length(self, prefix: bytes) -> int:
        """Check a frame's prefix (``frame_prefix_size`` bytes) and return the length of the
        message that follows; refuse a foreign, unsigned, forged or oversized prefix."""
        if len(prefix) != self.frame_prefix_size:
            raise InvalidMessage("truncated", f"frame prefix of {len(prefix)} bytes")
        magic, version, key_id, length = _FRAME_PREFIX.unpack(prefix[: _FRAME_PREFIX.size])
        if magic != FRAME_MAGIC:
            raise InvalidMessage("not stagemesh", "bad frame magic")
        _check_version(version)
        key = self._verifying_key(key_id)
        if key is not None:
            signed, tag = prefix[: _FRAME_PREFIX.size], prefix[_FRAME_PREFIX.size :]
            if not hmac.compare_digest(_tag(key, _FRAME_CONTEXT + signed), tag):
                raise InvalidMessage("bad tag", "frame prefix signature does not match")
        if length > MAX_FRAME:
            raise InvalidMessage("too large", f"frame of {length} bytes, limit {MAX_FRAME}")
        if length <= HEADER_SIZE:
            raise InvalidMessage("truncated", f"frame of {length} bytes")
        return int(length)

    def decode_frame(self, payload: bytes, me: str | None = None) -> Envelope:
        """Decode a frame's message (what follows its prefix), received by node *me*."""
        return self.decode(payload, MAX_FRAME, me)

    @staticmethod
    def _decode_body(body: bytes) -> Envelope:
        try:
            raw = msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True)
        except (ValueError, TypeError) as exc:  # every msgpack error is one of these
            raise InvalidMessage("undecodable", str(exc)[:200]) from None
        if type(raw) is not list or len(raw) < 6:
            raise _fail("body must be an array of at least 6 items")
        cls = _MESSAGE_TYPES.get(raw[0]) if type(raw[0]) is int else None
        if cls is None:
            raise InvalidMessage("unknown type", repr(raw[0])[:40])
        try:
            msg = cls.from_fields(raw[6:])
        except RecursionError:
            raise _fail("nested too deeply") from None
        return Envelope(
            _name(raw[1], "federation"),
            _node_id(raw[2], "sender"),
            _int(raw[3], "incarnation"),
            _int(raw[4], "seq"),
            _float(raw[5], "sent_at"),
            msg,
        )


# ---------------------------------------------------------------------------------------------
# Replay protection


class ReplayGuard:
    """Drops replayed and stale envelopes (sans-IO: the caller passes ``now``).

    Per sender it keeps the highest incarnation seen and a sliding window of sequence numbers
    (like IPsec's anti-replay window): a repeated ``seq``, one older than the window, or one from
    an older incarnation is refused. When ``max_age`` is set (signed federations), a message whose
    ``sent_at`` is further than that from ``now`` is refused too, so a receiver that restarted and
    lost its windows cannot be fed old captures.
    """

    WINDOW = 256

    def __init__(self, max_age: float | None = None, max_senders: int = 100_000) -> None:
        self.max_age = max_age
        self.max_senders = max_senders
        self._state: dict[str, tuple[int, int, int]] = {}  # sender -> (incarnation, top, bits)

    def check(self, env: Envelope, now: float) -> None:
        """Accept *env* (recording it), or raise :class:`InvalidMessage` (replayed, stale)."""
        if self.max_age is not None and abs(env.sent_at - now) > self.max_age:
            raise InvalidMessage("stale", f"sent {env.sent_at - now:+.0f} s from now")
        state = self._state.get(env.sender)
        if state is None or env.incarnation > state[0]:
            if state is None and len(self._state) >= self.max_senders:
                self._state.pop(next(iter(self._state)))
            self._state[env.sender] = (env.incarnation, env.seq, 1)
            return
        incarnation, top, bits = state
        if env.incarnation < incarnation:
            raise InvalidMessage("stale", "from an older incarnation")
        if env.seq > top:
            shift = env.seq - top
            bits = ((bits << shift) | 1) & ((1 << self.WINDOW) - 1) if shift < self.WINDOW else 1
            self._state[env.sender] = (incarnation, env.seq, bits)
            return
        offset = top - env.seq
        if offset >= self.WINDOW or bits >> offset & 1:
            raise InvalidMessage("replayed", f"seq {env.seq}")
        self._state[env.sender] = (incarnation, top, bits | (1 << offset))

    def forget(self, sender: str) -> None:
        """Drop what is known of *sender* (e.g. after its tombstone is reaped)."""
        self._state.pop(sender, None)

    def incarnation_of(self, sender: str) -> int:
        """The highest incarnation *sender* has sent with (-1 if nothing was accepted)."""
        state = self._state.get(sender)
        return -1 if state is None else state[0]
