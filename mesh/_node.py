"""The live node: trio drives a :class:`~mesh._nodecore.NodeCore` over real sockets.

::

    async with mesh.open_node(mesh.NodeConfig(orchestra="cmu", name="rbd")) as node:
        print(node.path, [m.path for m in node.members()])
        async with node.subscribe("tempo") as publications:
            node.publish("tempo", {"bpm": 120})
            print(await publications.receive())

Request errors::

    RequestError
    ├── NoSuchMember       no live member has that path
    ├── PeerUnreachable    the TCP connection failed
    ├── RequestTimeout     no reply in time
    └── RemoteError        the peer's handler failed (``error_type``, message)
"""

from __future__ import annotations

import contextlib
import getpass
import ipaddress
import logging
import math
import random
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import trio

from mesh._cli import UsageError
from mesh._clock import ClockSnapshot, SkewedClock
from mesh._discovery import (
    DEFAULT_BEACON_PORT,
    Discovery,
    DiscoveryConfig,
    PeerHint,
    serve_discovery,
)
from mesh._election import ClaimAnswer, PostChanged, SteppedDown
from mesh._errors import MeshError
from mesh._extensions import Extension
from mesh._inbound import Binding, binding
from mesh._interfaces import choose_interfaces, local_addresses
from mesh._keys import KeyEntry, keyring_at, read_entries
from mesh._lineage import EpochSeal, Handover
from mesh._membership import (
    MemberEvent,
    MemberView,
    OpenStream,
    PathConflict,
    SendDatagram,
    path_winner,
)
from mesh._names import check_name
from mesh._nodecore import ClockStepped, ExternalRequest, NodeCore, NodeEvent, Publication
from mesh._ports import DEFAULT_GOSSIP_PORT
from mesh._profiles import get_profile
from mesh._state import default_runtime_dir, default_state_dir, locked_identity, status_file
from mesh._transport import Transport, open_transport
from mesh._wire import (
    Address,
    ClockReply,
    ClockRequest,
    Envelope,
    InvalidMessage,
    Keyring,
    MemberRecord,
    Message,
    PushPull,
    Reply,
    Request,
    Value,
    WireCodec,
    check_value,
    is_ip_literal,
)

__all__ = [
    "DEFAULT_GOSSIP_PORT",
    "NoSuchMember",
    "Node",
    "NodeConfig",
    "PathHeld",
    "PeerUnreachable",
    "RemoteError",
    "RequestError",
    "RequestHandler",
    "RequestTimeout",
    "default_name",
    "default_orchestra",
    "open_node",
]

logger = logging.getLogger(__name__)

_WARNED_OPEN: set[str] = set()
"""The open (keyless) federations this process has already warned about."""
KEY_FILE_POLL = 1.0
"""Seconds between two looks at the key file (``NodeConfig.key_file``)."""
RequestHandler = Callable[[str | None, Value], Awaitable[Value]]
"""An async function answering a request: ``(sender path or None, payload) -> payload``."""


class RequestError(MeshError):
    """Base class of the errors :meth:`Node.request` raises."""


class NoSuchMember(RequestError, LookupError):
    """Raised when no live member has the requested path."""


class PeerUnreachable(RequestError):
    """Raised when the TCP connection to the member failed."""


class RequestTimeout(RequestError):
    """Raised when the member did not answer within the timeout."""


class RemoteError(RequestError):
    """Raised when the member's handler failed; ``error_type`` names its exception class."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message


class PathHeld(MeshError):
    """No longer raised: another live node announcing this node's path does not stop it (the
    conflict is settled by the protocol, logged, counted and shown in the status; see
    :meth:`Node.path_conflict`). Kept so that code catching it still imports."""


def _sanitize(text: str, fallback: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:64]
    return cleaned or fallback


def default_orchestra() -> str:
    """This host's short name, made a valid name."""
    return _sanitize(socket.gethostname().split(".")[0], "orchestra")


