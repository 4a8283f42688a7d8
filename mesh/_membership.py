"""SWIM membership with Lifeguard's refinements, as a sans-IO state machine.

The core never touches a socket or a clock. The driver (the trio runtime, or the simulator)
feeds it inputs with the current time and drains what it wants done::

    core = Membership(me, get_profile("lan"), now=0.0, rng=random.Random(1))
    core.add_candidate(now, ("10.0.0.2", 7471))     # "maybe a peer here" (discovery)
    core.handle_message(now, src, sender, body)     # a decoded datagram
    core.handle_timer(now)                          # when now >= core.next_deadline()
    for out in core.take_outputs(): ...             # SendDatagram / OpenStream
    for ev in core.take_events(): ...               # MemberEvent / UpdateReceived / PathConflict

Protocol (memberlist's SWIM + Lifeguard):

- Every probe period one member is pinged, in a shuffled round-robin order. No ack within the
  probe timeout: ``indirect_checks`` members are asked to ping it (they nack if it stays
  silent). No ack by the end of the period: the member is suspected. Any datagram from the
  member meanwhile counts as its ack.
- A suspicion times out after ``max`` seconds, shrunk towards ``min`` by independent
  confirmations; then the member is declared dead. A suspected node refutes by raising its
  incarnation; it is told directly (Lifeguard's buddy system).
- Lifeguard's local health: failed probes with missing nacks raise an awareness score that
  stretches our own probe interval and timeout, so a slow node stops accusing healthy ones.
  A timer that fires far too late (the process was stalled) blames nobody.
- Updates ride on pings and acks and in gossip datagrams to ``gossip_fanout`` members every
  gossip interval, each sent ``retransmit_mult x ceil(log10(N + 1))`` times.
- A periodic TCP push-pull exchanges full state and heals what gossip missed; dead members are
  retried every reconnect interval, which heals partitions.
- Dead and left members stay as tombstones, so a restarted node (higher incarnation) is told
  apart from an old message.

Sites (``wan=`` a profile): an orchestra is a site on its own network, and the other sites may be
far (a slow, lossy path) or unreachable but through their supernodes (behind NATs). Then the
core keeps two tiers in one table:

- members of this node's own orchestra are probed, gossiped with and asked for help with the
  node's ``profile`` (its LAN), as in a flat group;
- of the other orchestras' members, only the **contacts** (:meth:`set_contacts`: the other
  sites' supernodes, while this node is its own site's supernode) are probed, in a second probe
  loop with the ``wan`` timings (probe interval and timeout, suspicion), get every gossip round
  and take part in push-pull. The others are known (their records arrive through the contacts)
  but never contacted: their liveness is their own site's to decide, and its verdicts arrive by
  gossip. A death notice about such a member from a member of its own orchestra is taken as it
  comes (its LAN saw it die); any other suspicion or death notice about a member of another
  orchestra is a suspicion on the ``wan`` timings, which a contact's runs out into a death
  (this node probes it) and another member's never does (its site's verdict ends it).
- Only the supernodes cross, so what crosses once may be lost: the supernodes exchange state
  with their contacts every ``wan`` push-pull period; a supernode that saw a death in the last
  ``wan`` ``gossip_to_dead``, or that suspects a member of another site, exchanges state with
  a contact (that site's) every reconnect interval; a suspicion of another site's member that
  is not a contact is never acted on by a node's own timer (each time it runs out it is handed
  to the site again, and a supernode checks it with the member's site): a refutation or that
  site's verdict ends it; a contact is told of its suspicion once more before it is declared
  dead; a notice about a member from across the site boundary that this node knows better is
  answered for the member; a lease re-announcement is passed across the boundary it came to.
"""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TypeAlias

import attrs

from mesh._events import MemberEvent, MemberView, PathConflict
from mesh._profiles import Profile
from mesh._wire import (
    MAX_COUNTER,
    MAX_FRAME,
    Ack,
    Address,
    Dead,
    Gossip,
    Lease,
    MemberRecord,
    MemberStatus,
    Message,
    Nack,
    Ping,
    PingReq,
    Publish,
    PushPull,
    Suspect,
    Update,
    Value,
    update_size,
)

__all__ = [
    "MAX_PUSH_PULL_PAGES",
    "PUSH_PULL_BUDGET",
    "MemberEvent",
    "MemberView",
    "Membership",
    "MembershipOutput",
    "MembershipStatistics",
    "OpenStream",
    "PathConflict",
    "SendDatagram",
    "Snapshot",
    "UpdateReceived",
    "path_winner",
]

ALIVE, SUSPECT, DEAD, LEFT = (
    MemberStatus.ALIVE,
    MemberStatus.SUSPECT,
    MemberStatus.DEAD,
    MemberStatus.LEFT,
)
_LIVE = (ALIVE, SUSPECT)
_RECONNECT_TRIES = 3
INF = math.inf

# ---------------------------------------------------------------------------------------------
# Outputs and events


@attrs.frozen
class SendDatagram:
    """Send *body* to *dest* as one UDP datagram.

    ``to`` is the receiver's node id and ``to_incarnation`` its incarnation as the core knows it
    (-1: unknown); the driver binds the datagram to them (receivers refuse datagrams bound to
    someone else, to an earlier run of themselves, or to nobody: ``to`` must be set)."""

    dest: Address
    body: Message
    to: str | None = None
    to_incarnation: int = -1


@attrs.frozen
class OpenStream:
    """Open a TCP stream to *dest*, send *body*, and feed the reply (or ``None`` on failure)
    back with :meth:`Membership.handle_stream_reply` quoting *exchange*. ``to`` as in
    :class:`SendDatagram`; ``None`` for a join (first contact with an address), the one message
    a node accepts unbound."""

    dest: Address
    body: PushPull
    exchange: int
    to: str | None = None
    to_incarnation: int = -1


MembershipOutput: TypeAlias = SendDatagram | OpenStream


@attrs.frozen
class UpdateReceived:
    """A new non-membership update (lease, publication) arrived; it is relayed by gossip."""

    update: Lease | Publish


def path_winner(claims: Iterable[MemberView]) -> MemberView | None:
    """Of several live members announcing one path, the one that keeps it: the earliest
    started (its ``j`` metadata, the wall-clock start time), then the lowest id. Every node
    applies the same rule to the same records, so all agree."""

    def rank(view: MemberView) -> tuple[float, str]:
        joined = view.meta.get("j")
        if isinstance(joined, bool) or not isinstance(joined, int | float):
            return (math.inf, view.node_id)
        return (float(joined) if math.isfinite(joined) else math.inf, view.node_id)

    return min(claims, key=rank, default=None)


MembershipEvent: TypeAlias = MemberEvent | UpdateReceived | PathConflict


@attrs.frozen
class MembershipStatistics:
    """Counters of what the core has done (a frozen snapshot)."""

    members_live: int
    members_dead: int
    probes_sent: int
    probes_failed: int
    indirect_probes: int
    suspicions_raised: int
    refutations: int
    deaths_declared: int
    late_wakeups: int
    awareness: int
    pending_broadcasts: int
    path_conflicts: int
    """Records of other live nodes announcing this node's path that were applied."""
    refused: Mapping[str, int]
    """Well-formed input the core would not take as it came, by reason: ``incarnation
    ahead`` (a suspicion or death notice about a member at an incarnation this node never saw
    from it: applied at the one it saw), ``ahead of self`` (a record or notice about this node
    above its own incarnation: refuted at its own + 1), ``incarnation exhausted``,
    ``ping for another node``, ``push-pull pages`` (a peer's state went on beyond
    :data:`MAX_PUSH_PULL_PAGES` pages: the rest was not asked for)."""


@attrs.frozen
class Snapshot:
    """A membership table shared (never mutated) by many cores, so a simulated group of
    thousands of nodes can start converged without copying the table into every node."""

    records: Mapping[str, MemberRecord]
    ids: tuple[str, ...]
    live: int = attrs.field(init=False)
    """How many of the records are alive or suspect (counted once, not by every core)."""

    def __attrs_post_init__(self) -> None:
        live = sum(1 for r in self.records.values() if r.status in _LIVE)
        object.__setattr__(self, "live", live)

    @classmethod
    def of(cls, records: Iterable[MemberRecord]) -> Snapshot:
        """A snapshot of *records*."""
        table = {r.node_id: r for r in records}
        return cls(table, tuple(table))


# ---------------------------------------------------------------------------------------------
# Internal state


_MISSING = object()

PUSH_PULL_BUDGET = MAX_FRAME - 16 * 1024
"""Bytes of records (member records and extras) one push-pull carries at most: one frame,
less room for the envelope. A larger state goes in pages (see :class:`~mesh._wire.PushPull`):
above about 16,000 members a whole state was over the frame, and a node could not join."""

