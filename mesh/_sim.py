"""The deterministic simulator: a virtual clock and network driving the real protocol cores.

Every node is a real sans-IO core (:class:`~mesh._membership.Membership`, or anything with the
same driver-facing methods, see :class:`SimCore`). The network can lose, delay, jitter (and so
reorder), duplicate and partition datagrams; nodes can crash, restart, leave and stall. All
randomness comes from one seed, and every datagram is really encoded with the wire codec (so
sizes are true and the encoder's 1200-byte limit is exercised); the hash of everything delivered
is the run's ``trace_hash``: the same seed gives the same hash.

With :data:`INSTANT` links (no delay, no loss) and ``edge=True`` it is also the one way to run a
few cores back to back in a unit test, as a pair of h11 connections: every message is bound to
its receiver as the live node binds it, encoded with the given codec (signed if it has a key),
and passes the receiver's real :class:`~mesh._inbound.Inbound` checks before its core sees the
decoded body (a refusal is recorded in :attr:`Simulator.refused`). A test may call a core's
methods by hand, then :meth:`Simulator.flush` carries out what it produced; :meth:`cut`,
:meth:`block` and :meth:`isolate` lose the traffic of some pairs, ``on_send`` sees every
datagram a node sends.

Models: FoundationDB's simulation testing, TigerBeetle's VOPR.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import attrs

from mesh._clock import SkewedClock
from mesh._inbound import Inbound, binding
from mesh._membership import (
    Membership,
    OpenStream,
    SendDatagram,
    Snapshot,
)
from mesh._profiles import Profile
from mesh._simqueue import EventQueue
from mesh._wire import (
    MAX_DATAGRAM,
    Address,
    Envelope,
    InvalidMessage,
    MemberRecord,
    Message,
    PushPull,
    WireCodec,
)

__all__ = ["INSTANT", "LinkModel", "SimCore", "SimNode", "Simulator", "new_node_id"]

_UDP_IP_HEADERS = 28
_TCP_OVERHEAD = 40 + 4


class SimCore(Protocol):
    """What the simulator needs of a node's protocol core."""

    @property
    def node_id(self) -> str: ...

    @property
    def incarnation(self) -> int: ...

    def add_candidate(self, now: float, address: Address) -> None: ...

    def handle_message(self, now: float, src: Address, sender: str, body: Message) -> None: ...

    def handle_stream(self, now: float, src: Address, sender: str, body: PushPull) -> PushPull: ...

    def handle_stream_reply(self, now: float, exchange: int, reply: PushPull | None) -> None: ...

    def handle_timer(self, now: float) -> None: ...

    def next_deadline(self) -> float: ...

    def take_outputs(self) -> list[Any]: ...

    def take_events(self) -> list[Any]: ...


@attrs.frozen
class LinkModel:
    """How the virtual network treats a datagram: lost with probability ``loss``, delayed by
    ``delay`` plus a ``jitter`` (which reorders), duplicated with ``duplicate``.

    The shape of the delay (every default keeps the plain model, and a seed's run with it is
    the same as before these fields existed: they draw no random number unless set):
    ``exponential`` jitter (a queue's long tail), ``asymmetry`` between a pair's two directions
    (which a clock's round-trip estimate cannot see), and ``outlier`` datagrams that are much
    later than the rest (a scheduler or a Wi-Fi retry holding one back).
    """

    loss: float = 0.0
    """Probability that a datagram is lost."""
    delay: float = 0.0005
    """The smallest one-way delay, in seconds."""
    jitter: float = 0.001
    """Seconds added to ``delay``: uniform in [0, jitter), or with ``exponential`` an
    exponential draw of mean ``jitter``."""
    duplicate: float = 0.0
    """Probability that a datagram arrives twice (the copy with a delay of its own)."""
    exponential: bool = False
    """The jitter is exponential with mean ``jitter`` (a long tail) instead of uniform."""
    asymmetry: float = 1.0
    """The jitter of traffic from a lower to a higher address (addresses compared as tuples)
    is multiplied by this; the other direction's is not. 1.0: both directions alike."""
    outlier: float = 0.0
    """Probability that a datagram is an outlier, later by ``outlier_delay`` plus a uniform
    draw in [0, ``outlier_jitter``)."""
    outlier_delay: float = 0.0
    """Seconds an outlier is late (fixed part)."""
    outlier_jitter: float = 0.0
    """Up to this many seconds more for an outlier (uniform)."""
    shaped: bool = attrs.field(init=False, repr=False, eq=False)
    """Whether any of ``exponential``, ``asymmetry`` or ``outlier`` is set (derived: the
    simulator's fast path skips the shaping otherwise)."""

    @shaped.default
    def _shaped(self) -> bool:
        return self.exponential or self.asymmetry != 1.0 or self.outlier > 0.0