def default_name() -> str:
    """The user's login name, made a valid name."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "node"
    return _sanitize(user, "node")


def _check_names(instance: Any, attribute: attrs.Attribute[str], value: str) -> None:
    check_name(value, attribute.name)


@attrs.frozen
class NodeConfig:
    """Everything a node is started with (the node's flags of ``stagemesh node`` map onto this
    one to one; an extension's flags onto its own typed config, see :mod:`mesh._plugins`)."""

    federation: str = attrs.field(default="default", validator=_check_names)
    orchestra: str = attrs.field(factory=default_orchestra, validator=_check_names)
    name: str = attrs.field(factory=default_name, validator=_check_names)
    bind: str = "0.0.0.0"
    port: int = DEFAULT_GOSSIP_PORT
    """Gossip port (UDP and TCP); 0 = any free port. The default moves to the next free port
    if it is taken, an explicit port does not."""
    interfaces: tuple[str, ...] = ()
    supernode: bool = False
    conductor: bool = False
    seeds: tuple[Address, ...] = ()
    """Static peers; a host may be a name, looked up once at start (in a worker thread, with a
    time limit), never later."""
    registry: str | None = None
    """Not read by the node: the registry bridge (an extension) has its own URL. ``stagemesh
    node`` leaves it ``None``."""
    keyring: Keyring | None = None
    key_file: Path | None = None
    """The file *keyring* was read from (``--key-file``): the node reads it again whenever it
    changes and switches keys when a new one's time to sign comes, so the federation key is
    rotated without a restart (``stagemesh keygen --add`` / ``--retire``)."""
    mdns: bool = True
    broadcast: bool = True
    beacon_port: int = DEFAULT_BEACON_PORT
    status: Address | None = ("127.0.0.1", 0)
    """Where the HTTP status API listens; ``None`` for none."""
    profile: str = "lan"
    clock_skew: float = 0.0
    clock_drift: float = 0.0
    state_dir: Path | None = None
    runtime_dir: Path | None = None
    extensions: tuple[Extension, ...] = ()
    port_is_default: bool = True

    def __attrs_post_init__(self) -> None:
        get_profile(self.profile)
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is not in 0..65535")
        try:
            bind = ipaddress.ip_address(self.bind)
        except ValueError:
            bind = None
        if bind is None or bind.version != 4 or str(bind) != self.bind:
            raise ValueError(f"bind address {self.bind!r} is not an IPv4 address")


def _reader(topic: str | None) -> str:
    """How the log names a reader: a subscriber to *topic*, or an events reader."""
    return "events reader" if topic is None else f"subscriber to {topic!r}"


class Node:
    """A running node; get one from :func:`open_node`."""

    def __init__(
        self,
        config: NodeConfig,
        node_id: str,
        incarnation: int,
        transport: Transport,
        nursery: trio.Nursery,
        save_incarnation: Callable[[int], None],
    ) -> None:
        self.config = config
        self.transport = transport
        self._nursery = nursery
        self._save_incarnation = save_incarnation
        self._clock = SkewedClock(config.clock_skew, config.clock_drift, time.monotonic())
        self.started_at = time.time()
        record = MemberRecord(
            node_id,
            config.name,
            config.orchestra,
            transport.address,
            incarnation,
            self._base_meta(),
        )
        self.core = NodeCore(
            record,
            get_profile(config.profile),
            now=self.local_now(),
            rng=random.Random(),
            supernode=config.supernode,
            conductor=config.conductor,
            joined_at=self.started_at,
            arbiter=next((a for e in config.extensions if (a := e.arbiter()) is not None), None),
            epoch_seal=None
            if config.keyring is None
            else EpochSeal(config.federation, config.keyring),
            wan_profile=next(
                (get_profile(p) for e in config.extensions if (p := e.site_profile()) is not None),
                None,
            ),
        )
        # No claims before discovery runs (then _serve_discovery lets the election settle):
        # until then this node cannot learn of any peer or lease.
        self.core.hold_claims()
        transport.incarnation = incarnation
        self._handlers: dict[str, RequestHandler] = {}
        self._conflicts_told: set[str] = set()
        self._persist_failed = False
        self._subscribers: dict[str, list[trio.MemorySendChannel[Publication]]] = {}
        self._event_sinks: list[trio.MemorySendChannel[NodeEvent]] = []
        self._dropped: dict[trio.MemorySendChannel[Any], int] = {}  # by a full channel
        self._timer_scope = trio.CancelScope()
        self._external_ready = trio.Event()
        self._request_ids = 0
        self.status_url: str | None = None
        self.key_file_error: str | None = None
        self.discovery_stats: dict[str, Callable[[], Any]] = {}
        for ext in config.extensions:
            for kind, handler in ext.handlers().items():
                self.handle(kind, handler)

    # -- identity and views -------------------------------------------------------------------

    @property
    def id(self) -> str:
        """This node's id (128 bits as hex, kept in its state directory)."""
        return self.core.node_id

    @property
    def path(self) -> str:
        """``/<orchestra>/<name>``."""
        return f"/{self.config.orchestra}/{self.config.name}"

    @property
    def address(self) -> Address:
        """The gossip address other nodes reach this one at."""
        return self.transport.address

    def members(self) -> list[MemberView]:
        """Every member this node knows (itself first), tombstones included."""
        return self.core.membership.members()

    def member(self, path: str) -> MemberView | None:
        """The live member with *path*, if any (of several live nodes announcing one path, the
        one that keeps it: see :func:`~mesh._membership.path_winner`)."""
        return path_winner(v for v in self.members() if v.path == path and v.is_live)

    def path_conflict(self) -> dict[str, Any] | None:
        """``None``, or, while other live nodes announce this node's path: who they are and
        which node keeps the path (``holder``; ``this_node_holds`` whether it is this one)."""
        claims = [v for v in self.members() if v.path == self.path and v.is_live]
        if len(claims) < 2:
            return None
        winner = path_winner(claims)
        assert winner is not None
        return {
            "claimed_by": [
                {"id": v.node_id, "address": _fmt(v.address)}
                for v in claims
                if v.node_id != self.id
            ],
            "holder": winner.node_id,
            "this_node_holds": winner.node_id == self.id,
        }

    def local_now(self) -> float:
        """This node's local clock (monotonic, plus injected skew and drift)."""
        return self._clock(time.monotonic())

    def now(self) -> float:
        """Federation time: seconds since the federation's epoch, the same on every node
        (never decreases; see :attr:`clock` for its error bound)."""
        return self.core.federation_time(self.local_now())

    @property
    def clock(self) -> ClockSnapshot:
        """The federation clock's state: offset, error bound, reference, synced."""
        return self.core.clock_snapshot(self.local_now())

    @property
    def conductor(self) -> str | None:
        """The path of the federation's conductor in this node's view, or ``None``."""
        return self.core.path_of(self.core.conductor())

    def supernode(self, orchestra: str) -> str | None:
        """The path of *orchestra*'s supernode in this node's view, or ``None``."""
        return self.core.path_of(self.core.supernode(orchestra))

    # -- application API ----------------------------------------------------------------------

    def publish(self, topic: str, payload: Value) -> None:
        """Send a small message (at most ~800 bytes encoded) on *topic* to every node, this
        one included; each node delivers it once."""
        self.core.publish(self.local_now(), topic, payload)
        self._pump()

    @contextlib.asynccontextmanager
    async def subscribe(
        self, topic: str, buffer: int = 256
    ) -> AsyncIterator[trio.MemoryReceiveChannel[Publication]]:
        """Receive the publications on *topic* while the context is open. A subscriber that
        falls *buffer* messages behind loses the newest ones (logged)."""
        send, receive = trio.open_memory_channel[Publication](buffer)
        self._subscribers.setdefault(topic, []).append(send)
        try:
            yield receive
        finally:
            self._subscribers[topic].remove(send)
            self._dropped.pop(send, None)
            send.close()

    @contextlib.asynccontextmanager
    async def events(
        self, buffer: int = 1024
    ) -> AsyncIterator[trio.MemoryReceiveChannel[NodeEvent]]:
        """Receive this node's events while the context is open: every
        :data:`~mesh._events.NodeEvent` (members, path conflicts, publications, post changes,
        step-downs, time-source changes). A reader that falls *buffer* events behind loses the
        newest ones (logged)."""
        send, receive = trio.open_memory_channel[NodeEvent](buffer)
        self._event_sinks.append(send)
        try:
            yield receive
        finally:
            self._event_sinks.remove(send)
            self._dropped.pop(send, None)
            send.close()

    def handle(self, kind: str, handler: RequestHandler) -> None:
        """Answer requests of *kind* with *handler* (one handler per kind)."""
        if kind in self._handlers:
            raise ValueError(f"a handler for {kind!r} is already registered")
        self._handlers[kind] = handler

    async def request(
        self,
        path: str,
        kind: str,
        payload: Value = None,
        timeout: float = 5.0,  # noqa: ASYNC109 (a default bound; an outer scope still applies)
    ) -> Value:
        """Send a request to the live member at *path* over TCP and return its answer.

        Raises :class:`NoSuchMember`, :class:`PeerUnreachable`, :class:`RequestTimeout` or
        :class:`RemoteError`.
        """
        check_value(payload, "payload")
        target = self.member(path)
        if target is None:
            raise NoSuchMember(f"no live member has path {path}")
        self._request_ids += 1
        body = Request(self._request_ids, path, kind, payload)
        to = self._binding(target.node_id, target.incarnation)
        try:
            env = await self.transport.exchange(target.address, body, to, timeout)
        except trio.TooSlowError:
            raise RequestTimeout(f"{path} did not answer {kind!r} within {timeout} s") from None
        except (OSError, InvalidMessage) as exc:
            raise PeerUnreachable(f"cannot reach {path} at {_fmt(target.address)}: {exc}") from None
        reply = env.body
        if not isinstance(reply, Reply) or reply.request_id != body.request_id:
            raise PeerUnreachable(f"{path} answered with something other than a reply")
        if not reply.ok:
            raise RemoteError(reply.error_type, reply.error)
        return reply.payload

    def add_peer(self, address: Address, source: str = "registry") -> None:
        """Propose a peer address (as discovery does): the node joins through it unless it
        already knows a live member there. Used by the registry bridge. The host must be an IP
        address (a name is refused and counted as ``hint address``: nothing is resolved)."""
        self._on_hint(PeerHint(address, source))

    def use_external_clock(self, source: str | None) -> None:
        """Align federation time with a clock outside the mesh named *source* (the registry
        bridge uses this): the node that is its site's time reference follows it while it
        answers in the federation's lineage (see :meth:`NodeCore.use_external_clock`). The
        caller carries the requests (:meth:`external_requests`) and brings back the answers
        (:meth:`external_clock_reply`). ``None`` undoes it."""
        self.core.use_external_clock(self.local_now(), source)
        self._pump()

    async def wait_external(self) -> None:
        """Wait until the node has requests for the outside world (:meth:`external_requests`)."""
        if not self.core.has_external_requests():
            await self._external_ready.wait()
        self._external_ready = trio.Event()

    def external_requests(self) -> list[ExternalRequest]:
        """Conductor claims for the arbiter, clock requests and epoch offers for the external
        clock, oldest first (see :meth:`NodeCore.take_external_requests`)."""
        return self.core.take_external_requests()

    def stamp_external(self, request: ClockRequest) -> ClockRequest:
        """*request* with its send time set to now: call it right before sending it."""
        stamped = self.core.stamp(self.local_now(), request)
        assert isinstance(stamped, ClockRequest)
        return stamped

    def external_clock_reply(
        self,
        reply: ClockReply,
        source: str,
        handovers: Sequence[Handover] = (),
        generation: str | None = None,
    ) -> bool:
        """Hand in the external clock's answer: its own clock readings as ``t2``/``t3``, the
        *handovers* it keeps (epochs on that clock with their lineage and tag; none when it
        has no time) and its *generation* of the federation (tags cover it); call it as soon
        as the answer arrives (its arrival time is the fourth timestamp). Returns whether the
        sample was used. With a federation key, the node takes the oldest handover whose tag a
        key of its own verifies; each other one is ignored, counted (status
        ``clock.external.refused``) and the first logged."""
        now = self.local_now()
        refused = self.core.external_refused
        used = self.core.handle_external_clock_reply(now, reply, source, handovers, generation)
        if self.core.external_refused > refused:
            log = logger.warning if refused == 0 else logger.debug
            log(
                "%s: ignored a federation time the %s keeps (of %d handover(s)): its tag does"
                " not verify with this federation's key at the registry's current generation"
                " (handed over by someone without the key, or before a reset)",
                self.path,
                source,
                len(handovers),
            )
        self._pump()
        return used

    def claim_answer(self, answer: ClaimAnswer) -> None:
        """Hand in the arbiter's answer to a conductor claim."""
        self.core.handle_claim_answer(self.local_now(), answer)
        self._pump()

    def direct_peers(self, node_ids: Iterable[str]) -> None:
        """Say which members of other sites this node reaches directly for certain (the
        registry bridge does, from direct acks): it takes its site's time from them, and from
        the registry otherwise (see :meth:`NodeCore.set_direct`)."""
        self.core.set_direct(self.local_now(), node_ids)
        self._pump()

    def external_available(self, available: bool) -> None:
        """Say whether the outside world (the registry) answers: while it does not, the local
        rule elects the conductor and the site's time runs on its own."""
        self.core.set_external_available(self.local_now(), available)
        self._pump()

    def update_meta(self) -> None:
        """Re-read the extensions' metadata and announce it (a new incarnation)."""
        self.core.update_meta(self.local_now(), self._base_meta())
        self._pump()

    def status(self) -> dict[str, Any]:
        """The status document served at ``/api/status`` (stable field names)."""
        core = self.core
        conductor = core.conductor()
        supernodes = core.supernodes()
        holders = set(supernodes.values())
        members = [
            {
                "id": view.node_id,
                "path": view.path,
                "address": _fmt(view.address),
                "state": view.status,
                "incarnation": view.incarnation,
                "supernode": view.node_id in holders,
                "conductor": view.node_id == conductor,
                "candidate": {
                    "supernode": view.meta.get("s") is True,
                    "conductor": view.meta.get("c") is True,
                },
                "roles": _roles_summary(view.meta.get("r")),
            }
            for view in self.members()
        ]
        clock = self.clock
        lineage = core.lineage_status(self.local_now())
        doc: dict[str, Any] = {
            "node": {
                "id": self.id,
                "name": self.config.name,
                "orchestra": self.config.orchestra,
                "federation": self.config.federation,
                "path": self.path,
                "address": _fmt(self.address),
                "path_conflict": self.path_conflict(),
            },
            "members": members,
            "supernodes": {o: core.path_of(h) for o, h in sorted(supernodes.items())},
            "conductor": core.path_of(conductor),
            "standby": core.election.standby_for_conductor(),
            "clock": {
                "federation_time": clock.federation_time,
                "offset": clock.offset,
                "error_bound": clock.error_bound if math.isfinite(clock.error_bound) else None,
                "lan_error_bound": clock.lan_error_bound
                if math.isfinite(clock.lan_error_bound)
                else None,
                "reference": None if clock.is_reference else core.path_of(clock.reference),
                "is_reference": clock.is_reference,
                "synced": clock.synced,
                "drift_ppm": clock.drift_ppm,
                "rtt": clock.rtt,
                **lineage,
            },
            "registry": None,
            "keys": self._keys_status(),
            "statistics": {
                "membership": attrs.asdict(self.core.membership.statistics()),
                "election": attrs.asdict(self.core.election.statistics()),
                "transport": attrs.asdict(self.transport.statistics()),
                "discovery": {
                    k: _plain(attrs.asdict(f())) for k, f in self.discovery_stats.items()
                },
            },
        }
        for ext in self.config.extensions:
            doc[ext.name] = ext.status()
        return doc

    def _keys_status(self) -> dict[str, Any] | None:
        keyring = self.transport.codec.keyring
        if keyring is None:
            return None
        return {
            "signing": keyring.primary,
            "accepted": sorted(keyring.keys),
            "retired": sorted(keyring.retired),
            "file": None if self.config.key_file is None else str(self.config.key_file),
            "error": self.key_file_error,
        }

    # -- the driver ---------------------------------------------------------------------------

    def _base_meta(self) -> dict[str, Value]:
        meta: dict[str, Value] = {}
        for ext in self.config.extensions:
            meta.update(ext.meta())
        return meta

    def _pump(self) -> None:
        """Carry out what the core asked for after an input, and re-arm the timer."""
        core = self.core
        incarnation = core.incarnation
        if incarnation != self.transport.incarnation:
            # Persisted before anything goes out at it, so a restart starts above it.
            self._persist_incarnation(incarnation)
            self.transport.incarnation = incarnation
        for out in core.take_outputs():
            if isinstance(out, SendDatagram):
                body = core.stamp(self.local_now(), out.body)
                self.transport.send_nowait(
                    out.dest, body, self._binding(out.to, out.to_incarnation)
                )
            elif isinstance(out, OpenStream):
                self._nursery.start_soon(self._push_pull, out)
        for event in core.take_events():
            self._dispatch(event)
        if core.has_external_requests():
            self._external_ready.set()
        deadline = core.next_deadline()
        self._timer_scope.deadline = min(self._timer_scope.deadline, self._trio_time(deadline))

    def _persist_incarnation(self, incarnation: int) -> None:
        try:
            self._save_incarnation(incarnation)
        except OSError as exc:
            # A node must not die of a full disk; a restart may then reuse an incarnation,
            # which only makes peers refuse its first messages until they learn the new one.
            if not self._persist_failed:
                logger.error("cannot save incarnation %d: %s", incarnation, exc)
            self._persist_failed = True

    def _binding(self, to: str | None, incarnation: int = -1) -> Binding:
        """The binding of a message to *to*: its id and the newest incarnation this node
        knows of it (from the core, its record, or what it sent us); ``None`` for nobody."""
        if to is None:
            return None
        view = self.core.membership.member(to)
        seen = -1 if view is None else view.incarnation
        return binding(to, incarnation, seen, self.transport.heard_incarnation(to))

    def _trio_time(self, local_deadline: float) -> float:
        if local_deadline == float("inf"):
            return float("inf")
        true_deadline = self._clock.to_true(local_deadline)
        return trio.current_time() + (true_deadline - time.monotonic())

    def _dispatch(self, event: NodeEvent) -> None:
        if isinstance(event, PathConflict):
            self._path_conflict(event.holder)
        elif isinstance(event, MemberEvent):
            logger.info("%s %s at %s", event.member.path, event.kind, _fmt(event.member.address))
        elif isinstance(event, PostChanged):
            logger.info(
                "%s: %s -> %s (term %d)",
                event.post,
                self.core.path_of(event.old_holder),
                self.core.path_of(event.new_holder),
                event.term,
            )
        elif isinstance(event, ClockStepped):
            # Joining a federation steps every node once, at its start; later, a step is news.
            logger.log(
                logging.WARNING if time.time() - self.started_at > 10.0 else logging.INFO,
                "federation time stepped forward by %.6f s: lineage %s met the older %s",
                event.size,
                event.old_lineage,
                event.new_lineage,
            )
        elif isinstance(event, SteppedDown):
            logger.log(
                logging.WARNING if event.reason == "conflict" else logging.INFO,
                "stepped down as %s (%s); now held by %s",
                event.post,
                event.reason,
                self.core.path_of(event.successor),
            )
        if isinstance(event, Publication):
            for sink in self._subscribers.get(event.topic, ()):
                self._deliver(sink, event, event.topic, "publication")
        for events_sink in self._event_sinks:
            self._deliver(events_sink, event, None, type(event).__name__)

    def _deliver(
        self, sink: trio.MemorySendChannel[Any], event: NodeEvent, topic: str | None, what: str
    ) -> None:
        """Put *event* on a reader's channel without waiting (a subscriber's to *topic*, or an
        events reader's if ``None``). A full channel drops it: the first drop is a warning, the
        later ones are counted until the reader keeps up again, then the count is logged (a
        reader that stopped reading must not flood the log)."""
        try:
            sink.send_nowait(event)
        except trio.WouldBlock:
            dropped = self._dropped.get(sink, 0)
            if not dropped:
                logger.warning("%s is behind; %s dropped", _reader(topic), what)
            self._dropped[sink] = dropped + 1
        else:
            dropped = self._dropped.pop(sink, 0)
            if dropped:
                logger.info("%s kept up again after %d dropped", _reader(topic), dropped)

    def _path_conflict(self, holder: MemberView) -> None:
        """Another live node announces this node's path: say so (once per node), never stop.
        Both stay members; requests for the path go to the node that keeps it."""
        if holder.node_id in self._conflicts_told:
            return
        self._conflicts_told.add(holder.node_id)
        conflict = self.path_conflict()
        if conflict is None:
            return
        if conflict["this_node_holds"]:
            logger.warning(
                "node %s at %s also announces this node's path %s; this node started first "
                "and keeps the path",
                holder.node_id,
                _fmt(holder.address),
                self.path,
            )
        else:
            logger.warning(
                "path %s is also announced by node %s at %s, which started first and keeps "
                "it: requests for %s go to that node, not to this one (give one of them "
                "another --name)",
                self.path,
                holder.node_id,
                _fmt(holder.address),
                self.path,
            )

    async def _push_pull(self, out: OpenStream) -> None:
        reply: PushPull | None = None
        try:
            to = self._binding(out.to, out.to_incarnation)
            env = await self.transport.exchange(out.dest, out.body, to)
            if isinstance(env.body, PushPull):
                reply = env.body
        except Exception as exc:  # any failure is just "no reply" to the core
            logger.debug("push-pull with %s failed: %s", _fmt(out.dest), exc)
        self.core.handle_stream_reply(self.local_now(), out.exchange, reply)
        self._pump()

    def _on_datagram(self, src: Address, env: Envelope) -> None:
        self.core.handle_message(self.local_now(), src, env.sender, env.body)
        self._pump()

    async def _on_stream(self, src: Address, env: Envelope) -> Message | None:
        body = env.body
        if isinstance(body, PushPull):
            reply = self.core.handle_stream(self.local_now(), src, env.sender, body)
            self._pump()
            return reply
        if isinstance(body, Request):
            return await self._answer(env.sender, body)
        self.transport.reject("unexpected stream")
        return None

    async def _answer(self, sender: str, request: Request) -> Reply:
        if request.target != self.path:
            return Reply(request.request_id, False, None, "NoSuchMember", f"this is {self.path}")
        handler = self._handlers.get(request.kind)
        if handler is None:
            known = ", ".join(sorted(self._handlers)) or "none"
            return Reply(
                request.request_id,
                False,
                None,
                "UnknownRequest",
                f"{self.path} has no handler for {request.kind!r} (it handles: {known})",
            )
        view = self.core.membership.member(sender)
        try:
            result = await handler(view.path if view else None, request.payload)
            check_value(result, "reply")
        except Exception as exc:
            return Reply(request.request_id, False, None, type(exc).__name__, str(exc))
        return Reply(request.request_id, True, result)

    def _on_hint(self, hint: PeerHint) -> None:
        host, port = hint.address
        if not is_ip_literal(host) or not 1 <= port <= 65535:
            self.transport.reject("hint address")
            logger.debug("%s hint %r is not an IP address and port; ignored", hint.source, host)
            return
        self.core.add_candidate(self.local_now(), hint.address)
        self._pump()

    async def _serve_timers(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            with trio.CancelScope(deadline=self._trio_time(self.core.next_deadline())) as scope:
                self._timer_scope = scope
                await trio.sleep_forever()
            now = self.local_now()
            due = self.core.next_deadline()
            if due - now < 1e-4:
                # Woken for this deadline: it is due, even if the clock reads a hair early
                # (otherwise the loop would spin until the clock catches up).
                now = max(now, due)
            self.core.handle_timer(now)
            self._pump()

    async def _serve_key_file(self, path: Path) -> None:
        """Read the key file again whenever it changes, and use the keyring it makes at each
        moment (a new key signs when its time comes): the same codec signs and checks gossip,
        frames and beacons. A file that cannot be read or parsed is reported (log, status)
        and the keys in use are kept."""
        seen: tuple[int, int, int] | None = None
        entries: list[KeyEntry] | None = None
        while True:
            try:
                st = await trio.Path(path).stat()
                stamp: tuple[int, int, int] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
            except OSError:
                stamp = None
            if stamp != seen:
                seen = stamp
                try:
                    entries = await trio.to_thread.run_sync(read_entries, path)
                    self.key_file_error = None
                except UsageError as exc:
                    self.key_file_error = str(exc)
                    logger.warning("key file not used (keeping the keys in use): %s", exc)
            if entries is not None:
                keyring = keyring_at(entries, time.time())
                if keyring != self.transport.codec.keyring:
                    self.transport.codec.keyring = keyring
                    self.core.set_epoch_seal(EpochSeal(self.config.federation, keyring))
                    logger.info(
                        "federation keys: signing with key %d, accepting %s%s",
                        keyring.primary,
                        ", ".join(map(str, sorted(keyring.keys))),
                        f", refusing retired {', '.join(map(str, sorted(keyring.retired)))}"
                        if keyring.retired
                        else "",
                    )
            await trio.sleep(KEY_FILE_POLL)

    async def _serve_discovery(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run :func:`serve_discovery` (the same code its tests run) with this node's hints
        going to the membership core; seeds are hinted again every second while this node
        knows nobody (they may start after it)."""
        config = self.config
        dconfig = DiscoveryConfig(
            federation=config.federation,
            node_id=self.id,
            name=config.name,
            orchestra=config.orchestra,
            gossip_port=self.address[1],
            bind=config.bind,
            interfaces=config.interfaces,
            beacon_port=config.beacon_port,
            keyring=config.keyring,
            incarnation=self.core.incarnation,
            mdns=config.mdns,
            broadcast=config.broadcast,
            seeds=config.seeds,
            seed_interval=1.0,
        )
        async with trio.open_nursery() as nursery:
            discovery: Discovery = await nursery.start(
                partial(serve_discovery, seeds_needed=self._alone, codec=self.transport.codec),
                dconfig,
                self._on_hint,
            )
            for name in ("beacons", "mdns", "seeds"):
                source = getattr(discovery, name)
                if source is not None:
                    self.discovery_stats[name] = source.statistics
            self.core.discovery_started(self.local_now())
            self._pump()
            task_status.started()

    def _alone(self) -> bool:
        return self.core.membership.live_count() <= 1

    async def leave(self) -> None:
        """Leave gracefully: peers see ``left`` at once instead of after a timeout."""
        self.core.leave(self.local_now())
        self._pump()
        with trio.move_on_after(0.5):
            await self.transport.flush()


def _roles_summary(value: object) -> dict[str, dict[str, int]]:
    """A member's roles summary (metadata key ``r``, set by station extensions) in the status
    API's form, ``role -> {configured, running, failed}``. It came over the network: the full
    and the compact (``role -> [configured, running, failed]``) forms are read, anything else
    is dropped."""
    out: dict[str, dict[str, int]] = {}
    if not isinstance(value, dict):
        return out
    keys = ("configured", "running", "failed")
    for role, counts in value.items():
        if isinstance(counts, list) and len(counts) == 3:
            counts = dict(zip(keys, counts, strict=True))
        if isinstance(counts, dict) and all(isinstance(counts.get(k), int) for k in keys):
            out[str(role)] = {k: int(counts[k]) for k in keys}
    return out


def _plain(value: Any) -> Any:
    """*value* with every mapping made a dict (JSON-able)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _fmt(address: Address) -> str:
    return f"{address[0]}:{address[1]}"


def _advertise_host(config: NodeConfig) -> str:
    if config.bind != "0.0.0.0":
        return config.bind
    chosen = choose_interfaces(config.bind, config.interfaces, local_addresses())
    for entry in chosen.addresses:
        if not entry.loopback:
            return entry.address
    return "127.0.0.1"


@contextlib.asynccontextmanager
async def open_node(config: NodeConfig) -> AsyncIterator[Node]:
    """Start a node, yield it once it listens, and leave gracefully on exit.

    Raises :class:`~mesh._state.PathInUse` if this host already runs the same path and
    ``OSError`` if the port is taken. Another host announcing the same path does not stop the
    node (see :meth:`Node.path_conflict`).
    """
    state_dir = config.state_dir or default_state_dir()
    runtime_dir = config.runtime_dir or default_runtime_dir()
    if config.keyring is None and config.federation not in _WARNED_OPEN:
        _WARNED_OPEN.add(config.federation)  # once per process: a program may run many nodes
        logger.warning(
            "federation %r is OPEN: no key is set, any host on the network can join or forge "
            "messages (use `stagemesh keygen` and --key-file)",
            config.federation,
        )
    with locked_identity(state_dir, config.federation, config.orchestra, config.name) as ident:
        profile = get_profile(config.profile)
        async with (
            open_transport(
                bind=config.bind,
                port=config.port,
                advertise_host=_advertise_host(config),
                federation=config.federation,
                node_id=ident.node_id,
                codec=WireCodec(config.keyring),
                stream_timeout=profile.stream_timeout,
                next_free=config.port_is_default,
                incarnation=ident.incarnation,
            ) as transport,
            trio.open_nursery() as nursery,
        ):
            node = Node(
                config,
                ident.node_id,
                ident.incarnation,
                transport,
                nursery,
                ident.save_incarnation,
            )
            await nursery.start(transport.serve_datagrams, node._on_datagram)
            await nursery.start(transport.serve_streams, node._on_stream)
            await nursery.start(node._serve_timers)
            if config.status is not None:
                from mesh._status import serve_status

                node.status_url = await nursery.start(serve_status, node, config.status)
            await nursery.start(node._serve_discovery)
            if config.key_file is not None and config.keyring is not None:
                nursery.start_soon(node._serve_key_file, config.key_file)
            for ext in config.extensions:
                await nursery.start(ext.run, node)
            with status_file(
                runtime_dir,
                {"node_id": node.id, "path": node.path, "url": node.status_url},
            ):
                try:
                    yield node
                finally:
                    with trio.CancelScope(shield=True):
                        await node.leave()
                    nursery.cancel_scope.cancel()