MAX_PUSH_PULL_PAGES = 64
"""How many pages one exchange may take (a state of about a million members): a peer whose
cursor never ends is not asked for more."""

_Exchange: TypeAlias = tuple[Address, str | None, int, int]
"""An open push-pull: the peer's address and id (None for a join), the cursor asked for, and
how many pages the exchange has taken so far."""


class _Table:
    """Member records: a shared base snapshot plus this node's own changes."""

    __slots__ = ("base", "base_ids", "new_ids", "overlay")

    def __init__(self, snapshot: Snapshot | None) -> None:
        self.base: Mapping[str, MemberRecord] = snapshot.records if snapshot else {}
        self.base_ids: tuple[str, ...] = snapshot.ids if snapshot else ()
        self.overlay: dict[str, MemberRecord | None] = {}
        self.new_ids: list[str] = []

    def get(self, node_id: str) -> MemberRecord | None:
        rec = self.overlay.get(node_id, _MISSING)
        if rec is _MISSING:
            return self.base.get(node_id)
        return rec  # type: ignore[return-value]

    def put(self, rec: MemberRecord) -> None:
        node_id = rec.node_id
        if node_id not in self.overlay and node_id not in self.base:
            self.new_ids.append(node_id)
        self.overlay[node_id] = rec

    def remove(self, node_id: str) -> None:
        if node_id in self.base:
            self.overlay[node_id] = None
        else:
            self.overlay.pop(node_id, None)
            self.new_ids.remove(node_id)

    def slots(self) -> int:
        return len(self.base_ids) + len(self.new_ids)

    def id_at(self, index: int) -> str:
        n = len(self.base_ids)
        return self.base_ids[index] if index < n else self.new_ids[index - n]

    def records(self) -> Iterator[MemberRecord]:
        for node_id in self.base_ids:
            rec = self.get(node_id)
            if rec is not None:
                yield rec
        for node_id in self.new_ids:
            rec = self.overlay.get(node_id)
            if rec is not None:
                yield rec


@attrs.define
class _Suspicion:
    start: float
    confirmations: dict[str, None]  # ordered, so runs are reproducible
    k: int
    low: float
    high: float
    deadline: float = 0.0
    told_again: bool = False
    """A suspicion of a contact that ran out once: the contact was told once more (see
    :meth:`Membership._suspicion_expired`)."""
    not_before: float = 0.0
    """The deadline is never earlier than this (the wait after telling a contact once more)."""
    began: float | None = None
    """When a suspicion that was handed on again (see :meth:`Membership._suspicion_expired`)
    began (``start`` is then its latest hand-on)."""

    def recompute(self) -> None:
        c = len(self.confirmations) - 1
        if self.k < 1 or c <= 0:
            timeout = self.high if self.k >= 1 else self.low
        else:
            frac = math.log(c + 1) / math.log(self.k + 1)
            timeout = max(self.low, self.high - frac * (self.high - self.low))
        self.deadline = max(self.start + timeout, self.not_before)


@attrs.define
class _Probe:
    number: int
    target: str
    address: Address
    incarnation: int
    indirect_at: float
    end_at: float
    acked: bool = False
    indirect_sent: bool = False
    expected_nacks: int = 0
    nacks: int = 0


@attrs.define
class _Relay:
    requester: Address
    requester_id: str
    requester_probe: int
    target: str
    deadline: float


@attrs.define
class _Broadcast:
    update: Update
    size: int
    transmits: int = 0
    crossings: int = 0  # a publication's sends to contacts (other sites' supernodes)

    def spent(self, limit: int, cross_limit: int) -> bool:
        """Whether it was sent all the times it is due: *limit* in all, or, a publication,
        *limit* within the site and *cross_limit* across (see :meth:`_BroadcastQueue.take`)."""
        if not isinstance(self.update, Publish):
            return self.transmits >= limit
        return self.transmits >= limit and self.crossings >= cross_limit


def _key(update: Update) -> tuple[str, ...]:
    """The queue key: a newer update with the same key replaces an older one."""
    if isinstance(update, MemberRecord | Suspect | Dead):
        return ("m", update.node_id)
    if isinstance(update, Lease):
        return ("l", update.post)
    return ("p", update.origin, str(update.number))


def _seen_key(update: Lease | Publish) -> tuple[str, ...]:
    """Identity of an extension update, so each distinct one is relayed once per node."""
    if isinstance(update, Lease):
        return ("l", update.post, update.holder, str(update.term), repr(update.tenure_start))
    return ("p", update.origin, str(update.number))


class _BroadcastQueue:
    """Updates waiting to be gossiped, each sent a limited number of times; a newer update
    about the same thing (member, post) replaces the older one."""

    def __init__(self) -> None:
        self.items: OrderedDict[tuple[str, ...], _Broadcast] = OrderedDict()

    def put(self, update: Update) -> None:
        key = _key(update)
        self.items.pop(key, None)
        self.items[key] = _Broadcast(update, update_size(update))

    def take(
        self, budget: int, limit: int, *, across: bool = False, cross_limit: int = 0
    ) -> list[Update]:
        """Updates for one datagram of at most *budget* bytes: to a member of this node's own
        site, or *across* to a contact. Each is sent *limit* times; a publication is sent
        *limit* times within the site and, apart, *cross_limit* times across (0: no
        contacts). A publication has no other way to another site: a state exchange carries
        members and leases, not publications, and a lease re-announced is passed across. When
        one count served both, the site's own pings, acks and gossip could spend all of a
        publication's sends before the supernode's next gossip round reached its contact (the
        conductor's tempo that one site never heard). Membership news keeps one count: sent
        across more often, a stale death notice crossed after its refutation and the other
        site's view flapped (chaos seeds 1039, 6149 and 7579 of the registry sweep)."""
        # A publication is dropped once spent both ways, *cross_limit* as it is now (contacts
        # come and go); anything else only as it is sent for the last time (below: a smaller
        # group's lower *limit* still lets it go once more).
        for key in [
            key
            for key, item in self.items.items()
            if isinstance(item.update, Publish) and item.spent(limit, cross_limit)
        ]:
            del self.items[key]
        if not self.items:
            return []

        def crossing(item: _Broadcast) -> bool:
            return across and isinstance(item.update, Publish)

        def sent(item: _Broadcast) -> int:
            return item.crossings if crossing(item) else item.transmits

        # Fewest transmissions first, oldest first among equals (so publications from one
        # origin usually arrive in order; sorted() is stable). A publication spent within the
        # site waits here only for its crossings.
        ordered = sorted(
            (
                (key, item)
                for key, item in self.items.items()
                if sent(item) < (cross_limit if crossing(item) else limit)
                or not isinstance(item.update, Publish)
            ),
            key=lambda kv: sent(kv[1]),
        )
        out: list[Update] = []
        used = 0
        for key, item in ordered:
            if used + item.size > budget:
                continue
            used += item.size
            out.append(item.update)
            if crossing(item):
                item.crossings += 1
            else:
                item.transmits += 1
            if item.spent(limit, cross_limit):
                del self.items[key]
        return out

    def __len__(self) -> int:
        return len(self.items)


def _view(rec: MemberRecord, since: float) -> MemberView:
    return MemberView(
        rec.node_id,
        rec.name,
        rec.orchestra,
        rec.address,
        rec.incarnation,
        MemberStatus.NAMES[rec.status],  # type: ignore[arg-type]
        rec.meta,
        since,
    )


# ---------------------------------------------------------------------------------------------
# The core


