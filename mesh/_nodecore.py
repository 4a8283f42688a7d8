"""The whole protocol of one node as one sans-IO state machine.

:class:`NodeCore` composes the membership, election and clock cores and publications, and is
what both drivers run: the trio runtime (:mod:`mesh._node`) and the simulator
(:mod:`mesh._sim`). It owns the routing between the cores, so neither driver knows how a lease,
a clock sample or a publication travels:

- membership events rebuild the election's view of the candidates;
- lease records travel as gossip updates (and in every push-pull);
- election events choose the clock's time reference: the conductor if there is one, else the
  longest-serving supernode. That node is the *top* of its site's clock: it follows nobody on
  the LAN, and with an outside clock (``use_external_clock``: the registry) it follows that
  clock while it answers and shares this node's lineage, and runs on its own otherwise (the LAN
  never waits for the registry);
- clock lineages (:mod:`mesh._lineage`): a node whose clock has kept time apart from a peer's
  (its lineage id, in its metadata, differs) probes it; the younger lineage steps once, forward,
  to the older one. The node that finds out announces the step in its metadata (a federation
  time of its lineage, a size, the older lineage), every node of its lineage copies the earliest
  announcement it hears, and all of them step at that same federation time (at once, for a
  node alone in its lineage: a node joining a federation). A follower never follows a
  reference of another lineage: it keeps its own time until the two are one. A top older than
  the registry hands the registry its epoch (:class:`EpochOffer`). In a keyed federation
  (``epoch_seal``) the offer carries a tag by the federation key (over the registry's current
  generation of the federation, so a handover from before a reset never verifies after it),
  and of the handovers the registry keeps, the node takes the oldest whose tag verifies: the
  others are ignored (counted and reported); none at all is no time (the node keeps its own).
  Every step is a
  :class:`ClockStepped` event;
- clock requests go to the reference's gossip address; every node answers them;
- requests for the outside world (conductor claims for the arbiter, clock requests and epoch
  offers for the external clock) come out of :meth:`NodeCore.take_external_requests`, and the
  answers come back through :meth:`NodeCore.handle_claim_answer` and
  :meth:`NodeCore.handle_external_clock_reply`.

``now`` is the node's local time everywhere (monotonic, plus injected skew and drift); the
election runs on federation time, which this class converts.

Member metadata carries what other cores need to know of a node, under short keys:
``j`` its join time (wall clock at start; only used to rank candidates), ``s`` / ``c`` whether it
is a supernode / conductor candidate, ``a`` while the arbiter refuses it the conductor post,
``l`` its clock lineage, ``ls`` a step it announced (``[federation time, size, new lineage]``),
and whatever the extensions add.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeAlias

import attrs

from mesh._clock import MAX_REPORTED_ERROR, ClockConfig, ClockCore, ClockSnapshot
from mesh._election import (
    Candidate,
    ClaimAnswer,
    ClaimRequest,
    ConductorArbiter,
    ElectionCore,
    ElectionEvent,
    best_candidate,
    post_orchestra,
    supernode_post,
)
from mesh._events import ClockStepped, NodeEvent, Publication, TimeSourceChanged
from mesh._lineage import (
    MAX_DECISION_BOUND,
    EpochSeal,
    Handover,
    LineageProbes,
    Meeting,
    lineage_id,
    should_join,
)
from mesh._membership import (
    MemberEvent,
    Membership,
    MembershipOutput,
    SendDatagram,
    Snapshot,
    UpdateReceived,
)
from mesh._profiles import Profile
from mesh._wire import (
    Address,
    ClockReply,
    ClockRequest,
    Lease,
    MemberRecord,
    Message,
    Publish,
    PushPull,
    Value,
    check_value,
    update_size,
)

__all__ = [
    "ClockStepped",
    "EpochOffer",
    "ExternalRequest",
    "NodeCore",
    "NodeEvent",
    "Publication",
    "TimeSourceChanged",
]


@attrs.frozen
class EpochOffer:
    """Hand the external clock (the registry) this federation's time: its lineage is older
    than the registry's (or the registry has none, after a reset or an empty restart).
    ``epoch`` is the registry's own clock reading at which federation time was 0, measured
    NTP-style (so it does not depend on how long the offer takes to arrive). ``tag`` signs
    them by the federation key (see :class:`~mesh._lineage.EpochSeal`; ``None`` in an open
    federation) at the registry's ``generation`` of the federation (as last answered; the
    registry refuses an offer for another one): the registry keeps it with the epoch and hands
    it back with it."""

    lineage: str
    epoch: float
    tag: str | None = None
    generation: str | None = None


ExternalRequest: TypeAlias = ClaimRequest | ClockRequest | EpochOffer
"""What :meth:`NodeCore.take_external_requests` returns for the driver to carry."""


_MAX_PUBLISH = 800
_CORE_META = ("j", "s", "c", "l", "ls", "a")
_STEP_LEAD = 1.0  # federation seconds between announcing a step and making it (with followers)
_EXT_PROBE_INTERVAL = 1.0  # while not following the external clock, probe it this often
_EXT_TIMEOUT = 3.0  # following it, without a usable answer for this long: run on our own
_EXT_OFFER_INTERVAL = 1.0
_EXT_DECISION_BOUND = 0.25  # an external probe this uncertain decides no lineage question
_MAX_HANDOVERS = 64  # handovers of one answer looked at (the registry keeps fewer)
_EXT_SETTLE = 1.0  # a young clock meets its LAN's lineages before the registry's
_JOIN_WAIT = 0.5  # a site's reference measures every lineage around before it joins one
_META_LAG = 2.0  # how long the metadata of a node that stepped with this one may lag
_MAX_EXTERNAL = 32  # requests kept for the driver (the oldest go first)


class NodeCore:
    """Membership, elections, the federation clock and publications of one node.

    Drive it like :class:`~mesh._membership.Membership` (the simulator's ``SimCore``).
    *supernode* / *conductor* are the node's candidacy flags; *joined_at* ranks it among
    candidates (earlier is better), goes in its metadata and names the clock lineage it founds.
    *arbiter* turns on arbitration of the conductor post by an outside arbiter (the registry):
    claims then come out of :meth:`take_external_requests`. *epoch_seal* (a keyed federation)
    signs this node's epoch offers and is the only way the external clock's epoch is taken.
    *wan_profile* makes every orchestra a site of its own (see :mod:`mesh._membership`): this
    node talks to its own orchestra only, and while it is its orchestra's supernode, also to
    the other orchestras' supernodes, with these timings (see :meth:`_tier_contacts`).
    """

    def __init__(
        self,
        me: MemberRecord,
        profile: Profile,
        *,
        now: float,
        rng: random.Random,
        snapshot: Snapshot | None = None,
        supernode: bool = False,
        conductor: bool = False,
        joined_at: float = 0.0,
        clock_config: ClockConfig | None = None,
        arbiter: ConductorArbiter | None = None,
        election_settle: float = 1.0,
        epoch_seal: EpochSeal | None = None,
        wan_profile: Profile | None = None,
    ) -> None:
        self.lineage_id = lineage_id(me.node_id, joined_at)
        """The clock lineage this node's federation time belongs to (see :mod:`mesh._lineage`)."""
        meta = dict(me.meta)
        meta["j"] = joined_at
        meta["l"] = self.lineage_id
        if supernode:
            meta["s"] = True
        if conductor:
            meta["c"] = True
        me = attrs.evolve(me, meta=meta)
        self.membership = Membership(
            me, profile, now=now, rng=rng, snapshot=snapshot, wan=wan_profile
        )
        self.clock = ClockCore(
            now, reference_id=me.node_id, config=clock_config, step_on_first_sync=False
        )
        self.election = ElectionCore(
            me.node_id,
            self.clock.federation_time(now),
            arbiter=arbiter,
            settle_time=election_settle,
            # Holders re-announce often enough that a node whose view went stale (a stall, a
            # partition that healed without deaths) is corrected within seconds; a lease is a
            # 70-byte update, so this costs little.
            reannounce_interval=3.0,
        )
        self._events: list[NodeEvent] = []
        self._outputs: list[MembershipOutput] = []
        self._published = 0
        self._time_source: tuple[str | None, bool] | None = None
        self._top = True  # this node is its site's reference (follows nobody on the LAN)
        self._follow: str | None = None  # the elected reference, when it is another node
        self._reference_start: object = None  # the followed node's start time ("j")
        self._candidates_dirty = True
        self._source_dirty = False
        self._last_now = now
        # Lineages.
        self._founded = True  # still in the lineage this run founded
        self._settled = False  # ... and found to be the oldest around (see _provisional)
        self._probes = LineageProbes()
        # peer -> (its lineage, whether it was this node's reference, whether to join it)
        self._meetings: dict[str, tuple[str, bool, bool]] = {}
        self._best_meeting: dict[str, float] = {}  # the least lineage-probe bound per peer
        self._joins: dict[str, tuple[str, Meeting]] = {}  # peer -> its older lineage, how much
        self._first_join: dict[str, float] = {}  # older lineage -> when first found
        self._differing: list[str] = []  # live peers of another lineage
        self._same = 0  # live peers of this node's lineage
        self._lineage_due: float | None = None
        self._started = now
        self._previous_lineage = ("", -math.inf)  # (the lineage this node left, when)
        self._group_step = False  # the pending step is the whole lineage's (announced)
        # (at, size, lineage, uncertainty: how far the step may leave the top of the chain
        # from the time stepped to, the largest announced with it or measured here)
        self._pending_step: tuple[float, float, str, float] | None = None
        self._steps = 0
        self._last_step: ClockStepped | None = None
        # The external clock (the registry) and the arbiter.
        self._external: str | None = None
        self._ext_lineage: str | None = None  # its lineage as last answered (None: no epoch)
        self._ext_last_ok = -math.inf  # local time of its last usable answer
        self._ext_probe_due = -math.inf
        self._ext_offer_due = -math.inf
        self._ext_bound = (math.inf, now)  # cross-site bound when last following it, and when
        # The last meeting with its lineage that this node announced a step for, as (the
        # registry's federation time minus ours, its bound, the registry's lineage, local time
        # then), until this node's lineage changes.
        self._ext_meeting: tuple[float, float, str, float] | None = None
        self._seal = epoch_seal
        self._ext_refused = 0  # epochs of the external clock without a valid tag (keyed)
        self._ext_refused_seen: frozenset[Handover] = frozenset()  # last answer's, counted once
        self._ext_generation: str | None = None  # the registry's generation, as last answered
        self._external_requests: list[ExternalRequest] = []
        self._direct: frozenset[str] = frozenset()  # other sites' members reached directly
        self._deadband = False  # what the clock was last told (see _choose_time_source)
        self._refresh(now)

    # -- identity -----------------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        """This node's id."""
        return self.membership.node_id

    @property
    def incarnation(self) -> int:
        """This node's incarnation."""
        return self.membership.incarnation

    # -- driver interface ---------------------------------------------------------------------

    def add_candidate(self, now: float, address: Address) -> None:
        """Discovery proposes a peer address."""
        self.membership.add_candidate(now, address)
        self._refresh(now)

    def handle_message(self, now: float, src: Address, sender: str, body: Message) -> None:
        """One decoded datagram."""
        self._apply_step(now)
        if isinstance(body, ClockRequest):
            reply = self.clock.handle_request(now, body)
            if LineageProbes.owns(body):
                pass  # a lineage question gets this clock's own time, young or not
            elif self._provisional():
                # A young clock that may yet adopt an older lineage: nothing to learn from it.
                reply = attrs.evolve(reply, error_bound=MAX_REPORTED_ERROR, synced=False)
            elif self._top:
                # The site's reference: the LAN's time is synced whatever the registry does;
                # the bound is against the registry (unknown: none was ever followed).
                bound = min(self._cross_bound(now), MAX_REPORTED_ERROR)
                reply = attrs.evolve(reply, error_bound=bound, synced=True)
            self._outputs.append(SendDatagram(src, reply, sender))
        elif isinstance(body, ClockReply):
            if LineageProbes.owns(body):
                fed = self.clock.federation_time(now)
                meeting = self._probes.handle_reply(now, fed, body, sender)
                if meeting is not None:
                    self._met_peer(now, meeting)
            else:
                self.clock.handle_reply(now, body, sender)
        else:
            self.membership.handle_message(now, src, sender, body)
        self._refresh(now)

    def stamp(self, now: float, body: Message) -> Message:
        """*body*, about to be sent at local time *now*, with its clock timestamps moved to
        *now* (a clock request's ``t1``, a clock reply's ``t3``); other messages unchanged.

        A driver whose sending takes real time (the trio runtime, the registry bridge) calls it
        right before sending, so the timestamps say when the exchange really left."""
        if isinstance(body, ClockRequest):
            if LineageProbes.owns(body):
                return self._probes.stamp(now, self.clock.federation_time(now), body)
            return self.clock.stamp_request(now, body)
        if isinstance(body, ClockReply):
            return self.clock.stamp_reply(now, body)
        return body

    def handle_stream(self, now: float, src: Address, sender: str, body: PushPull) -> PushPull:
        """One incoming push-pull; returns the reply."""
        reply = self.membership.handle_stream(now, src, sender, body)
        self._refresh(now)
        return reply

    def handle_stream_reply(self, now: float, exchange: int, reply: PushPull | None) -> None:
        """The reply to an outgoing push-pull (``None`` if it failed)."""
        self.membership.handle_stream_reply(now, exchange, reply)
        self._refresh(now)

    def hold_claims(self) -> None:
        """Make no election claim until :meth:`discovery_started`: a driver whose node looks for
        peers only a while after it made the core holds them from the start (see
        :meth:`ElectionCore.hold_claims`)."""
        self.election.hold_claims()

    def discovery_started(self, now: float) -> None:
        """The node looks for peers from local time *now*: its election settles from there
        (the driver routes the outputs afterwards, as after any input)."""
        self.election.settle(self.clock.federation_time(now))

    def handle_timer(self, now: float) -> None:
        """Run due timers."""
        self._apply_step(now)
        self.membership.handle_timer(now)
        self.clock.handle_timer(now)
        self.election.handle_timer(self.clock.federation_time(now))
        self._external_tick(now)
        self._refresh(now)

    def next_deadline(self) -> float:
        """When :meth:`handle_timer` is next due (local time)."""
        deadline = self.membership.next_deadline()
        clock = self.clock.next_deadline()
        if clock is not None:
            deadline = min(deadline, clock)
        if self._lineage_due is not None:
            deadline = min(deadline, self._lineage_due)
        local = self._last_now
        fed_now = self.clock.federation_time(local)
        election = self.election.next_deadline()
        if election is not None:
            # Federation time runs at (almost) the local rate: convert through the offset.
            deadline = min(deadline, local + max(0.0, election - fed_now) + 1e-6)
        if self._pending_step is not None:
            deadline = min(deadline, local + max(0.0, self._pending_step[0] - fed_now) + 1e-6)
        if self._external is not None and self._top:
            if self._time_source == (self._external, False):
                deadline = min(deadline, self._ext_last_ok + _EXT_TIMEOUT + 1e-6)
            elif self._pending_step is None:  # (no probe while a step is coming)
                deadline = min(deadline, self._ext_probe_due)
        return deadline

    def take_outputs(self) -> list[MembershipOutput]:
        """What to send."""
        out = self._outputs + self.membership.take_outputs()
        self._outputs = []
        return out

    def take_events(self) -> list[NodeEvent]:
        """What happened."""
        out, self._events = self._events, []
        return out

    # -- the outside world: the arbiter and the external clock -------------------------------

    def use_external_clock(self, now: float, source: str | None) -> None:
        """Take time from *source*, a clock outside the mesh (the registry): this node follows
        it while it is its site's reference and the source answers in this node's lineage
        (an older source lineage is stepped to; a younger one, or none, is offered this one);
        every other node follows its reference as always. ``None`` undoes it. Requests to
        *source* come out of :meth:`take_external_requests`; answers go to
        :meth:`handle_external_clock_reply`."""
        self._external = source
        self._ext_lineage = None
        self._ext_last_ok = -math.inf
        self._ext_probe_due = now
        self._source_dirty = True
        self._refresh(now)

    def take_external_requests(self) -> list[ExternalRequest]:
        """What the driver should carry outside the mesh: :class:`~mesh._election.ClaimRequest`
        (to the arbiter), :class:`~mesh._wire.ClockRequest` (to the external clock; stamp it
        with :meth:`stamp` as it leaves) and :class:`EpochOffer` (to the external clock)."""
        out, self._external_requests = self._external_requests, []
        return out

    def has_external_requests(self) -> bool:
        """Whether :meth:`take_external_requests` has anything (cheap; for a driver's wake-up)."""
        return bool(self._external_requests)

    def handle_external_clock_reply(
        self,
        now: float,
        reply: ClockReply,
        source: str,
        handovers: Sequence[Handover] = (),
        generation: str | None = None,
    ) -> bool:
        """The external clock's answer to a request, received at local time *now*: its own
        clock readings (``t2``, ``t3``: the registry host's clock), the *handovers* it keeps
        (epochs on that clock with their lineage and tag; none: it has no time, after a reset
        or an empty restart) and its *generation* of the federation (replaced at every reset;
        tags cover it). The federation's time there is the oldest handover, in a keyed
        federation the oldest whose tag verifies (the others: see :attr:`external_refused`).
        Returns whether the clock took it as a sample."""
        self._apply_step(now)
        if source != self._external:
            return False
        self._ext_generation = generation
        chosen = self._choose(now, handovers, generation or "")
        epoch = None if chosen is None else chosen.epoch
        lineage = None if chosen is None else chosen.lineage
        self._set_available(now, True)
        used = False
        fed = self.clock.federation_time(now)
        if LineageProbes.owns(reply):
            meeting = self._probes.handle_reply(now, fed, reply, source)
            if meeting is not None:
                self._ext_last_ok = now
                self._ext_lineage = lineage if epoch is not None else None
                self._met_external(now, meeting, epoch, self._ext_lineage)
            self._refresh(now)
            return False
        if epoch is None:
            lineage = None
        else:
            reply = attrs.evolve(reply, t2=reply.t2 - epoch, t3=reply.t3 - epoch)
        if lineage is not None and lineage == self.lineage_id:
            self._ext_lineage = lineage
            used = self.clock.handle_reply(now, reply, source)
            if used:
                self._ext_last_ok = now
        elif self._time_source == (source, False):
            # The registry's time is no longer this lineage's (reset, emptied, or it took an
            # older site's): run on our own, and find out at once.
            self._ext_lineage = lineage
            self._ext_probe_due = now
            self._source_dirty = True
        self._refresh(now)
        return used

    def set_epoch_seal(self, seal: EpochSeal | None) -> None:
        """The federation's keys changed (a key rotation while the node runs): sign and verify
        epoch handovers with *seal* from now on."""
        self._seal = seal

    def _choose(
        self, now: float, handovers: Sequence[Handover], generation: str
    ) -> Handover | None:
        """The handover that is the federation's time at the external clock: the oldest; in a
        keyed federation the oldest whose tag a key of this node verifies at *generation*.
        Each handover that does not verify is counted once while the registry keeps it,
        unless it is the registry's own epoch (set by a first registration, named
        ``registry-<epoch>``, never signed: skipped without a word).

        This node's own lineage, signed by a key other than the one it signs with now (a key
        rotation), is signed again: the same epoch, handed over with the new key's tag (the
        registry takes that), so the old key can be retired."""
        ordered = sorted(handovers[:_MAX_HANDOVERS], key=lambda h: h.epoch)
        seal = self._seal
        if seal is None:
            return ordered[0] if ordered else None
        chosen: Handover | None = None
        refused: set[Handover] = set()
        for handover in ordered:
            epoch, lineage, tag = handover.epoch, handover.lineage, handover.tag
            if seal.verifies(generation, epoch, lineage, tag):
                chosen = chosen or handover
            elif tag is not None or lineage != f"registry-{epoch:.6f}":
                refused.add(handover)
        self._ext_refused += len(refused - self._ext_refused_seen)
        self._ext_refused_seen = frozenset(refused)
        if (
            chosen is not None
            and chosen.lineage == self.lineage_id
            and not str(chosen.tag).startswith(f"{seal.keyring.primary}.")
            and now >= self._ext_offer_due
        ):
            self._ext_offer_due = now + _EXT_OFFER_INTERVAL
            self._push_external(self._offer(chosen.epoch))
        return chosen

    def _offer(self, epoch: float) -> EpochOffer:
        """This node's lineage at *epoch* for the external clock, signed in a keyed
        federation at the registry's generation as last answered."""
        generation = self._ext_generation
        seal = self._seal
        tag = None if seal is None else seal.tag(generation or "", epoch, self.lineage_id)
        return EpochOffer(self.lineage_id, epoch, tag, generation)

    @property
    def external_refused(self) -> int:
        """How many epochs (each counted once) the external clock answered with that this
        node did not take, their tag not verifying with a key of its own (keyed federation;
        the registry's own epoch, which no node signed, is not counted)."""
        return self._ext_refused

    def set_external_available(self, now: float, available: bool) -> None:
        """The driver reached the outside (``True``) or failed to (``False``): while the
        registry is unreachable the local rule elects the conductor and the site's reference
        runs on its own."""
        self._set_available(now, available)
        if not available and self._time_source == (self._external, False):
            self._source_dirty = True
            self._ext_last_ok = -math.inf
        self._refresh(now)

    def handle_claim_answer(self, now: float, answer: ClaimAnswer) -> None:
        """The arbiter's answer to a conductor claim (see
        :meth:`~mesh._election.ElectionCore.handle_claim_answer`)."""
        self._apply_step(now)
        self.election.handle_claim_answer(self.clock.federation_time(now), answer)
        self._refresh(now)

    # -- queries ------------------------------------------------------------------------------

    def federation_time(self, now: float) -> float:
        """Federation time at local time *now* (never decreases)."""
        return self.clock.federation_time(now)

    def clock_snapshot(self, now: float) -> ClockSnapshot:
        """The clock's state (offset, error bound, reference, synced...). A site's reference
        (the top of its clock) is synced and agrees with itself exactly on the LAN
        (``lan_error_bound`` 0); its ``error_bound`` is against the external clock."""
        snap = self.clock.snapshot(now)
        if self._top:
            snap = attrs.evolve(
                snap,
                is_reference=True,
                synced=True,
                lan_error_bound=0.0,
                error_bound=self._cross_bound(now),
            )
        return snap

    def lineage_status(self, now: float) -> dict[str, Any]:
        """The clock's lineage and its outside clock, as plain data for the status API:
        ``lineage``, ``steps`` (how many :class:`ClockStepped`), ``last_step``, ``pending_step``,
        ``provisional``, and ``external`` (``source``, ``state``: ``following`` it, ``free`` (it
        answers, not yet in this lineage), ``unreached``, or ``idle`` when this node is not its
        site's reference; ``lineage``; ``refused``: epochs it answered with whose tag did not
        verify, see :attr:`external_refused`)."""
        last = self._last_step
        pending = self._pending_step
        external: dict[str, Any] | None = None
        if self._external is not None:
            if not self._top:
                state = "idle"  # the site's reference follows it, not this node
            elif self._time_source == (self._external, False):
                state = "following"
            elif now - self._ext_last_ok <= _EXT_TIMEOUT:
                state = "free"  # answering, but not (yet) in this node's lineage
            else:
                state = "unreached"
            external = {
                "source": self._external,
                "state": state,
                "lineage": self._ext_lineage,
                "refused": self._ext_refused,
            }
        return {
            "lineage": self.lineage_id,
            "steps": self._steps,
            "last_step": None if last is None else attrs.asdict(last),
            "pending_step": None
            if pending is None
            else {
                "federation_time": pending[0],
                "size": pending[1],
                "lineage": pending[2],
                "uncertainty": pending[3],
            },
            "provisional": self._provisional(),
            "external": external,
        }

    def conductor(self) -> str | None:
        """The conductor's node id in this node's view."""
        return self.election.conductor()

    def supernode(self, orchestra: str) -> str | None:
        """The node id of *orchestra*'s supernode in this node's view."""
        return self.election.supernode(orchestra)

    def supernodes(self) -> dict[str, str]:
        """orchestra -> supernode id, for every orchestra with a supernode."""
        out = {}
        for lease in self.election.leases():
            orchestra = post_orchestra(lease.post)
            holder = self.election.holder(lease.post)
            if orchestra is not None and holder is not None:
                out[orchestra] = holder
        return out

    def path_of(self, node_id: str | None) -> str | None:
        """The path of *node_id*, if known."""
        if node_id is None:
            return None
        view = self.membership.member(node_id)
        return None if view is None else view.path

    # -- application --------------------------------------------------------------------------

    def publish(self, now: float, topic: str, payload: Value) -> Publication:
        """Send *payload* on *topic* to every node (this one included: the returned
        :class:`Publication` is also emitted as an event here). Raises ValueError if the
        payload is not plain data or does not fit in one datagram."""
        check_value(payload, "payload")
        update = Publish(self.node_id, self._published + 1, topic, payload)
        size = update_size(update)
        if size > _MAX_PUBLISH:
            raise ValueError(
                f"publication of {size} bytes is over the {_MAX_PUBLISH}-byte limit; "
                "send large data with node.request"
            )
        self._published += 1
        self.membership.broadcast(update)
        publication = Publication(
            topic, payload, self.node_id, self.path_of(self.node_id), self._published
        )
        self._events.append(publication)
        return publication

    def update_meta(self, now: float, meta: Mapping[str, Value]) -> None:
        """Replace this node's extension metadata (the core's own keys are kept)."""
        own = {k: v for k, v in self.membership.me.meta.items() if k in _CORE_META}
        self.membership.update_meta(now, {**meta, **own})
        self._refresh(now)

    def leave(self, now: float) -> None:
        """Leave gracefully, handing every post this node holds to its best successor."""
        handoffs = self.election.handoff(self.clock.federation_time(now))
        self.membership.leave(now, extras=handoffs)
        self._refresh(now)

    # -- internals: routing -------------------------------------------------------------------

    def _candidates(self) -> list[Candidate]:
        out = []
        for view in self.membership.members():
            meta = view.meta
            joined = meta.get("j", math.inf)
            is_self = view.node_id == self.node_id
            out.append(
                Candidate(
                    view.node_id,
                    view.orchestra,
                    supernode_flag=meta.get("s") is True,
                    # A node the arbiter refused stays out of the post (it says so in "a");
                    # this node's own deferral is the election core's to apply.
                    conductor_flag=meta.get("c") is True and (is_self or meta.get("a") is not True),
                    joined_at=float(joined) if isinstance(joined, int | float) else math.inf,
                    alive=view.is_live and not (is_self and self.membership.has_left),
                )
            )
        return out

    def _refresh(self, now: float) -> None:
        """Route what the cores produced after an input."""
        self._last_now = now
        fed = self.clock.federation_time(now)
        members_changed = False
        for event in self.membership.take_events():
            if isinstance(event, UpdateReceived):
                update = event.update
                if isinstance(update, Publish):
                    self._events.append(
                        Publication(
                            update.topic,
                            update.payload,
                            update.origin,
                            self.path_of(update.origin),
                            update.number,
                        )
                    )
                else:
                    self.election.handle_lease(fed, update)
            else:
                if isinstance(event, MemberEvent):
                    self._candidates_dirty = True
                self._events.append(event)
        if self._candidates_dirty:
            self._candidates_dirty = False
            members_changed = True
            candidates = self._candidates()
            self.election.update_members(fed, candidates)
            self.clock.set_group_size(sum(c.alive for c in candidates))
            self._count_lineages()
        leases: list[Lease] = []
        for out in self.election.take_outputs():
            if isinstance(out, ClaimRequest):
                self._push_external(out)
            else:
                leases.append(out)
        for lease in leases:
            self.membership.broadcast(lease)
        if leases:
            self.membership.set_state_extras(self.election.leases())
        events: list[ElectionEvent] = self.election.take_events()
        self._events.extend(events)
        self._sync_deferral(now)
        if events or members_changed:
            self.membership.set_contacts(self._tier_contacts())
        if events or members_changed or self._source_dirty or self._time_source is None:
            self._source_dirty = False
            self._choose_time_source(now)
        self._watch_reference_restart(now)
        if members_changed:
            self._watch_announced_steps(now)
        self._probe_lineages(now)
        for dest, request in self.clock.take_outputs():
            if dest == self._external:
                self._push_external(request)
                continue
            view = self.membership.member(dest)
            if view is not None and view.is_live:
                self._outputs.append(SendDatagram(view.address, request, dest, view.incarnation))

    def _tier_contacts(self) -> list[str]:
        """With sites (``wan_profile``): while this node is its orchestra's supernode, each
        other orchestra's supernode, or, while that post is vacant in this view (its holder
        died), its best live candidate (who is about to claim it; if that one is cut off too,
        its death makes the next one the contact, so a site that vanished is found dead
        member by member). Nobody otherwise: members talk to their own site only."""
        membership = self.membership
        mine = membership.me.orchestra
        if membership.wan is None or self.election.supernode(mine) != self.node_id:
            return []
        candidates = self._candidates()
        contacts = []
        for orchestra in sorted({c.orchestra for c in candidates} - {mine}):
            post = supernode_post(orchestra)
            holder = self.election.holder(post)
            if holder is None:
                best = best_candidate(post, candidates)
                holder = None if best is None else best.node_id
            if holder is not None:
                contacts.append(holder)
        return contacts

    def _push_external(self, request: ExternalRequest) -> None:
        self._external_requests = [*self._external_requests[1 - _MAX_EXTERNAL :], request]

    def _set_meta(self, now: float, **changes: Value) -> None:
        """Change the core's own keys of this node's metadata (``None`` removes a key)."""
        meta = dict(self.membership.me.meta)
        for key, value in changes.items():
            if value is None:
                meta.pop(key, None)
            else:
                meta[key] = value
        if meta != self.membership.me.meta:
            self.membership.update_meta(now, meta)

    def _sync_deferral(self, now: float) -> None:
        deferred = self.election.deferred
        if deferred != (self.membership.me.meta.get("a") is True):
            self._set_meta(now, a=True if deferred else None)

    def _set_available(self, now: float, available: bool) -> None:
        self.election.set_arbiter_available(self.clock.federation_time(now), available)

    # -- internals: the time reference --------------------------------------------------------

    def _elected_reference(self) -> str | None:
        return self._within_reach(self._federation_reference())

    def _federation_reference(self) -> str | None:
        conductor = self.election.conductor()
        if conductor is not None:
            return conductor
        best: tuple[float, str] | None = None
        for lease in self.election.leases():
            if post_orchestra(lease.post) is None:
                continue
            holder = self.election.holder(lease.post)
            if holder is not None and (best is None or (lease.tenure_start, holder) < best):
                best = (lease.tenure_start, holder)
        return None if best is None else best[1]

    def _within_reach(self, reference: str | None) -> str | None:
        """With sites, the node to follow for *reference*'s time when it is at another site: a
        member follows its own site's supernode; that supernode follows the reference if it is
        its contact, else the reference's site's supernode (which follows on towards it), but
        only while the driver says that node is reached directly (:meth:`set_direct`); else,
        with an external clock (the registry, which every site reaches over HTTP), it is its
        site's top and follows that: a relayed exchange's round trip is too uneven to time a
        site by, and one that gets no answer times nothing. Without sites: *reference*."""
        membership = self.membership
        view = None if reference is None else membership.member(reference)
        if membership.wan is None or view is None or view.orchestra == membership.me.orchestra:
            return reference
        mine = self.election.supernode(membership.me.orchestra)
        if mine is not None and mine != self.node_id:
            return mine
        if reference not in membership.contacts:
            reference = self.election.supernode(view.orchestra) or reference
        if reference not in self._direct and self._external is not None:
            return self.node_id
        return reference

    def set_direct(self, now: float, node_ids: Iterable[str]) -> None:
        """The driver says which members of other sites it reaches directly for certain (the
        registry bridge: direct acks, not the relay). A supernode takes its site's time from
        another site only through one of them (see :meth:`_within_reach`)."""
        direct = frozenset(node_ids)
        if direct != self._direct:
            self._direct = direct
            self._source_dirty = True
            self._refresh(now)

    def _lineage_of(self, node_id: str) -> str | None:
        view = self.membership.member(node_id)
        value = None if view is None else view.meta.get("l")
        if not isinstance(value, str):
            return None
        previous, since = self._previous_lineage
        if value == previous and self._last_now - since < _META_LAG:
            # It was in our lineage a moment ago, and its metadata has not caught up with the
            # step (the nodes of a lineage step together): take it to be with us.
            return self.lineage_id
        return value

    def _external_usable(self, now: float) -> bool:
        return (
            self._external is not None
            and self._ext_lineage == self.lineage_id
            and now - self._ext_last_ok <= _EXT_TIMEOUT
        )

    def _choose_time_source(self, now: float) -> None:
        reference = self._elected_reference()
        if reference is None or reference == self.node_id:
            self._top, self._follow = True, None
            if self._external is not None and self._external_usable(now):
                source: tuple[str | None, bool] = (self._external, False)
            else:
                source = (self.node_id, True)
        else:
            self._top, self._follow = False, reference
            theirs = self._lineage_of(reference)
            if theirs is None or theirs == self.lineage_id:
                source = (reference, False)
            else:
                source = (None, False)  # keep our own time until the lineages are one
        external = source[0] is not None and source[0] == self._external
        # A site top on the registry keeps within its estimate's interval (the deadband),
        # unless the registry is what aligns it with another site: then it tracks the estimate
        # itself, or two sites could sit a bound apart each (milliseconds over HTTP).
        deadband = external and not self._registry_aligns_sites()
        if source != self._time_source:
            if self._time_source == (self._external, False) and self._external is not None:
                # Leaving the registry: its bound is remembered, and grows with age.
                self._ext_bound = (self.clock.error_bound(now), now)
            handover = self._handover(now, source)
            self._time_source = source
            self.clock.set_reference(
                now,
                source[0],
                source[1],
                deadband=deadband,
                handover=handover,
                steady=not external,  # (the registry's time is an epoch it may replace)
            )
            self._events.append(TimeSourceChanged(None if source[1] else source[0], source[1]))
            self._reference_start = self._start_of(source)
        elif deadband != self._deadband:
            self.clock.set_reference(now, source[0], source[1], deadband=deadband)
        self._deadband = deadband

    def _handover(self, now: float, source: tuple[str | None, bool]) -> float | None:
        """The bound this node's time keeps when it moves to *source* (see
        :meth:`ClockCore.set_reference`), or ``None``: only from one followed source to
        another (the registry, a supernode, the conductor), both in this node's lineage (a
        source of another is never chosen), while the clock is synced. A site's top moving
        between the registry and another site's supernode, or a member between supernodes,
        keeps its LAN synced; a node that defined the time itself does not claim another's."""
        old = self._time_source
        if old is None or old[1] or old[0] is None or source[1] or source[0] is None:
            return None
        snapshot = self.clock.snapshot(now)
        return snapshot.error_bound if snapshot.synced else None

    def _registry_aligns_sites(self) -> bool:
        """With sites: whether another site is timed against this one only through the
        registry (this node's contacts include one not confirmed direct)."""
        membership = self.membership
        return membership.wan is not None and any(
            c not in self._direct for c in membership.contacts
        )

    def _start_of(self, source: tuple[str | None, bool]) -> object:
        view = None if source[1] or source[0] is None else self.membership.member(source[0])
        return None if view is None else view.meta.get("j")

    def _watch_reference_restart(self, now: float) -> None:
        # A followed node that restarted keeps its id but not its clock: its start time ("j"
        # in its metadata) tells. Its earlier answers must not be mixed with the new ones.
        if self._time_source is None:
            return
        start = self._start_of(self._time_source)
        if start is not None and start != self._reference_start:
            if self._reference_start is not None:
                self.clock.reference_restarted(now)
            self._reference_start = start

    # -- internals: lineages ------------------------------------------------------------------

    def _provisional(self) -> bool:
        """A site's reference whose clock was founded by this run and has not yet met the
        other lineages around it: it answers clock requests with an unknown bound, so that
        nobody follows a young clock that may yet step to an older lineage (a restarted
        conductor). A lone node stays provisional, which changes nothing for it."""
        return self._top and self._founded and not self._settled

    def _count_lineages(self) -> None:
        differing: list[str] = []
        same = 0
        for view in self.membership.members():
            if not view.is_live or view.node_id == self.node_id:
                continue
            theirs = self._lineage_of(view.node_id)
            if theirs == self.lineage_id:
                same += 1
            elif theirs is not None:
                differing.append(view.node_id)
        self._differing, self._same = differing, same
        for gone in [p for p in self._meetings if p not in differing]:
            del self._meetings[gone]
        for gone in [p for p in self._best_meeting if p not in differing]:
            del self._best_meeting[gone]
        for gone in [p for p in self._joins if p not in differing]:
            del self._joins[gone]
        if not self._joins:
            self._first_join.clear()

    def _probe_lineages(self, now: float) -> None:
        """Probe the peers whose lineage question is open: for a site's reference, every live
        peer of another lineage not yet measured; for a follower, its reference when that is
        of another lineage."""
        self._lineage_due = None
        self._join_oldest(now)
        if self._pending_step is not None:
            return
        if self._top:
            targets = [
                p
                for p in self._differing
                if self._meetings.get(p, ("", False, False))[0] != self._lineage_of(p)
            ]
            # Every other lineage around is younger, or as old (then its nodes join ours without
            # a step): ours is the federation's, nobody steps it.
            if (
                self._founded
                and not self._settled
                and not targets
                and (self._same or self._differing)
            ):
                self._settled = True
        elif self._follow is not None and self._lineage_of(self._follow) not in (
            None,
            self.lineage_id,
        ):
            theirs = self._lineage_of(self._follow)
            known = self._meetings.get(self._follow, ("", False, False))
            # (A meeting from before it was this node's reference decided another question.)
            targets = [] if known[:2] == (theirs, True) else [self._follow]
        else:
            targets = []
        if not targets:
            return
        fed = self.clock.federation_time(now)
        for peer in targets:
            request = self._probes.probe(now, fed, peer)
            view = self.membership.member(peer)
            if request is not None and view is not None:
                self._outputs.append(SendDatagram(view.address, request, peer, view.incarnation))
        self._lineage_due = min(self._probes.next_due(p) for p in targets)
        if self._first_join:
            self._lineage_due = min(self._lineage_due, min(self._first_join.values()) + _JOIN_WAIT)

    def _met_peer(self, now: float, meeting: Meeting) -> None:
        """A lineage probe of a peer came back: decide which lineage is older."""
        theirs = self._lineage_of(meeting.peer)
        # On a slow network (a 20 ms LAN, a WAN) no probe comes back within the LAN's decision
        # bound: the best round trip seen to that peer sets what is "certain enough" there
        # (should_join widens its tie zone to match), else the lineages never met.
        best = min(self._best_meeting.get(meeting.peer, math.inf), meeting.bound)
        self._best_meeting[meeting.peer] = best
        limit = max(MAX_DECISION_BOUND, 1.25 * best + 0.001)
        if theirs is None or theirs == self.lineage_id or meeting.bound > limit:
            return  # nothing to decide, or too uncertain (the next probe will tell)
        reference = not self._top and meeting.peer == self._follow
        older = should_join(meeting.ahead, meeting.bound, reference=reference)
        self._meetings[meeting.peer] = (theirs, reference, older)
        self._source_dirty = True
        if older:
            self._joins[meeting.peer] = (theirs, meeting)
            self._first_join.setdefault(theirs, now)
        self._join_oldest(now)

    def _join_oldest(self, now: float) -> None:
        """Step to the oldest lineage found older than this node's: once every peer of another
        lineage around has been measured (a node meeting several lineages at once, as at a
        start, steps once, to the oldest), or a little after the first was found."""
        if not self._joins or self._pending_step is not None:
            return
        unmeasured = [
            p for p in self._differing if self._meetings.get(p, ("",))[0] != self._lineage_of(p)
        ]
        first = min(self._first_join.values())
        if unmeasured and self._top and now < first + _JOIN_WAIT:
            # (_probe_lineages wakes this node up when the wait is over, at first + _JOIN_WAIT:
            # the same sum here. `now - first < _JOIN_WAIT` can hold at that very instant in
            # floating point, and the node woke up at the same time forever: chaos seed 1756
            # of the registry sweep on sites hung.)
            return
        theirs, meeting = max(self._joins.values(), key=lambda j: (j[1].ahead, j[0]))
        # Clearly older: step to the lower edge of its time; as old (a tie): join its lineage
        # without a step, the clock slews the difference away.
        clearly = meeting.ahead > meeting.bound + 0.001
        self._joins.clear()
        self._first_join.clear()
        self._announce_step(now, meeting.ahead - meeting.bound if clearly else 0.0, theirs)

    def _met_external(
        self, now: float, meeting: Meeting, epoch: float | None, lineage: str | None
    ) -> None:
        """A lineage probe of the external clock came back (this node is its site's top):
        ``meeting.ahead`` is the registry's own clock minus our federation time."""
        self._source_dirty = True
        if not self._top or self._pending_step is not None or meeting.bound > _EXT_DECISION_BOUND:
            return
        if self._provisional() and now - self._started < _EXT_SETTLE:
            return  # a young clock meets its LAN's lineages first (they may be older)
        if epoch is None or lineage is None:
            self._offer_epoch(now, meeting.ahead)  # the registry has no time: it learns ours
            return
        ahead = meeting.ahead - epoch  # the registry's federation time minus ours
        if lineage == self.lineage_id:
            # Our own lineage: the registry's time is the one the other sites follow, and this
            # site follows it too (the source chosen next), slewing whatever lies between. It
            # is never moved within a lineage: an older epoch of the same lineage would step
            # the registry's time under every node that follows it, beyond the bounds they
            # hold, and a site that ran on its own while cut off is ahead of it only by its
            # own drift (chaos seeds 6010 and 6494 of the registry sweep: a top that had run
            # free moved it 3.4 ms and 5.4 ms).
            return
        if ahead >= -(meeting.bound + 0.001):
            # The registry's lineage is older (or the same age): the site steps to it, to the
            # middle of the measurement (the registry's time is known only to an HTTP round
            # trip: the lower edge would leave this site a whole bound behind the others).
            # A registry behind us by less than the bound is not stepped back to: our time
            # stays that far ahead of the middle, and the bound says so.
            self._ext_meeting = (ahead, meeting.bound, lineage, now)
            self._announce_step(now, max(0.0, ahead), lineage)
            fed = self.clock.federation_time(now)
            self._ext_bound = (self._step_uncertainty(now, max(0.0, ahead), lineage, fed), now)
        else:
            self._offer_epoch(now, meeting.ahead)  # ours is older: the registry takes it

    def _offer_epoch(self, now: float, epoch: float) -> None:
        alone = not self._same and not self._differing
        if (self._provisional() and not alone) or now < self._ext_offer_due:
            # A young clock that may yet meet an older lineage around it does not offer (a
            # node alone is the federation, as far as anyone can tell).
            return
        self._ext_offer_due = now + _EXT_OFFER_INTERVAL
        self._push_external(self._offer(epoch))

    def _announce_step(self, now: float, size: float, lineage: str) -> None:
        """This node's lineage steps by *size* to the older *lineage*: now, if no other node
        shares it; else at a federation time a little ahead, announced in this node's metadata,
        so that every node of the lineage steps at that same moment."""
        if self._pending_step is not None:
            return  # one step at a time (the earliest announced wins, see below)
        fed = self.clock.federation_time(now)
        at = fed + (_STEP_LEAD if self._same else 0.0)
        self._pending_step = (at, size, lineage, self._step_uncertainty(now, size, lineage, at))
        self._group_step = bool(self._same)
        if self._same:
            self._set_meta(now, ls=list(self._pending_step))
        self._apply_step(now)

    def _step_uncertainty(self, now: float, size: float, lineage: str, at: float) -> float:
        """How far a step of *size* to *lineage* at federation time *at* leaves this node from
        that lineage's time at the registry, as far as this node measured it (a site's top that
        met the registry in that lineage: its measurement's bound, the distance between the
        step and what it measured, and the drift from then until the step); 0 without such a
        measurement. Two tops of one lineage
        that ran apart (sites joined only by the registry, while it kept another lineage) each
        measure their own step, and all of the lineage take the earliest announced: the other
        top's, of a size this one did not measure (chaos seed 3547: 12.6 ms off)."""
        met = self._ext_meeting
        if met is None or met[2] != lineage or not self._top:
            return 0.0  # (a node that is no top follows another: its time is not what it met)
        ahead, bound, _, met_at = met
        # Local time at the step (federation time runs within 1% of local time).
        until = now + 1.01 * max(0.0, at - self.clock.federation_time(now))
        return bound + abs(ahead - size) + self.clock.max_drift * max(0.0, until - met_at)

    def _watch_announced_steps(self, now: float) -> None:
        """Take the earliest step that a live node of this lineage announced (and that is
        still ahead), unless this node already holds an earlier one."""
        fed = self.clock.federation_time(now)
        best = self._pending_step
        heard: list[tuple[float, float, str, float]] = []
        for view in self.membership.members():
            if not view.is_live or view.node_id == self.node_id:
                continue
            meta = view.meta
            if meta.get("l") != self.lineage_id:
                continue
            step = _announced(meta.get("ls"))
            if step is None or step[2] == self.lineage_id or step[0] <= fed:
                continue
            heard.append(step)
            if best is None or step[:2] < best[:2]:
                best = step
        if best is None:
            return
        # The step's uncertainty: the largest any node of the lineage announced with it (a
        # top whose own measurement the step misses says how far), and this node's own (taken
        # once, when it takes the step up).
        at, size, lineage, uncertainty = best
        for step in heard:
            if step[:3] == best[:3]:
                uncertainty = max(uncertainty, step[3])
        pending = self._pending_step
        if pending is None or best[:3] != pending[:3]:
            own = self._step_uncertainty(now, size, lineage, at)
            self._group_step = True
        else:
            own = pending[3]
        best = (at, size, lineage, max(uncertainty, own))
        if best != pending:
            self._pending_step = best
            self._set_meta(now, ls=list(best))  # passed on: every node of the lineage hears

    def _apply_step(self, now: float) -> None:
        pending = self._pending_step
        if pending is None or self.clock.federation_time(now) < pending[0] - 1e-9:
            return
        self._pending_step = None
        at, size, lineage, uncertainty = pending
        self.clock.take_stepped()
        self.clock.step(now, size, uncertainty=uncertainty)
        self.clock.take_stepped()
        met = self._ext_meeting
        if self._top and met is not None and met[2] == lineage:
            # A top's bound against the registry is what it measured of the step it took.
            self._ext_bound = (self._step_uncertainty(now, size, lineage, at), now)
        self._probes.forget_pending()  # their answers would straddle the step
        self._change_lineage(now, lineage, size, group=self._group_step)

    def _change_lineage(self, now: float, lineage: str, size: float, *, group: bool) -> None:
        old = self.lineage_id
        self.lineage_id = lineage
        # After a group's step, the others of the old lineage stepped too (their metadata may
        # lag); after this node's own join, they did not.
        self._previous_lineage = (old, now) if group else ("", -math.inf)
        self._founded = False
        self._settled = True
        self._ext_meeting = None  # (measured against the time this node just left)
        self._meetings.clear()
        self._joins.clear()
        self._first_join.clear()
        if size > 0.0:
            step = ClockStepped(size, old, lineage, self.clock.federation_time(now))
            self._events.append(step)
            self._last_step = step
            self._steps += 1
        self._set_meta(now, l=lineage, ls=None)
        self._candidates_dirty = True  # recount the lineages around
        self._source_dirty = True

    # -- internals: the external clock --------------------------------------------------------

    def _external_tick(self, now: float) -> None:
        if self._external is None or not self._top:
            return
        if self._time_source == (self._external, False):
            if not self._external_usable(now):
                self._source_dirty = True  # no answer for a while: run on our own
            return
        if now >= self._ext_probe_due and self._pending_step is None:
            request = self._probes.probe(now, self.clock.federation_time(now), self._external)
            if request is not None:
                self._push_external(request)
            self._ext_probe_due = now + _EXT_PROBE_INTERVAL

    def _cross_bound(self, now: float) -> float:
        """A top's bound against the external clock (0 without one: it defines the time)."""
        if self._external is None:
            return 0.0
        if self._time_source == (self._external, False):
            return self.clock.error_bound(now)
        bound, since = self._ext_bound
        return bound + self.clock.max_drift * max(0.0, now - since)


def _announced(value: object) -> tuple[float, float, str, float] | None:
    """A step announced in member metadata (``[federation time, size, lineage,
    uncertainty]``; without the uncertainty, 0), checked."""
    if not (isinstance(value, list) and len(value) in (3, 4)):
        return None
    at, size, lineage, *rest = value
    uncertainty = rest[0] if rest else 0.0
    if (
        isinstance(at, int | float)
        and isinstance(size, int | float)
        and isinstance(lineage, str)
        and isinstance(uncertainty, int | float)
        and math.isfinite(at)
        and 0.0 <= size < 1e9
        and 0.0 <= uncertainty < 1e9
    ):
        return float(at), float(size), lineage, float(uncertainty)
    return None