INSTANT = LinkModel(loss=0.0, delay=0.0, jitter=0.0, duplicate=0.0)
"""The zero-delay link: every message arrives at the instant it was sent, in the order it was
sent, and none is lost; a stream's reply comes back at the same instant too. Time then moves
only with the cores' timers (unit tests of a protocol transition)."""


def new_node_id(rng: random.Random) -> str:
    """A random 128-bit node id as 32 hex characters, from *rng* (reproducible)."""
    return f"{rng.getrandbits(128):032x}"


@attrs.define(eq=False)
class SimNode:
    """One simulated process: its core, and whether it is up."""

    address: Address
    record: MemberRecord
    core: SimCore
    up: bool = True
    clock: SkewedClock | None = None
    """The node's local clock (skew and drift against virtual time); None: exact."""
    stalled_until: float = 0.0
    drop_while_stalled: bool = False
    """Whether what arrives while stalled is lost (see :meth:`Simulator.stall`)."""
    inbound: Inbound | None = None
    """The receiving edge's checks (``Simulator(edge=True)`` only)."""
    timer_at: float = float("inf")
    seq: int = 0
    sent_messages: int = 0
    sent_bytes: int = 0
    replaced: bool = False
    """A later run of the node (a restart at the same address) took its place."""
    site: int | None = None
    """Its site in a site-aware simulation (:mod:`mesh._sim_sites`); None: the one LAN."""
    node_id: str = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.node_id = self.record.node_id

    def local(self, true_now: float) -> float:
        """This node's local clock reading at virtual time *true_now*."""
        return true_now if self.clock is None else self.clock(true_now)

    def true(self, local: float) -> float:
        """The virtual time at which this node's local clock reads *local*."""
        return local if self.clock is None else self.clock.to_true(local)


_TIMER, _DATAGRAM, _STREAM, _STREAM_REPLY, _CALL, _NODE_CALL = range(6)
INF = float("inf")

CoreFactory = Callable[[MemberRecord, float, random.Random, Snapshot | None], SimCore]
EventHook = Callable[[SimNode, Any, float], None]
SendHook = Callable[[SimNode, Address, Message, float], None]
InputHook = Callable[[SimNode], None]
NodeCall = Callable[[float], None]