class Membership:
    """The SWIM/Lifeguard membership state machine of one node (see the module docstring)."""

    # Slots: a simulation holds 100,000 of these; an instance dict of this many attributes
    # is not shared between instances (1.5 kB each, and slower to read).
    __slots__ = (
        "_awareness",
        "_contacts",
        "_dead",
        "_events",
        "_exchange_counter",
        "_join_attempts",
        "_left",
        "_live",
        "_me",
        "_next_gossip_at",
        "_next_probe_at",
        "_next_push_pull_at",
        "_next_reap_at",
        "_next_reconnect_at",
        "_next_site_exchange_at",
        "_next_wan_probe_at",
        "_outputs",
        "_passed_on",
        "_probe",
        "_probe_counter",
        "_queue",
        "_reconnect_turn",
        "_refused",
        "_relays",
        "_rng",
        "_round_index",
        "_round_size",
        "_round_start",
        "_round_stride",
        "_seen_extensions",
        "_since",
        "_site_turn",
        "_state_extras",
        "_stats",
        "_streams",
        "_suspicions",
        "_table",
        "_wan_probe",
        "_wan_turn",
        "join_retry",
        "piggyback_budget",
        "profile",
        "push_pull_budget",
        "wan",
    )

    def __init__(
        self,
        me: MemberRecord,
        profile: Profile,
        *,
        now: float,
        rng: random.Random,
        snapshot: Snapshot | None = None,
        piggyback_budget: int = 900,
        join_retry: float = 1.0,
        wan: Profile | None = None,
        push_pull_budget: int = PUSH_PULL_BUDGET,
    ) -> None:
        self.profile = profile
        self.wan = wan
        """The supernode tier's timing (see :meth:`set_contacts`); ``None``: one flat group, every
        member probed with ``profile``."""
        self._contacts: frozenset[str] = frozenset()
        self._passed_on: dict[str, float] = {}  # post -> when its lease last went to contacts
        self.piggyback_budget = piggyback_budget
        self.push_pull_budget = push_pull_budget
        self.join_retry = join_retry
        self._rng = rng
        self._me = attrs.evolve(me, status=ALIVE)
        self._left = False
        self._table = _Table(snapshot)
        self._since: dict[str, float] = {}
        self._suspicions: dict[str, _Suspicion] = {}
        self._relays: dict[int, _Relay] = {}
        self._streams: dict[int, _Exchange] = {}
        self._queue = _BroadcastQueue()
        self._seen_extensions: OrderedDict[tuple[str, ...], None] = OrderedDict()
        self._state_extras: tuple[Update, ...] = ()
        self._join_attempts: dict[Address, float] = {}
        self._outputs: list[MembershipOutput] = []
        self._events: list[MembershipEvent] = []
        self._live = 1
        self._dead = 0
        if snapshot is not None:
            self._live += snapshot.live
            self._dead += len(snapshot.records) - snapshot.live
            mine = snapshot.records.get(me.node_id)
            if mine is not None:
                if mine.status in _LIVE:
                    self._live -= 1
                else:
                    self._dead -= 1
                self._table.remove(me.node_id)
        self._awareness = 0
        self._reconnect_turn = 0
        self._probe_counter = 0
        self._exchange_counter = 0
        self._probe: _Probe | None = None
        self._wan_probe: _Probe | None = None
        self._wan_turn = 0
        self._round_start = 0
        self._round_stride = 1
        self._round_index = 0
        self._round_size = 0
        jitter = rng.random()
        self._next_probe_at = now + jitter * profile.probe_interval
        self._next_wan_probe_at = now + jitter * (wan or profile).probe_interval
        self._next_gossip_at = now + jitter * profile.gossip_interval
        self._next_push_pull_at = now + (0.5 + jitter) * self._push_pull_period()
        self._next_reconnect_at = now + (0.5 + jitter) * profile.reconnect_interval
        # (No draw of its own: a flat group's runs stay what they were. Within one period of
        # the start, so a supernode exchanges with the other sites at most 1.25 periods apart.)
        self._next_site_exchange_at = now + jitter * (wan or profile).push_pull_interval
        self._site_turn = 0
        self._next_reap_at = now + profile.tombstone_timeout / 10
        self._stats = {
            "probes_sent": 0,
            "probes_failed": 0,
            "indirect_probes": 0,
            "suspicions_raised": 0,
            "refutations": 0,
            "deaths_declared": 0,
            "late_wakeups": 0,
            "path_conflicts": 0,
        }
        self._refused: Counter[str] = Counter()

    # -- queries ------------------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        """This node's id."""
        return self._me.node_id

    @property
    def incarnation(self) -> int:
        """This node's current incarnation (goes in every envelope it sends)."""
        return self._me.incarnation

    @property
    def me(self) -> MemberRecord:
        """This node's own current record."""
        return self._me

    @property
    def contacts(self) -> frozenset[str]:
        """The members of other orchestras this node probes (see :meth:`set_contacts`)."""
        return self._contacts

    def set_contacts(self, node_ids: Iterable[str]) -> None:
        """With ``wan`` set: the members of other orchestras this node probes and gossips with
        (the other sites' supernodes while this node is its site's supernode; none otherwise).
        Ignored in a flat group."""
        if self.wan is not None:
            self._contacts = frozenset(node_ids) - {self._me.node_id}

    @property
    def has_left(self) -> bool:
        """Whether :meth:`leave` was called."""
        return self._left

    def member(self, node_id: str) -> MemberView | None:
        """The view of one member (``None`` if unknown); this node itself included."""
        if node_id == self._me.node_id:
            return _view(self._me, 0.0)
        rec = self._table.get(node_id)
        return None if rec is None else _view(rec, self._since.get(node_id, 0.0))

    def members(self) -> list[MemberView]:
        """Every member known, this node first, tombstones included."""
        out = [_view(self._me, 0.0)]
        out.extend(_view(r, self._since.get(r.node_id, 0.0)) for r in self._table.records())
        return out

    def live_count(self) -> int:
        """Alive and suspect members, this node included."""
        return self._live

    def knows_alive(self, node_id: str) -> bool:
        """Whether *node_id* is this node or a member it considers alive (not suspect)."""
        if node_id == self._me.node_id:
            return True
        rec = self._table.get(node_id)
        return rec is not None and rec.status == ALIVE

    def statistics(self) -> MembershipStatistics:
        """A frozen snapshot of the counters."""
        return MembershipStatistics(
            members_live=self._live,
            members_dead=self._dead,
            awareness=self._awareness,
            pending_broadcasts=len(self._queue),
            refused=dict(self._refused),
            **self._stats,
        )

    # -- draining -----------------------------------------------------------------------------

    def take_outputs(self) -> list[MembershipOutput]:
        """Return and clear what the driver must send."""
        out, self._outputs = self._outputs, []
        return out

    def take_events(self) -> list[MembershipEvent]:
        """Return and clear what happened since the last call."""
        out, self._events = self._events, []
        return out

    def next_deadline(self) -> float:
        """The time at which :meth:`handle_timer` must next be called."""
        # Called after every input a node handles: plain comparisons, no min() calls.
        if self._left:
            return INF
        t = self._next_probe_at
        if self._next_push_pull_at < t:
            t = self._next_push_pull_at
        if self._next_reap_at < t:
            t = self._next_reap_at
        for p in (self._probe, self._wan_probe):
            if p is not None:
                end = p.end_at if p.indirect_sent or p.acked else p.indirect_at
                if end < t:
                    t = end
        if self._contacts and self._next_wan_probe_at < t:
            t = self._next_wan_probe_at
        if self._queue.items and self._next_gossip_at < t:
            t = self._next_gossip_at
        if (self._dead or self._contacts) and self._next_reconnect_at < t:
            t = self._next_reconnect_at
        if self._contacts and self._next_site_exchange_at < t:
            t = self._next_site_exchange_at
        if self._suspicions:
            for s in self._suspicions.values():
                if s.deadline < t:
                    t = s.deadline
        if self._relays:
            for r in self._relays.values():
                if r.deadline < t:
                    t = r.deadline
        return t

    # -- inputs -------------------------------------------------------------------------------

    def add_candidate(self, now: float, address: Address) -> None:
        """Discovery says a peer may be at *address*: join through it unless it is known."""
        if self._left or address == self._me.address:
            return
        last = self._join_attempts.get(address)
        if last is not None and now - last < self.join_retry:
            return
        if self._live > 1 and self._known_address(address):
            return
        self._join_attempts[address] = now
        if len(self._join_attempts) > 4096:
            self._join_attempts.pop(next(iter(self._join_attempts)))
        self._open_push_pull(address, join=True)

    def broadcast(self, update: Lease | Publish) -> None:
        """Gossip a non-membership update to every node (it is not echoed back as an event)."""
        self._remember_extension(update)
        self._queue.put(update)

    def set_state_extras(self, updates: Sequence[Lease]) -> None:
        """Replicated records (current leases) to include in every push-pull exchange."""
        self._state_extras = tuple(updates)

    def update_meta(self, now: float, meta: Mapping[str, Value]) -> None:
        """Change this node's metadata; a new incarnation carries it to every node."""
        self._me = attrs.evolve(self._me, meta=dict(meta))
        if self._raise_incarnation():
            self._queue.put(self._me)

    def leave(self, now: float, extras: Sequence[Lease] = ()) -> None:
        """Leave gracefully: tell members directly and by gossip, then stop probing.

        *extras* (lease handoffs) ride in the same direct notices, so a successor takes over
        at once."""
        if self._left:
            return
        self._left = True
        notice = Dead(self._me.node_id, self._me.incarnation, self._me.node_id, left=True)
        self._me = attrs.evolve(self._me, status=LEFT)
        self._queue.put(notice)
        for extra in extras:
            self.broadcast(extra)
        live = self._live_ids()
        targets = live if len(live) <= 64 else self._rng.sample(live, 16)
        for node_id in targets:
            rec = self._table.get(node_id)
            if rec is not None and self._reachable(rec):
                self._send_to(rec, Gossip((notice, *extras)))

    def handle_message(self, now: float, src: Address, sender: str, body: Message) -> None:
        """Handle one decoded datagram *body* from *sender* at *src*. Non-membership messages
        are ignored (the runtime routes them elsewhere)."""
        for p in (self._probe, self._wan_probe):
            if p is None or sender != p.target:
                continue
            # Any datagram from the member being probed shows it is alive and reaches us: count
            # it as the ack. Without this, a probe begun during a partition (or whose ping was
            # lost) and stretched by awareness ended after the heal in a suspicion of a member
            # that had been talking to us all along (chaos seeds 8747, 3079).
            p.acked = True
        if isinstance(body, Ping):
            if body.target != self._me.node_id:
                self._refused["ping for another node"] += 1
            elif not self._left:
                pinger = self._table.get(sender)
                updates = self._piggyback(pinger)
                if pinger is None:
                    # A member we do not know probes us: our views diverged (we missed its
                    # join while stalled or cut off); a push-pull repairs it now, not at the
                    # next periodic exchange.
                    self.add_candidate(now, src)
                elif pinger.status == SUSPECT:
                    # The buddy system the other way round: a member we suspect is probing
                    # us, so our ack tells it; it answers with its current incarnation (see
                    # _suspect), in case we missed its refutation.
                    notice: Update = Suspect(sender, pinger.incarnation, self._me.node_id)
                    updates = [notice, *updates]
                elif pinger.status in (DEAD, LEFT):
                    # A member we hold dead or gone is talking to us: tell it, so it refutes
                    # at once if it lives (a forged departure, a false death) or, if it
                    # restarted, answers with its newer incarnation.
                    left = pinger.status == LEFT
                    notice = Dead(sender, pinger.incarnation, self._me.node_id, left)
                    updates = [notice, *updates]
                known = -1 if pinger is None else pinger.incarnation
                self._send(src, Ack(body.probe, self._me.node_id, tuple(updates)), sender, known)
        elif isinstance(body, Ack):
            self._handle_ack(body)
        elif isinstance(body, PingReq):
            self._handle_ping_req(now, src, sender, body)
        elif isinstance(body, Nack):
            for p in (self._probe, self._wan_probe):
                if p is not None and p.number == body.probe:
                    p.nacks += 1
            return
        elif not isinstance(body, Gossip):
            return
        for update in body.updates:
            self._apply(now, update, (src, sender))

    def handle_stream(self, now: float, src: Address, sender: str, body: PushPull) -> PushPull:
        """Handle an incoming push-pull over TCP and return the reply to send back: this
        node's state from the position the request asks for, one frame's worth (its
        ``cursor`` says where the rest goes on)."""
        asker = body.members[0] if body.members else None
        members, rest = self._state_page(body.cursor, self._page_budget(asker))
        extras = self._state_extras if body.cursor == 0 else ()
        reply = PushPull(members, extras, join=False, reply=True, cursor=rest)
        self._merge(now, body, (src, sender))
        return reply

    def handle_stream_reply(self, now: float, exchange: int, reply: PushPull | None) -> None:
        """The outcome of an :class:`OpenStream`: the peer's state, or ``None`` if it failed.
        A page with more to come opens the exchange for the next page."""
        opened = self._streams.pop(exchange, None)
        if opened is None or reply is None:
            return
        address, peer, asked, pages = opened
        if peer is None:  # a join: the peer's own record comes first in its state
            peer = reply.members[0].node_id if reply.members else None
        self._merge(now, reply, None if peer is None else (address, peer))
        # The next page: only from a peer we know, only forwards (every page carries at least
        # one record), and only so many (a peer cannot keep us asking for ever).
        if reply.cursor <= asked or peer is None or self._left:
            return
        if pages >= MAX_PUSH_PULL_PAGES:
            self._refused["push-pull pages"] += 1
            return
        rec = self._table.get(peer)
        self._exchange_counter += 1
        self._streams[self._exchange_counter] = (address, peer, reply.cursor, pages + 1)
        body = PushPull((self._me,), cursor=reply.cursor)
        incarnation = -1 if rec is None else rec.incarnation
        self._outputs.append(OpenStream(address, body, self._exchange_counter, peer, incarnation))

    def handle_timer(self, now: float) -> None:
        """Run every timer that is due at *now*."""
        if self._left:
            return
        for p in (self._probe, self._wan_probe):
            if p is None:
                continue
            if not p.acked and not p.indirect_sent and now >= p.indirect_at:
                self._send_indirect(now, p)
            if now >= p.end_at:
                self._finish_probe(now, p)
        if self.wan is not None and now >= self._next_wan_probe_at:
            self._start_wan_probe(now, self.wan)
        if now >= self._next_probe_at:
            late = now - self._next_probe_at > 2 * self.profile.probe_interval
            if late:
                self._stats["late_wakeups"] += 1
                # We were stalled (a laptop lid closed, a process stopped): what queued up
                # meanwhile is still being worked through, so an answer to our next probes may
                # come late through no fault of the target. Trust our own timing least until
                # probes succeed again (Lifeguard's local health at its maximum; each acked
                # probe takes one point off).
                self._awareness = self.profile.awareness_max - 1
            self._start_probe(now)
        if self._suspicions:
            for node_id in [n for n, s in self._suspicions.items() if now >= s.deadline]:
                self._suspicion_expired(now, node_id)
        if self._relays:
            for number in [n for n, r in self._relays.items() if now >= r.deadline]:
                r = self._relays.pop(number)
                self._send_member(r.requester, r.requester_id, Nack(r.requester_probe, r.target))
        if now >= self._next_gossip_at:
            self._next_gossip_at = now + self.profile.gossip_interval
            self._gossip(now)
        if now >= self._next_push_pull_at:
            self._next_push_pull_at = now + self._push_pull_period() * (
                0.75 + self._rng.random() / 2
            )
            peer = self._random_live(1, where=self._reachable)
            if peer:
                rec = self._table.get(peer[0])
                if rec is not None:
                    self._open_push_pull(rec.address, join=False, peer=rec)
        if now >= self._next_reconnect_at:
            self._next_reconnect_at = now + self.profile.reconnect_interval * (
                0.75 + self._rng.random() / 2
            )
            self._reconnect(now)
        if self.wan is not None and now >= self._next_site_exchange_at:
            self._next_site_exchange_at = now + self.wan.push_pull_period(self._live) * (
                0.75 + self._rng.random() / 2
            )
            self._exchange_with_a_site()
        if now >= self._next_reap_at:
            self._next_reap_at = now + self.profile.tombstone_timeout / 10
            self._reap(now)

    # -- probing ------------------------------------------------------------------------------

    def _scale(self) -> int:
        return self._awareness + 1

    def _next_target(self) -> str | None:
        """The next live member in this round's shuffled order (an affine permutation of the
        table, so no per-node list is needed even for thousands of members)."""
        for _ in range(2):
            while self._round_index < self._round_size:
                i = (self._round_start + self._round_index * self._round_stride) % self._round_size
                self._round_index += 1
                if i >= self._table.slots():
                    continue
                node_id = self._table.id_at(i)
                rec = self._table.get(node_id)
                if rec is not None and rec.status in _LIVE and not self._remote(rec):
                    return node_id
            n = self._table.slots()
            if n == 0:
                return None
            self._round_size = n
            self._round_index = 0
            self._round_start = self._rng.randrange(n)
            stride = self._rng.randrange(1, n) if n > 1 else 1
            while math.gcd(stride, n) != 1:
                stride = stride % (n - 1) + 1
            self._round_stride = stride
        return None

    def _start_probe(self, now: float) -> None:
        scale = self._scale()
        self._next_probe_at = now + self.profile.probe_interval * scale
        target = self._next_target()
        if target is None:
            return
        rec = self._table.get(target)
        assert rec is not None
        indirect_at = now + self.profile.probe_timeout * scale
        self._probe = self._begin_probe(rec, indirect_at, self._next_probe_at - 1e-6)

    def _start_wan_probe(self, now: float, wan: Profile) -> None:
        """The supernode tier's probe loop: the next contact, in turn, with the WAN timings
        (not stretched by this node's awareness, which its LAN measures)."""
        self._next_wan_probe_at = now + wan.probe_interval
        live = sorted(
            c for c in self._contacts if (r := self._table.get(c)) is not None and r.status in _LIVE
        )
        if not live:
            return
        rec = self._table.get(live[self._wan_turn % len(live)])
        self._wan_turn += 1
        assert rec is not None
        end_at = self._next_wan_probe_at - 1e-6
        self._wan_probe = self._begin_probe(rec, now + wan.probe_timeout, end_at)

    def _begin_probe(self, rec: MemberRecord, indirect_at: float, end_at: float) -> _Probe:
        """Ping *rec* now; the probe asks for help at *indirect_at* and ends at *end_at*."""
        target = rec.node_id
        self._probe_counter += 1
        probe = _Probe(
            number=self._probe_counter,
            target=target,
            address=rec.address,
            incarnation=rec.incarnation,
            indirect_at=indirect_at,
            end_at=end_at,
        )
        updates = self._piggyback(rec)
        if rec.status == SUSPECT:
            # Buddy system: tell a suspect it is suspected so it can refute at once.
            suspicion = self._suspicions.get(target)
            reporter = self._me.node_id
            if suspicion:
                reporter = next(iter(suspicion.confirmations))
            updates = [Suspect(target, rec.incarnation, reporter), *updates]
        self._stats["probes_sent"] += 1
        self._send_to(rec, Ping(self._probe_counter, target, tuple(updates)))
        return probe

    def _send_indirect(self, now: float, p: _Probe) -> None:
        p.indirect_sent = True
        target = self._table.get(p.target)
        if target is not None and self._remote(target):
            # Another site: only the other contacts (supernodes) can reach it.
            others = sorted(c for c in self._contacts if c != p.target and self._is_live(c))
            helpers = self._rng.sample(others, min(self.profile.indirect_checks, len(others)))
        else:
            helpers = self._random_live(
                self.profile.indirect_checks, exclude={p.target}, where=self._local
            )
        p.expected_nacks = len(helpers)
        for node_id in helpers:
            rec = self._table.get(node_id)
            if rec is not None:
                self._stats["indirect_probes"] += 1
                self._send_to(rec, PingReq(p.number, p.target, p.address, p.incarnation))

    def _finish_probe(self, now: float, p: _Probe) -> None:
        wan = p is self._wan_probe and self.wan is not None
        if wan:
            self._wan_probe = None
            if (
                not p.acked
                and now - p.end_at <= self.profile.probe_interval
                and p.target in self._contacts
            ):
                # A far site's silence says nothing of this node's health: no awareness. Nor
                # does the silence of a member that is no longer a contact (this node stopped
                # being its site's supernode meanwhile, so the other site stopped talking to
                # it): suspecting it after a heal made the sites' views disagree for a moment
                # (chaos seed 173 of the registry sweep).
                self._stats["probes_failed"] += 1
                rec = self._table.get(p.target)
                if rec is not None and rec.status in _LIVE:
                    self._apply(now, Suspect(p.target, rec.incarnation, self._me.node_id), None)
            return
        self._probe = None
        if p.acked:
            self._awareness = max(0, self._awareness - 1)
            return
        if now - p.end_at > self.profile.probe_interval:
            # We woke up far too late: we were stalled, the target probably was not.
            self._stats["late_wakeups"] += 1
            self._awareness = min(self.profile.awareness_max - 1, self._awareness + 1)
            return
        missing = p.expected_nacks - p.nacks if p.expected_nacks else 1
        if missing > 0:
            self._awareness = min(self.profile.awareness_max - 1, self._awareness + missing)
        self._stats["probes_failed"] += 1
        rec = self._table.get(p.target)
        if rec is None or rec.status not in _LIVE:
            return
        self._apply(now, Suspect(p.target, rec.incarnation, self._me.node_id), None)

    def _handle_ack(self, ack: Ack) -> None:
        for p in (self._probe, self._wan_probe):
            if p is not None and p.number == ack.probe and ack.target == p.target:
                p.acked = True
                return
        relay = self._relays.pop(ack.probe, None)
        if relay is not None and relay.target == ack.target:
            ack = Ack(relay.requester_probe, relay.target)
            self._send_member(relay.requester, relay.requester_id, ack)

    def _handle_ping_req(self, now: float, src: Address, sender: str, req: PingReq) -> None:
        if self._left:
            return
        self._probe_counter += 1
        # The nack must reach the requester before its probe period ends. It asked us
        # probe_timeout into its period, so it waits (probe_interval - probe_timeout) more; we
        # answer after 80% of that, leaving the rest for the two hops. (Waiting a whole
        # probe_timeout x our scale made every nack arrive just after the requester gave up, so
        # a failed probe with healthy helpers still raised its awareness by indirect_checks.)
        known = self._table.get(req.target)
        profile = self.profile if known is None else self._profile_of(known)
        window = profile.probe_interval - profile.probe_timeout
        deadline = now + 0.8 * window
        self._relays[self._probe_counter] = _Relay(src, sender, req.probe, req.target, deadline)
        incarnation = max(req.target_incarnation, -1 if known is None else known.incarnation)
        ping = Ping(self._probe_counter, req.target)
        self._send(req.target_address, ping, req.target, incarnation)

    # -- dissemination ------------------------------------------------------------------------

    def _piggyback(self, to: MemberRecord | None) -> list[Update]:
        """Queued updates for a datagram to *to* (``None``: a sender not known yet)."""
        if not self._queue.items:
            return []
        cross_limit = 0  # each live contact gets each publication wan.retransmit_mult times
        if self.wan is not None:
            live_contacts = sum(1 for c in self._contacts if self._is_live(c))
            cross_limit = live_contacts * self.wan.retransmit_mult
        return self._queue.take(
            self.piggyback_budget,
            self.profile.retransmit_limit(self._live),
            across=to is not None and self._remote(to),
            cross_limit=cross_limit,
        )

    def _gossip(self, now: float) -> None:
        if not self._queue.items:
            return
        targets = self._random_live(self.profile.gossip_fanout, where=self._local)
        # Every contact, every round: the one way this site's news reaches the other sites.
        targets += sorted(c for c in self._contacts if self._is_live(c))
        if self._dead:
            targets += self._recently_dead(now, 1)
        for node_id in targets:
            rec = self._table.get(node_id)
            if rec is None:
                continue
            updates = self._piggyback(rec)
            if updates:
                self._send_to(rec, Gossip(tuple(updates)))

    def _page_budget(self, peer: MemberRecord | None) -> int:
        """Bytes of records a push-pull page with *peer* may carry: :attr:`push_pull_budget`,
        or less with another site (or a peer not known yet, with sites) if the ``wan``
        profile says so (that path may be a relay with small frames)."""
        page = None if self.wan is None else self.wan.push_pull_page
        if page is None or (peer is not None and not self._remote(peer)):
            return self.push_pull_budget
        return min(page, self.push_pull_budget)

    def _state_page(self, start: int, budget: int) -> tuple[tuple[MemberRecord, ...], int]:
        """This node's record, then its other records from position *start* on, as many as
        fit *budget* bytes (with the extras on the first page); and the position of the first
        record left out (0: none was).

        Positions are those of the member table's order, which only grows at its end (a
        removed tombstone shifts the later ones by one: a record may then come twice or be
        missed until the next exchange)."""
        budget -= update_size(self._me)
        if start == 0:
            budget -= sum(update_size(e) for e in self._state_extras)
        members = [self._me]
        position = start
        records = self._table.records()
        for rec in itertools.islice(records, start, None) if start else records:
            budget -= update_size(rec)
            if budget < 0 and len(members) > 1:
                return tuple(members), position
            members.append(rec)
            position += 1
        return tuple(members), 0

    def _open_push_pull(
        self, address: Address, join: bool, peer: MemberRecord | None = None
    ) -> None:
        self._exchange_counter += 1
        to = None if peer is None else peer.node_id
        self._streams[self._exchange_counter] = (address, to, 0, 1)
        # A request carries the first page of our state (the peer learns the rest from its
        # own exchanges) and asks for the peer's from its start.
        members, _ = self._state_page(0, self._page_budget(peer))
        self._outputs.append(
            OpenStream(
                address,
                PushPull(members, self._state_extras, join, reply=False),
                self._exchange_counter,
                to,
                -1 if peer is None else peer.incarnation,
            )
        )

    def _merge(self, now: float, state: PushPull, origin: tuple[Address, str] | None) -> None:
        refuted = False
        # Re-gossip only a bounded number of what a merge teaches us: the rest is state the
        # peer spreads itself, and a node joining a big group must not flood it.
        budget = 64
        sender = state.members[0].node_id if state.members else self._me.node_id
        for rec in state.members:
            if rec.node_id == self._me.node_id:
                if rec.status in (DEAD, LEFT, SUSPECT) and rec.incarnation >= self._me.incarnation:
                    if rec.incarnation > self._me.incarnation:
                        self._refused["ahead of self"] += 1
                    refuted = self._refute() or refuted
                continue
            if rec.status == ALIVE:
                budget -= 1
                self._alive(now, rec, rebroadcast=budget >= 0)
            elif rec.status == SUSPECT:
                # A remote suspect is a suspicion, not news of life (memberlist does the same).
                # Taking it for "alive" brought a crashed member back to life: a node that had
                # declared it dead met, in a push-pull, the suspicion at the newer incarnation
                # the member refuted with before it crashed, and saw it "joined" (chaos seed
                # 8716). So a tombstone stays; a member unknown here, or known only at an older
                # incarnation, is learned (its record may carry new metadata) and suspected.
                cur = self._table.get(rec.node_id)
                if cur is None or (cur.status in _LIVE and cur.incarnation < rec.incarnation):
                    budget -= 1
                    self._alive(now, attrs.evolve(rec, status=ALIVE), rebroadcast=budget >= 0)
                self._apply(now, Suspect(rec.node_id, rec.incarnation, sender), origin)
            elif rec.status == LEFT:
                self._apply(now, Dead(rec.node_id, rec.incarnation, rec.node_id, True), origin)
            else:
                # A remote "dead" only makes us suspect, so a push-pull after a partition does
                # not kill nodes we can still reach (memberlist does the same).
                cur = self._table.get(rec.node_id)
                if cur is not None and cur.status in _LIVE and self._its_site_says(cur, sender):
                    # Another site's member, dead in the state of a member of its own site:
                    # that site's verdict, which stands as it does in gossip (the exchange
                    # carries it when its one gossip across was lost).
                    self._apply(now, Dead(rec.node_id, rec.incarnation, sender), origin)
                elif cur is not None and cur.status == ALIVE:
                    self._apply(now, Suspect(rec.node_id, rec.incarnation, sender), origin)
                    # Buddy system here too: tell the member at once so it can refute. Without
                    # this, after a partition healed, the far side's "dead" views (distinct
                    # reporters, so the timeout shrank to its minimum) killed live members that
                    # random gossip had not yet told they were suspected.
                    now_rec = self._table.get(rec.node_id)
                    if now_rec is not None and now_rec.status == SUSPECT and self._reachable(cur):
                        suspicion = Suspect(rec.node_id, now_rec.incarnation, sender)
                        self._send_to(cur, Gossip((suspicion,)))
        for extra in state.extras:
            self._apply(now, extra, origin, rebroadcast=False)
        if refuted and origin is not None:
            self._send_member(*origin, Gossip((self._me,)))

    def _reconnect(self, now: float) -> None:
        dead = (
            [r for r in self._table.records() if r.status == DEAD and self._reachable(r)]
            if self._table.slots() <= 4096
            else []
        )
        # A few at a time, in turn (not at random): after a partition most dead records may be
        # truly dead, and the one that is not must be found within a bounded time (memberlist
        # tries one at random every 30 s).
        if self._contacts:
            self._exchange_with_sites_after_deaths(now)
        if not dead:
            return
        count = min(_RECONNECT_TRIES, len(dead))
        start = self._reconnect_turn % len(dead)
        self._reconnect_turn += count
        for i in range(count):
            rec = dead[(start + i) % len(dead)]
            self._open_push_pull(rec.address, join=False, peer=rec)

    def _exchange_with_sites_after_deaths(self, now: float) -> None:
        """A supernode that saw a member die less than the ``wan`` ``gossip_to_dead`` ago (of
        its own site or another) makes a push-pull with one contact each reconnect interval
        (in turn): the one gossip of a verdict across the WAN may have been lost (the sites
        were cut off then), and only the sites' supernodes cross. Its own site's dead then
        reach the other sites, and a member of another site that refuted its death there is
        alive here again, within a reconnect interval instead of at whatever push-pull
        between the two supernodes happened to come next (minutes: the other site kept a dead
        member alive, or a live one dead; chaos seeds 21 and 108 of the registry sweep).

        So does a supernode that suspects a member of another site, with that site's contact:
        a suspicion of another site's member is that site's to answer, and what crossed once
        may have been lost either way. The exchange carries the suspicion there (the site
        suspects the member, tells it, and it refutes) and brings back the member's current
        record (a refutation that was lost on the way here, or the site's verdict). The ``wan``
        suspicion's shortest timeout (8 s) is longer than a reconnect interval with its jitter
        (6.25 s on the LAN), so it is checked at least once each time before it runs out (and
        handed on: such a suspicion is never acted on by a timer, see _suspicion_expired).
        Without it, a refutation lost across while the sites were cut off left the suspicion
        to run out, and the whole site declared the live member dead a few seconds after the
        faults (chaos seeds 58, 354 and 662 of the registry sweep)."""
        wan = self.wan
        if wan is None:
            return
        live = sorted(c for c in self._contacts if self._is_live(c))
        if not live:
            return
        chosen: list[str] = []
        if any(
            r.status == DEAD and now - self._since.get(r.node_id, -math.inf) < wan.gossip_to_dead
            for r in self._table.records()
        ):
            chosen.append(live[int(now) % len(live)])
        suspected = {
            rec.orchestra
            for node_id in self._suspicions
            if (rec := self._table.get(node_id)) is not None and self._remote(rec)
        }
        for contact in live:
            rec = self._table.get(contact)
            if rec is not None and rec.orchestra in suspected and contact not in chosen:
                chosen.append(contact)
        for contact in chosen:
            rec = self._table.get(contact)
            if rec is not None:
                self._open_push_pull(rec.address, join=False, peer=rec)

    def _exchange_with_a_site(self) -> None:
        """A supernode's periodic push-pull with one contact, in turn, every ``wan`` push-pull
        period (memberlist's periodic exchange, on the tier that crosses): only the sites'
        supernodes cross, so a record whose one crossing was lost (a member that joined
        another site while the sites were cut off) would otherwise wait for a push-pull that
        happened to pick a contact (chaos seed 2247 of the registry sweep: one site never
        learned a member of the other)."""
        live = sorted(c for c in self._contacts if self._is_live(c))
        if not live:
            return
        rec = self._table.get(live[self._site_turn % len(live)])
        self._site_turn += 1
        if rec is not None:
            self._open_push_pull(rec.address, join=False, peer=rec)

    def _reap(self, now: float) -> None:
        limit = now - self.profile.tombstone_timeout
        for node_id, since in list(self._since.items()):
            rec = self._table.get(node_id)
            if rec is not None and rec.status in (DEAD, LEFT) and since < limit:
                self._table.remove(node_id)
                del self._since[node_id]
                self._dead -= 1
                self._events.append(MemberEvent("reaped", _view(rec, since)))

    # -- applying updates ---------------------------------------------------------------------

    def _apply(
        self,
        now: float,
        update: Update,
        origin: tuple[Address, str] | None,
        rebroadcast: bool = True,
    ) -> None:
        """Apply one update; *origin* is the address and id of the node that sent it (``None``
        for this node's own conclusions)."""
        if isinstance(update, MemberRecord):
            self._alive(now, update, rebroadcast)
        elif isinstance(update, Suspect):
            self._suspect(now, update, origin)
        elif isinstance(update, Dead):
            self._dead_update(now, update, origin)
        else:
            new = self._remember_extension(update)
            # A lease is always handed up (the election dedupes and needs re-announcements and
            # push-pull state to repair its view); a publication only once. Either is relayed
            # by gossip only the first time this node sees it.
            if new or isinstance(update, Lease):
                self._events.append(UpdateReceived(update))
            if new and rebroadcast:
                self._queue.put(update)
            elif isinstance(update, Lease) and self._contacts and origin is not None:
                self._pass_on_reannouncement(now, update, origin[1])

    def _pass_on_reannouncement(self, now: float, lease: Lease, sender: str) -> None:
        """A lease record this node has seen already, re-announced by its holder: a supernode
        sends it across the tier boundary it came to, once a second per post at most (the
        holder's gossip brings each re-announcement several times): from a member of its own
        site on to each contact, from another site on to ``gossip_fanout`` random members of
        its own site (who relay nothing they have seen: no loop). A record is relayed by gossip
        only the first time a node sees it, and only a site's supernode gossips across: without
        this, a lease whose one crossing the WAN or the site's LAN lost (the sites were cut off
        then) reached the other site's members only at a push-pull that happened to carry it
        (minutes without a conductor or supernode in their view: chaos seeds 48 and 71 of the
        registry sweep)."""
        by = self._table.get(sender)
        if by is None or now - self._passed_on.get(lease.post, -1.0) < 1.0:
            return
        if len(self._passed_on) > 1024:
            self._passed_on.clear()
        self._passed_on[lease.post] = now
        if self._remote(by):
            targets = self._random_live(self.profile.gossip_fanout, where=self._local)
        else:
            targets = sorted(c for c in self._contacts if self._is_live(c))
        for node_id in targets:
            rec = self._table.get(node_id)
            if rec is not None:
                self._send_to(rec, Gossip((lease,)))

    def _remember_extension(self, update: Lease | Publish) -> bool:
        key = _seen_key(update)
        if key in self._seen_extensions:
            self._seen_extensions.move_to_end(key)
            return False
        self._seen_extensions[key] = None
        if len(self._seen_extensions) > 8192:
            self._seen_extensions.popitem(last=False)
        return True

    def _refute(self) -> bool:
        """Announce this node alive at its own incarnation + 1: never at a value taken from the
        news being refuted, which anyone could have chosen (an absurd one would push the
        incarnation out of range)."""
        if self._left or not self._raise_incarnation():
            return False
        self._stats["refutations"] += 1
        self._queue.put(self._me)
        return True

    def _raise_incarnation(self) -> bool:
        if self._me.incarnation >= MAX_COUNTER:
            self._refused["incarnation exhausted"] += 1
            return False
        self._me = attrs.evolve(self._me, incarnation=self._me.incarnation + 1)
        return True

    def _set(self, now: float, rec: MemberRecord) -> None:
        self._table.put(rec)
        self._since[rec.node_id] = now

    def _alive(self, now: float, rec: MemberRecord, rebroadcast: bool = True) -> None:
        me = self._me
        if rec.node_id == me.node_id:
            # Only this node raises its incarnation, and a restart starts above anything it
            # announced before: a record of it ahead of it was made up by someone else.
            if rec.incarnation > me.incarnation:
                self._refused["ahead of self"] += 1
            if rec.incarnation > me.incarnation or (
                rec.incarnation == me.incarnation and rec != me
            ):
                self._refute()
            return
        cur = self._table.get(rec.node_id)
        if cur is not None and rec.incarnation <= cur.incarnation:
            return
        self._set(now, rec)
        if rebroadcast:
            self._queue.put(rec)
        view = _view(rec, now)
        if cur is None or cur.status in (DEAD, LEFT):
            self._live += 1
            if cur is not None:
                self._dead -= 1
            self._events.append(MemberEvent("joined", view))
        elif cur.status == SUSPECT:
            self._suspicions.pop(rec.node_id, None)
            self._events.append(MemberEvent("alive", view))
        elif (cur.address, cur.meta, cur.name, cur.orchestra) != (
            rec.address,
            rec.meta,
            rec.name,
            rec.orchestra,
        ):
            self._events.append(MemberEvent("updated", view))
        if rec.path == me.path and not self._left:
            self._stats["path_conflicts"] += 1
            self._events.append(PathConflict(view))

    def _capped(self, node_id: str, incarnation: int, cur: MemberRecord) -> int:
        """The incarnation a suspicion or death notice about *cur* applies at: its own, or the
        member's as this node knows it if the notice is ahead. Only the member raises its
        incarnation and this node has not seen it do so: the number may be anyone's choice,
        and adopting it would put the member's own refutation (its incarnation + 1) behind."""
        if incarnation > cur.incarnation:
            self._refused["incarnation ahead"] += 1
            return cur.incarnation
        return incarnation

    def _suspect(self, now: float, s: Suspect, origin: tuple[Address, str] | None) -> None:
        if s.node_id == self._me.node_id:
            if s.incarnation > self._me.incarnation:
                self._refused["ahead of self"] += 1
            refuted = s.incarnation >= self._me.incarnation and self._refute()
            # A stale suspicion (older incarnation) means the sender missed our refutation:
            # answer it too, or it declares us dead at the old incarnation once its timeout
            # runs out (seen in simulated soaks under loss: a buddy ping carrying the stale
            # suspicion was acked, but the prober never learned the newer incarnation).
            if (refuted or self._stale_about_me(s.incarnation)) and origin is not None:
                self._send_member(*origin, Gossip((self._me,)))
            return
        cur = self._table.get(s.node_id)
        if cur is None or cur.status in (DEAD, LEFT) or s.incarnation < cur.incarnation:
            self._speak_for_site(cur, s.incarnation, origin, suspicion=True)
            return
        if s.incarnation > cur.incarnation:
            s = Suspect(s.node_id, self._capped(s.node_id, s.incarnation, cur), s.reporter)
        if cur.status == SUSPECT:
            suspicion = self._suspicions.get(s.node_id)
            if suspicion is not None and s.reporter not in suspicion.confirmations:
                suspicion.confirmations[s.reporter] = None
                suspicion.recompute()
                if len(suspicion.confirmations) <= suspicion.k + 1:
                    # Beyond k confirmations the timeout cannot shrink further: stop spreading.
                    self._queue.put(s)
            return
        rec = attrs.evolve(cur, status=SUSPECT, incarnation=s.incarnation)
        self._set(now, rec)
        profile = self._profile_of(cur)
        low, high = profile.suspicion_bounds(self._live)
        k = min(profile.indirect_checks, max(0, self._live - 2))
        suspicion = _Suspicion(now, {s.reporter: None}, k, low, high)
        suspicion.recompute()
        self._suspicions[s.node_id] = suspicion
        if s.reporter == self._me.node_id:
            self._stats["suspicions_raised"] += 1
        # Tell the suspect directly so it can refute before the news spreads (buddy system):
        # every node that starts suspecting it, not only the reporter, so one that learned the
        # suspicion by gossip but then missed the refutation's gossip gets the refutation as
        # the answer (see the stale case above). Without this, 1 s stalls under 5% loss at N=50
        # made a few nodes a minute declare a live node dead at the incarnation it had already
        # refuted. Above 64 members only ~64 random ones do, so the suspect's fan-in is bounded.
        if self._reachable(cur) and (
            s.reporter == self._me.node_id
            or self._live <= 64
            or self._rng.random() < 64 / self._live
        ):
            self._send_to(cur, Gossip((s,)))
        self._queue.put(s)
        self._events.append(MemberEvent("suspect", _view(rec, now)))

    def _stale_about_me(self, incarnation: int) -> bool:
        """Whether news about this node at *incarnation* is older than what it has announced."""
        return incarnation < self._me.incarnation and not self._left

    def _its_site_says(self, rec: MemberRecord, reporter: str) -> bool:
        """Whether a death notice about *rec*, a member of another site, comes from a member of
        its own orchestra: its LAN probed it, this node cannot, so the verdict stands."""
        if not self._remote(rec):
            return False
        by = self._table.get(reporter)
        return by is not None and by.orchestra == rec.orchestra

    def _speak_for_site(
        self,
        cur: MemberRecord | None,
        incarnation: int,
        origin: tuple[Address, str] | None,
        suspicion: bool = False,
    ) -> None:
        """A notice about *cur* that this node knows better, from a node on the other side of
        the site boundary from the member (only the contacts cross, so the sender cannot hear
        the member itself): this node answers for the member, as the member answers a stale
        notice about itself.

        - *cur* is an alive member of this node's own site, the notice (a suspicion or a
          death) is about an incarnation older than the one it refuted with, and the sender
          is of another site: answered with the member's current record. Without it, a
          refutation the WAN lost while the sites were cut off never reached the other site,
          which declared the live member dead and kept it dead until a push-pull between the
          two supernodes happened to pass it on (minutes: chaos seed 21 of the registry
          sweep).
        - *cur* is a member of another site and the sender is of this node's own site: a
          notice older than the member's alive record here is answered with the record, and
          a *suspicion* of a member this node holds dead or gone (at the suspicion's
          incarnation or later) with the death notice, so a member that missed its site's
          verdict or refutation does not hold a suspicion nobody ends (it hands it to its site
          again each time it runs out, see :meth:`_suspicion_expired`). A death notice is not
          answered with a death notice (two nodes that agree would answer each other for
          ever).
        """
        if cur is None or origin is None:
            return
        sender = self._table.get(origin[1])
        if sender is None:
            return
        if self._remote(cur):
            across = sender.orchestra == self._me.orchestra
        else:
            across = self._remote(sender)
        if not across:
            return
        if cur.status == ALIVE and incarnation < cur.incarnation:
            # (A member this node suspects too is not vouched for.)
            self._send_member(*origin, Gossip((cur,)))
        elif (
            suspicion
            and self._remote(cur)
            and cur.status in (DEAD, LEFT)
            and incarnation <= cur.incarnation
        ):
            notice = Dead(cur.node_id, cur.incarnation, self._me.node_id, cur.status == LEFT)
            self._send_member(*origin, Gossip((notice,)))

    def _suspicion_expired(self, now: float, node_id: str) -> None:
        suspicion = self._suspicions.pop(node_id, None)
        rec = self._table.get(node_id)
        if rec is None or rec.status != SUSPECT:
            return
        wan = self.wan
        if (
            suspicion is not None
            and wan is not None
            and not suspicion.told_again
            and node_id in self._contacts
        ):
            # A contact: this node's own wan probes checked it, but a probe carries the
            # suspicion to the contact only while the path works, and the sites may have been
            # cut off until a moment ago. Tell it once more and wait a wan probe timeout: a
            # live contact refutes within a round trip (chaos seed 2336 of the registry sweep:
            # a contact declared dead 0.4 s after the sites' partition healed, and back 50 ms
            # later).
            suspicion.told_again = True
            suspicion.not_before = now + wan.probe_timeout
            suspicion.recompute()
            self._suspicions[node_id] = suspicion
            reporter = next(iter(suspicion.confirmations), self._me.node_id)
            self._send_to(rec, Gossip((Suspect(node_id, rec.incarnation, reporter),)))
            return
        if (
            suspicion is not None
            and self._remote(rec)
            and node_id not in self._contacts
            and (suspicion.began is None or now - suspicion.began < 2 * suspicion.high)
        ):
            # A suspicion of another site's member that is not a contact (which this node's own
            # wan probes check) is that site's to answer, and this node cannot check it; what
            # crossed once may have been lost: the suspicion never reached the member's site (a
            # supernode held the member dead at an older incarnation then and dropped it, or
            # this node was the supernode when it raised it), or the member's refutation, or
            # its new record after a restart, never came back. So it is never acted on here:
            # each time it runs out, this node hands it to its site again (the supernode passes
            # it across, where the member hears of it and refutes, or its site answers with the
            # newer record; a member of this site that holds it dead answers with the death),
            # and a supernode checks it with the member's site at once (a push-pull with that
            # site's contact). What ends it is a verdict: a refutation, the member's own site's
            # death notice (by gossip or in a state exchange), or, for a site that vanished
            # whole, the supernode's verdict on each of its members as it becomes a contact.
            # (Chaos seeds 1, 58, 354 and 662 of the registry sweep: a live member declared
            # dead a few seconds after the faults.) Only if nobody answers for two of its
            # longest timeouts is it acted on, at its next time out: an incarnation only this
            # node ever heard of (the member lived at it a moment and died, and its site never
            # knew) has nobody to end it otherwise (chaos seed 16).
            if suspicion.began is None:
                suspicion.began = suspicion.start
            suspicion.start = now
            suspicion.recompute()
            self._suspicions[node_id] = suspicion
            reporter = next(iter(suspicion.confirmations), self._me.node_id)
            self._queue.put(Suspect(node_id, rec.incarnation, reporter))
            for contact in sorted(self._contacts):
                peer = self._table.get(contact)
                if peer is not None and peer.status in _LIVE and peer.orchestra == rec.orchestra:
                    self._open_push_pull(peer.address, join=False, peer=peer)
            return
        self._stats["deaths_declared"] += 1
        self._apply(now, Dead(node_id, rec.incarnation, self._me.node_id), None)

    def _dead_update(self, now: float, d: Dead, origin: tuple[Address, str] | None) -> None:
        if d.node_id == self._me.node_id:
            # Death or departure, this node refutes it while it runs: a departure notice about
            # a node that did not leave is forged (or from an earlier run of it).
            if self._left:
                return
            if d.incarnation > self._me.incarnation:
                self._refused["ahead of self"] += 1
            refuted = d.incarnation >= self._me.incarnation and self._refute()
            stale = self._stale_about_me(d.incarnation)  # as in _suspect
            if (refuted or stale) and origin is not None:
                self._send_member(*origin, Gossip((self._me,)))
            return
        cur = self._table.get(d.node_id)
        if cur is None or cur.status in (DEAD, LEFT) or d.incarnation < cur.incarnation:
            self._speak_for_site(cur, d.incarnation, origin)
            return
        if d.incarnation > cur.incarnation:
            capped = self._capped(d.node_id, d.incarnation, cur)
            d = Dead(d.node_id, capped, d.reporter, d.left)
        if not d.left and cur.status == ALIVE and not self._its_site_says(cur, d.reporter):
            # A death we saw no suspicion of: after a healed partition it is the other side's
            # verdict on a member this side can still reach. Suspect it instead: if it lives,
            # it refutes (we tell it); if it is dead, our own timer agrees within seconds.
            self._suspect(now, Suspect(d.node_id, d.incarnation, d.reporter), origin)
            return
        status = LEFT if d.left else DEAD
        rec = attrs.evolve(cur, status=status, incarnation=d.incarnation)
        self._set(now, rec)
        self._suspicions.pop(d.node_id, None)
        self._live -= 1
        self._dead += 1
        self._queue.put(d)
        self._events.append(MemberEvent("left" if d.left else "dead", _view(rec, now)))
        # Tell the member itself, as for a suspicion: one that is still running refutes at
        # once (a forged departure, a false death) instead of at the next full-state exchange.
        # One that really left or died does not hear it. Above 64 members about 64 do.
        if self._reachable(cur) and (self._live <= 64 or self._rng.random() < 64 / self._live):
            self._send_to(cur, Gossip((d,)))

    # -- helpers ------------------------------------------------------------------------------

    def _send(self, dest: Address, body: Message, to: str | None, incarnation: int) -> None:
        self._outputs.append(SendDatagram(dest, body, to, incarnation))

    def _send_to(self, rec: MemberRecord, body: Message) -> None:
        """Send *body* to the member *rec*, bound to it."""
        self._outputs.append(SendDatagram(rec.address, body, rec.node_id, rec.incarnation))

    def _send_member(self, dest: Address, node_id: str, body: Message) -> None:
        """Send *body* to *node_id* at *dest* (where it was heard from), bound to it."""
        rec = self._table.get(node_id)
        self._send(dest, body, node_id, -1 if rec is None else rec.incarnation)

    def _push_pull_period(self) -> float:
        return self.profile.push_pull_period(self._live)

    def _known_address(self, address: Address) -> bool:
        if self._table.slots() > 4096:
            return False
        return any(r.address == address and r.status in _LIVE for r in self._table.records())

    def _live_ids(self) -> list[str]:
        return [r.node_id for r in self._table.records() if r.status in _LIVE]

    def _remote(self, rec: MemberRecord) -> bool:
        """Whether *rec* is a member of another site (never, in a flat group)."""
        return self.wan is not None and rec.orchestra != self._me.orchestra

    def _local(self, rec: MemberRecord) -> bool:
        """Whether *rec* is a member of this node's own site (everyone, in a flat group)."""
        return not self._remote(rec)

    def _reachable(self, rec: MemberRecord) -> bool:
        """Whether this node talks to *rec* directly: its own site, or a contact."""
        return not self._remote(rec) or rec.node_id in self._contacts

    def _profile_of(self, rec: MemberRecord) -> Profile:
        """The timing that applies to *rec*: the WAN tier's for another site's member."""
        return self.wan if self.wan is not None and self._remote(rec) else self.profile

    def _is_live(self, node_id: str) -> bool:
        rec = self._table.get(node_id)
        return rec is not None and rec.status in _LIVE

    def _random_live(
        self,
        count: int,
        exclude: set[str] | frozenset[str] = frozenset(),
        where: Callable[[MemberRecord], bool] | None = None,
    ) -> list[str]:
        """Up to *count* random live members not in *exclude* (and, in a site tier, for which
        *where* holds)."""
        if self.wan is None:
            where = None  # a flat group: everyone
        n = self._table.slots()
        if n == 0 or count <= 0:
            return []
        if n <= 64:
            pool = [
                r.node_id
                for r in self._table.records()
                if r.status in _LIVE and r.node_id not in exclude and (where is None or where(r))
            ]
            return self._rng.sample(pool, min(count, len(pool)))
        chosen: list[str] = []
        for _ in range(count * 8):
            node_id = self._table.id_at(self._rng.randrange(n))
            if node_id in exclude or node_id in chosen:
                continue
            rec = self._table.get(node_id)
            if rec is not None and rec.status in _LIVE and (where is None or where(rec)):
                chosen.append(node_id)
                if len(chosen) == count:
                    break
        return chosen

    def _recently_dead(self, now: float, count: int) -> list[str]:
        limit = now - self.profile.gossip_to_dead
        pool = [
            node_id
            for node_id, since in self._since.items()
            if since >= limit
            and (rec := self._table.get(node_id)) is not None
            and rec.status == DEAD
            and self._reachable(rec)
        ]
        return self._rng.sample(pool, min(count, len(pool)))