class Simulator:
    """A seeded virtual network of simulated nodes (see the module docstring).

    Time only advances inside :meth:`run_until`; everything else is immediate. ``on_event`` is
    called with every event a core emits, at the virtual time it was emitted; ``on_send`` with
    every datagram a node sends (lost or not), with its destination and the time.

    *codec* encodes every message (default: unsigned). With *edge*, messages are bound to their
    receivers and checked by each receiver's :class:`~mesh._inbound.Inbound` (see the module
    docstring); without, the typed body is delivered as sent (the large sweeps: the edge is
    proved on its own).
    """

    def __init__(
        self,
        seed: int,
        profile: Profile,
        link: LinkModel | None = None,
        *,
        federation: str = "sim",
        core_factory: CoreFactory | None = None,
        on_event: EventHook | None = None,
        on_send: SendHook | None = None,
        codec: WireCodec | None = None,
        edge: bool = False,
    ) -> None:
        self.seed = seed
        self.profile = profile
        self.link = link or LinkModel()
        self.federation = federation
        self.now = 0.0
        self.rng = random.Random(seed)
        self._net_rng = random.Random(self.rng.getrandbits(64))
        self._codec = codec or WireCodec()
        self.edge = edge
        self._queue = EventQueue()
        self._push = self._queue.push
        self.nodes: dict[Address, SimNode] = {}
        self._groups: dict[Address, int] = {}
        self._blocked: set[tuple[Address, Address]] = set()
        self._hash = hashlib.blake2b(digest_size=16)
        self.on_event = on_event
        self.on_send = on_send
        self.refused: list[tuple[float, Address, Address, str]] = []
        """Messages a receiver's edge refused (``edge=True``): (time, source, receiver,
        reason)."""
        self.largest_datagram = 0
        """The largest encoded datagram sent so far, in bytes (without UDP/IP headers)."""
        self.on_input: InputHook | None = None
        """Called after every input a node handled (after its outputs went out): a driver of
        something outside the mesh (:mod:`mesh._simregistry`) takes the node's requests."""
        self.core_factory: CoreFactory = core_factory or self._membership_factory
        self.delivered = 0
        self.dropped = 0
        self._next_host = 1

    def _membership_factory(
        self, me: MemberRecord, now: float, rng: random.Random, snapshot: Snapshot | None
    ) -> SimCore:
        return Membership(me, self.profile, now=now, rng=rng, snapshot=snapshot)

    # -- building the group -------------------------------------------------------------------

    def new_record(self, name: str, orchestra: str = "sim") -> MemberRecord:
        """A fresh member record with a new id and the next free virtual address."""
        host = self._next_host
        self._next_host += 1
        address = (f"10.{host >> 16 & 255}.{host >> 8 & 255}.{host & 255}", 7471)
        return MemberRecord(new_node_id(self.rng), name, orchestra, address, 0)

    def add_node(
        self,
        record: MemberRecord,
        *,
        snapshot: Snapshot | None = None,
        seeds: Iterable[Address] = (),
        clock: SkewedClock | None = None,
        core: SimCore | None = None,
    ) -> SimNode:
        """Start a node for *record* now, optionally knowing *snapshot*, joining via *seeds*,
        with a local *clock* that may be skewed and drift. *core*: this one, built by the
        caller, instead of a new one from the core factory."""
        local = self.now if clock is None else clock(self.now)
        if core is None:
            core_rng = random.Random(self.rng.getrandbits(64))
            core = self.core_factory(record, local, core_rng, snapshot)
        node = SimNode(record.address, record, core, clock=clock, site=self.site_at(record.address))
        if self.edge:
            node.inbound = Inbound(self._codec, self.federation, record.node_id, record.incarnation)
        earlier = self.nodes.get(record.address)
        if earlier is not None:
            earlier.replaced = True
        self.nodes[record.address] = node
        for seed in seeds:
            core.add_candidate(local, seed)
        self._after_input(node)
        return node

    def converged_group(self, count: int, orchestras: int = 1) -> list[SimNode]:
        """Start *count* nodes that all know each other already (one shared snapshot)."""
        records = [self.new_record(f"n{i}", f"o{i % orchestras}") for i in range(count)]
        snapshot = Snapshot.of(records)
        return [self.add_node(r, snapshot=snapshot) for r in records]

    # -- faults -------------------------------------------------------------------------------

    def crash(self, node: SimNode) -> None:
        """Stop *node* at once, as ``kill -9`` would: it sends and answers nothing more."""
        node.up = False

    def restart(self, node: SimNode, seeds: Iterable[Address]) -> SimNode:
        """Start a crashed node again: same id, higher incarnation, joining via *seeds*."""
        record = attrs.evolve(node.record, incarnation=node.core.incarnation + 1)
        return self.add_node(record, seeds=seeds, clock=node.clock)

    def leave(self, node: SimNode) -> None:
        """Make *node* leave gracefully, then stop it once its notices are out."""
        leave = getattr(node.core, "leave", None)
        if leave is not None:
            leave(node.local(self.now))
            self._after_input(node)
        self.schedule(0.05, lambda: self.crash(node))

    def stall(self, node: SimNode, duration: float, *, drop: bool = False) -> None:
        """Freeze *node* for *duration*: no timer runs, and what arrives meanwhile is handled
        when it resumes (or, with *drop*, lost: a socket buffer that overflowed)."""
        node.stalled_until = max(node.stalled_until, self.now + duration)
        node.drop_while_stalled = drop

    def partition(self, *groups: Iterable[SimNode]) -> None:
        """Split the network: nodes in different *groups* cannot reach each other; nodes not
        named form one more group."""
        self._groups = {}
        for index, group in enumerate(groups, start=1):
            for node in group:
                self._groups[node.address] = index

    def block(self, src: SimNode, dest: SimNode) -> None:
        """Lose everything *src* sends to *dest* (one way) until :meth:`heal`."""
        self._blocked.add((src.address, dest.address))

    def cut(self, a: SimNode, b: SimNode) -> None:
        """Lose the traffic between *a* and *b*, both ways, until :meth:`heal`."""
        self._blocked |= {(a.address, b.address), (b.address, a.address)}

    def isolate(self, node: SimNode) -> None:
        """Cut *node* off from every other node (it still runs) until :meth:`heal`."""
        for other in self.nodes.values():
            if other is not node:
                self.cut(node, other)

    def heal(self) -> None:
        """Join every partition again, and undo every cut and block."""
        self._groups = {}
        self._blocked.clear()

    def reachable(self, a: Address, b: Address) -> bool:
        """Whether the network currently carries traffic from *a* to *b*."""
        if (a, b) in self._blocked:
            return False
        groups = self._groups
        return not groups or groups.get(a, 0) == groups.get(b, 0)

    # -- running ------------------------------------------------------------------------------

    def schedule(self, delay: float, action: Callable[[], None]) -> None:
        """Run *action* at virtual time ``now + delay``."""
        self._push(self.now + delay, _CALL, action)

    def call_node(self, node: SimNode, delay: float, action: NodeCall) -> None:
        """Hand *node* an input from outside the mesh at virtual time ``now + delay``: call
        ``action(local now)`` then carry out what its core produced, as for a datagram. Dropped
        if the node is down or was restarted meanwhile; a stalled node gets it when it resumes.
        """
        self._push(self.now + delay, _NODE_CALL, (node, node.core, action))

    def flush(self) -> None:
        """Carry out what the running cores produced outside the simulator (a test that called
        a core's method by hand: its outputs, events and next timer), then everything due by
        now (with :data:`INSTANT` links, until no message is in flight)."""
        for node in list(self.nodes.values()):
            if node.up:
                self._after_input(node)
        self.run_until(self.now)

    def send(self, node: SimNode, output: SendDatagram | OpenStream) -> None:
        """Carry out one *output* that a test took from *node*'s core by hand, as if the core
        had just produced it (then :meth:`flush` or :meth:`run_until` delivers it)."""
        if type(output) is SendDatagram:
            self._send(node, output.dest, output.body, output.to, output.to_incarnation)
        else:
            assert type(output) is OpenStream
            self._open_stream(node, output)

    def run_until(self, t: float, stop: Callable[[], bool] | None = None) -> bool:
        """Advance virtual time to *t*, or until *stop()* is true (checked after every step).
        Return whether *stop* ended the run."""
        step = self._step
        for when, _, kind, data in self._queue.drain(t):
            self.now = when
            step(kind, data)
            if stop is not None and stop():
                return True
        self.now = max(self.now, t)
        return False

    def _step(self, kind: int, data: Any) -> None:
        # The hot path of every run (millions of calls at 100,000 nodes): the common kinds
        # first, no method call that can be saved.
        if kind == _CALL:
            data()
            return
        node: SimNode = data[0]
        if not node.up or node.replaced:
            if kind == _STREAM:  # the peer is gone: the opener's exchange times out
                _, origin, exchange, _, _ = data
                timeout = self.now + self.profile.stream_timeout
                self._push(timeout, _STREAM_REPLY, (origin, exchange, None))
            return
        if kind == _NODE_CALL and data[1] is not node.core:
            return  # meant for an earlier run of the node
        if node.stalled_until > self.now:
            if node.drop_while_stalled and kind == _DATAGRAM:
                self.dropped += 1
                return
            # Frozen: keep the input for when it resumes (timers after messages).
            self._push(node.stalled_until + (1e-6 if kind == _TIMER else 0.0), kind, data)
            return
        now = self.now if node.clock is None else node.clock(self.now)
        core = node.core
        if kind == _TIMER:
            if data[1] != node.timer_at:
                return
            node.timer_at = INF
            # The local clock read back at the converted time may sit an ulp below the
            # deadline; the timer is due by construction.
            core.handle_timer(now if now >= data[1] else data[1])
        elif kind == _DATAGRAM:
            _, src, sender, body = data
            if type(body) is bytes:  # edge: the receiver checks the bytes first
                env = self._check(node, src, body, None)
                if env is None:
                    return
                sender, body = env.sender, env.body
            core.handle_message(now, src, sender, body)
        elif kind == _STREAM:
            _, origin, exchange, body, sender = data
            incarnation = 0
            if type(body) is bytes:
                env = self._check(node, origin.address, body, "request")
                if env is None:  # refused: the opener's connection is closed at once
                    link = self._link(node, origin.address, origin)
                    latency = self._latency(link, node.address, origin.address)
                    self._push(self.now + latency, _STREAM_REPLY, (origin, exchange, None))
                    return
                assert type(env.body) is PushPull  # only push-pulls go over streams here
                sender, body, incarnation = env.sender, env.body, env.incarnation
            reply = core.handle_stream(now, origin.address, sender, body)
            answer: PushPull | bytes = reply
            if self.edge:
                env = self._envelope(node, reply, origin.node_id, incarnation)
                answer = self._codec.encode_frame(env)
                node.sent_bytes += len(answer) + _TCP_OVERHEAD
            else:
                node.sent_bytes += self._size(node, reply, stream=True)
            link = self._link(node, origin.address, origin)
            latency = self._latency(link, node.address, origin.address)
            self._push(self.now + latency, _STREAM_REPLY, (origin, exchange, answer))
        elif kind == _STREAM_REPLY:
            _, exchange, answered = data
            got: PushPull | None = answered
            if type(answered) is bytes:
                env = self._check(node, None, answered, "reply")
                got = env.body if env is not None and type(env.body) is PushPull else None
            core.handle_stream_reply(now, exchange, got)
        elif kind == _NODE_CALL:
            data[2](now)
        self._after_input(node)

    def _after_input(self, node: SimNode) -> None:
        core = node.core
        now = self.now
        outputs = core.take_outputs()
        if outputs:
            for out in outputs:
                if type(out) is SendDatagram:
                    self._send(node, out.dest, out.body, out.to, out.to_incarnation)
                elif type(out) is OpenStream:
                    self._open_stream(node, out)
        if self.on_input is not None:
            self.on_input(node)
        events = core.take_events()
        if events and self.on_event is not None:
            for event in events:
                self.on_event(node, event, now)
        deadline = core.next_deadline()  # local time
        if deadline < node.timer_at:
            node.timer_at = deadline
            when = deadline if node.clock is None else node.clock.to_true(deadline)
            self._push(when if when > now else now, _TIMER, (node, deadline))

    def site_at(self, address: Address) -> int | None:
        """The site of *address*: None here (one LAN); a site-aware simulator knows sites."""
        return None

    def _link(self, node: SimNode, dest: Address, target: SimNode | None) -> LinkModel:
        """The link from *node* to *dest* (the node there, if any): :meth:`link_between`,
        unless a subclass can tell faster from the two nodes."""
        return self.link_between(node.address, dest)

    def link_between(self, src: Address, dest: Address) -> LinkModel:
        """The link model of traffic from *src* to *dest*: ``self.link`` for every pair here; a
        site-aware simulator (:mod:`mesh._sim_sites`) tells LAN from WAN."""
        return self.link

    def _latency(self, link: LinkModel, src: Address, dest: Address) -> float:
        """A one-way delay on *link* from *src* to *dest* (one draw unless the link is
        :attr:`~LinkModel.shaped`)."""
        rng = self._net_rng
        if not link.shaped:
            return link.delay + rng.random() * link.jitter
        draw = rng.random()
        jitter = -math.log(1.0 - draw) * link.jitter if link.exponential else draw * link.jitter
        if link.asymmetry != 1.0 and src < dest:
            jitter *= link.asymmetry
        latency = link.delay + jitter
        if link.outlier > 0.0 and rng.random() < link.outlier:
            latency += link.outlier_delay
            if link.outlier_jitter > 0.0:
                latency += rng.random() * link.outlier_jitter
        return latency

    def _size(self, node: SimNode, body: Message, stream: bool = False) -> int:
        node.seq += 1
        core = node.core
        env = Envelope(self.federation, node.node_id, core.incarnation, node.seq, self.now, body)
        if stream:
            return len(self._codec.encode_frame(env)) + _TCP_OVERHEAD
        data = self._codec.encode(env)  # raises MessageTooLarge above 1200 bytes
        self._hash.update(data)
        return len(data) + _UDP_IP_HEADERS

    def _envelope(self, node: SimNode, body: Message, to: str | None, incarnation: int) -> Envelope:
        """*body* from *node*, bound to *to* as the live node binds it (``edge`` only)."""
        node.seq += 1
        bound = None
        if to is not None:
            member = getattr(node.core, "member", None)  # the newest the sender knows of *to*
            view = member(to) if member is not None else None
            heard = node.inbound.guard.incarnation_of(to) if node.inbound is not None else -1
            bound = binding(to, incarnation, -1 if view is None else view.incarnation, heard)
        core = node.core
        return Envelope(
            self.federation,
            node.node_id,
            core.incarnation,
            node.seq,
            self.now,
            body,
            *(bound or (None, 0)),
        )

    def _check(
        self, node: SimNode, src: Address | None, data: bytes, stream: str | None
    ) -> Envelope | None:
        """*data* as *node*'s edge receives it: the checked envelope, or ``None`` (refused,
        recorded in :attr:`refused` and counted by the node's :class:`Inbound`)."""
        inbound = node.inbound
        assert inbound is not None
        inbound.incarnation = node.core.incarnation
        try:
            if stream is None:
                env = self._codec.decode(data, MAX_DATAGRAM, inbound.node_id)
                inbound.check(env, self.now, unbound_ok=False)
                return env
            payload = data[self._codec.frame_prefix_size :]
            return inbound.check_frame(payload, self.now, request=stream == "request")
        except InvalidMessage as exc:
            inbound.reject(exc.reason)
            self.refused.append((self.now, src or ("", 0), node.address, exc.reason))
            return None

    def _send(
        self, node: SimNode, dest: Address, body: Message, to: str | None = None, bound: int = -1
    ) -> None:
        node.sent_messages += 1
        if self.on_send is not None:
            self.on_send(node, dest, body, self.now)
        payload: Message | bytes = body
        if self.edge:
            encoded = self._codec.encode(self._envelope(node, body, to, bound))
            self._hash.update(encoded)
            self.largest_datagram = max(self.largest_datagram, len(encoded))
            node.sent_bytes += len(encoded) + _UDP_IP_HEADERS
            payload = encoded
        else:
            node.sent_bytes += self._size(node, body)
        target = self.nodes.get(dest)
        rng = self._net_rng
        link = self._link(node, dest, target)
        lost = rng.random() < link.loss
        cut = (self._groups or self._blocked) and not self.reachable(node.address, dest)
        if target is None or lost or cut:
            self.dropped += 1
            return
        self.delivered += 1
        data = (target, node.address, node.node_id, payload)
        if link.shaped:
            latency = self._latency(link, node.address, dest)
        else:
            latency = link.delay + rng.random() * link.jitter
        self._push(self.now + latency, _DATAGRAM, data)
        if link.duplicate and rng.random() < link.duplicate:
            self._push(self.now + self._latency(link, node.address, dest), _DATAGRAM, data)

    def _open_stream(self, node: SimNode, out: OpenStream) -> None:
        node.sent_messages += 1
        body: PushPull | bytes = out.body
        if self.edge:
            body = self._codec.encode_frame(
                self._envelope(node, out.body, out.to, out.to_incarnation)
            )
            node.sent_bytes += len(body) + _TCP_OVERHEAD
        else:
            node.sent_bytes += self._size(node, out.body, stream=True)
        target = self.nodes.get(out.dest)
        if target is None or not target.up or not self.reachable(node.address, out.dest):
            timeout = self.profile.stream_timeout
            self._push(self.now + timeout, _STREAM_REPLY, (node, out.exchange, None))
            return
        self._push(
            self.now + self._latency(self._link(node, out.dest, target), node.address, out.dest),
            _STREAM,
            (target, node, out.exchange, body, node.node_id),
        )

    # -- observing ----------------------------------------------------------------------------

    def trace_hash(self) -> str:
        """The hash of every datagram sent so far (same seed, same hash)."""
        return self._hash.hexdigest()

    def up_nodes(self) -> list[SimNode]:
        """The nodes that are running."""
        return [n for n in self.nodes.values() if n.up]
