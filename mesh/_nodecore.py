"""The whole protocol of one node as one sans-IO state machine.

:class:`NodeCore` composes the membership, election and clock cores and publications, and is
what both drivers run: the trio runtime (:mod:`mesh._node`) and the simulator
(:mod:`mesh._sim`). It owns the routing between the cores, so neither driver knows how a lease,
a clock sample or a publication travels:

- membership events rebuild the election's view of the candidates;
- lease records travel as gossip updates (and in every push-pull);
- election events choose the clock's time reference: the conductor if there is one, else the
  longest-serving supernode (``use_external_clock`` makes a registry the supernodes' reference);
  a node that has never been synced checks its clock's lineage first (:mod:`mesh._lineage`), so
  a restarted conductor adopts the federation's time instead of imposing its young clock;
- clock requests go to the reference's gossip address; every node answers them.

``now`` is the node's local time everywhere (monotonic, plus injected skew and drift); the
election runs on federation time, which this class converts.

Member metadata carries what other cores need to know of a node, under short keys:
``j`` its join time (wall clock at start; only used to rank candidates), ``s`` / ``c`` whether it
is a supernode / conductor candidate, and whatever the extensions add.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from typing import TypeAlias

import attrs

from mesh._clock import MAX_REPORTED_ERROR, ClockConfig, ClockCore, ClockSnapshot
from mesh._election import (
    Candidate,
    ConductorArbiter,
    ElectionCore,
    ElectionEvent,
    PostChanged,
    SteppedDown,
    post_orchestra,
)
from mesh._lineage import ClockLineage
from mesh._membership import (
    MemberEvent,
    Membership,
    MembershipOutput,
    PathConflict,
    SendDatagram,
    Snapshot,
    UpdateReceived,
)
from mesh._profiles import Profile
from mesh._wire import (
    Address,
    ClockReply,
    ClockRequest,
    MemberRecord,
    Message,
    Publish,
    PushPull,
    Value,
    check_value,
    update_size,
)

__all__ = ["NodeCore", "NodeEvent", "Publication", "TimeSourceChanged"]


@attrs.frozen
class Publication:
    """A message published by a node to every node (see :meth:`NodeCore.publish`)."""

    topic: str
    payload: Value
    origin: str
    """The publisher's node id."""
    origin_path: str | None
    """The publisher's path, when the receiver knows it."""
    number: int


@attrs.frozen
class TimeSourceChanged:
    """The node now follows another time reference (a node id, or ``None`` for itself)."""

    reference: str | None
    is_self: bool


NodeEvent: TypeAlias = (
    MemberEvent | PathConflict | Publication | PostChanged | SteppedDown | TimeSourceChanged
)

_MAX_PUBLISH = 800


class NodeCore:
    """Membership, elections, the federation clock and publications of one node.

    Drive it like :class:`~mesh._membership.Membership` (the simulator's ``SimCore``).
    *supernode* / *conductor* are the node's candidacy flags; *joined_at* ranks it among
    candidates (earlier is better) and goes in its metadata.
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
    ) -> None:
        meta = dict(me.meta)
        meta["j"] = joined_at
        if supernode:
            meta["s"] = True
        if conductor:
            meta["c"] = True
        me = attrs.evolve(me, meta=meta)
        self.membership = Membership(me, profile, now=now, rng=rng, snapshot=snapshot)
        self.clock = ClockCore(now, reference_id=me.node_id, config=clock_config)
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
        self.lineage = ClockLineage()
        self._reference_start: object = None  # the followed node's start time ("j")
        self._lineage_due: float | None = None
        self._external_clock: str | None = None
        self._external_requests: list[tuple[str, ClockRequest]] = []
        self._candidates_dirty = True
        self._last_now = now
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
        if isinstance(body, ClockRequest):
            reply = self.clock.handle_request(now, body)
            if self._provisional():
                # A young clock that may yet adopt the federation's time: nothing to learn from.
                reply = attrs.evolve(reply, error_bound=MAX_REPORTED_ERROR, synced=False)
            self._outputs.append(SendDatagram(src, reply, sender))
        elif isinstance(body, ClockReply):
            if ClockLineage.owns(body):
                self.lineage.handle_reply(now, self.clock.federation_time(now), body, sender)
            elif self.clock.handle_reply(now, body, sender):
                self._settle_if_synced(now)
        else:
            self.membership.handle_message(now, src, sender, body)
        self._refresh(now)

    def stamp(self, now: float, body: Message) -> Message:
        """*body*, about to be sent at local time *now*, with its clock timestamps moved to
        *now* (a clock request's ``t1``, a clock reply's ``t3``); other messages unchanged.

        A driver whose sending takes real time (the trio runtime) calls it right before
        encoding each datagram, so the timestamps say when the exchange really left."""
        if isinstance(body, ClockRequest):
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

    def handle_timer(self, now: float) -> None:
        """Run due timers."""
        self.membership.handle_timer(now)
        self.clock.handle_timer(now)
        self.election.handle_timer(self.clock.federation_time(now))
        self._refresh(now)

    def next_deadline(self) -> float:
        """When :meth:`handle_timer` is next due (local time)."""
        deadline = self.membership.next_deadline()
        clock = self.clock.next_deadline()
        if clock is not None:
            deadline = min(deadline, clock)
        if self._lineage_due is not None and self._provisional():
            deadline = min(deadline, self._lineage_due)
        election = self.election.next_deadline()
        if election is not None:
            # Federation time runs at (almost) the local rate: convert through the offset.
            snapshot_now = self._last_now
            fed_now = self.clock.federation_time(snapshot_now)
            deadline = min(deadline, snapshot_now + max(0.0, election - fed_now) + 1e-6)
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

    # -- queries ------------------------------------------------------------------------------

    def federation_time(self, now: float) -> float:
        """Federation time at local time *now* (never decreases)."""
        return self.clock.federation_time(now)

    def clock_snapshot(self, now: float) -> ClockSnapshot:
        """The clock's state (offset, error bound, reference, synced...)."""
        return self.clock.snapshot(now)

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
        own = {k: v for k, v in self.membership.me.meta.items() if k in ("j", "s", "c")}
        self.membership.update_meta(now, {**meta, **own})
        self._refresh(now)

    def use_external_clock(self, now: float, source: str | None) -> None:
        """Take time from *source*, a clock outside the mesh (the registry), with a registry's
        rule: this orchestra's supernode follows *source*, every other member follows its
        supernode. ``None`` returns to the elected reference. Requests to *source* come out of
        :meth:`take_external_clock_requests`; answers go to :meth:`handle_external_clock_reply`.
        """
        self._external_clock = source
        self._choose_time_source(now)

    def take_external_clock_requests(self) -> list[tuple[str, ClockRequest]]:
        """Clock requests for the external source, for the driver to carry (e.g. over HTTP)."""
        out, self._external_requests = self._external_requests, []
        return out

    def handle_external_clock_reply(self, now: float, reply: ClockReply, source: str) -> bool:
        """The external source's answer to a request, received at local time *now*."""
        used = self.clock.handle_reply(now, reply, source)
        if used:
            self._settle_if_synced(now)
        self._refresh(now)
        return used

    def leave(self, now: float) -> None:
        """Leave gracefully, handing every post this node holds to its best successor."""
        handoffs = self.election.handoff(self.clock.federation_time(now))
        self.membership.leave(now, extras=handoffs)
        self._refresh(now)

    # -- internals ----------------------------------------------------------------------------

    def _candidates(self) -> list[Candidate]:
        out = []
        for view in self.membership.members():
            meta = view.meta
            joined = meta.get("j", math.inf)
            out.append(
                Candidate(
                    view.node_id,
                    view.orchestra,
                    supernode_flag=meta.get("s") is True,
                    conductor_flag=meta.get("c") is True,
                    joined_at=float(joined) if isinstance(joined, int | float) else math.inf,
                    alive=view.is_live
                    and not (view.node_id == self.node_id and self.membership.has_left),
                )
            )
        return out

    def _refresh(self, now: float) -> None:
        """Route what the cores produced after an input."""
        self._last_now = now
        fed = self.clock.federation_time(now)
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
            candidates = self._candidates()
            self.election.update_members(fed, candidates)
            self.clock.set_group_size(sum(c.alive for c in candidates))
        leases = self.election.take_outputs()
        for lease in leases:
            self.membership.broadcast(lease)
        if leases:
            self.membership.set_state_extras(self.election.leases())
        events: list[ElectionEvent] = self.election.take_events()
        self._events.extend(events)
        if events or self._time_source is None or not self.lineage.settled:
            self._choose_time_source(now)
        self._watch_reference_restart(now)
        for dest, request in self.clock.take_outputs():
            if dest == self._external_clock:
                self._external_requests = [*self._external_requests[-7:], (dest, request)]
                continue
            view = self.membership.member(dest)
            if view is not None and view.is_live:
                self._outputs.append(SendDatagram(view.address, request, dest, view.incarnation))

    def _elected_reference(self) -> str | None:
        if self._external_clock is not None:
            orchestra = self.membership.me.orchestra
            supernode = self.election.supernode(orchestra)
            if supernode is None or supernode == self.node_id:
                return self._external_clock
            return supernode
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

    def _settle_if_synced(self, now: float) -> None:
        # After a clock sample: synced to a reference, or holding the adopted peer's time (the
        # peer may not say it is synced: its own reference may be this very node, still
        # provisional), this clock is in the federation's lineage.
        lineage = self.lineage
        if lineage.settled or self._time_source is None or self._time_source[1]:
            return
        snap = self.clock.snapshot(now)
        adopted = (
            lineage.adopting == self._time_source[0]
            and snap.samples >= lineage.samples_to_adopt
            and math.isfinite(snap.error_bound)
        )
        if snap.synced or adopted:
            lineage.settle()
            self._choose_time_source(now)  # an adopting node becomes the reference now

    def _choose_time_source(self, now: float) -> None:
        lineage = self.lineage
        reference = self._elected_reference()
        if reference is None or reference == self.node_id:
            source: tuple[str | None, bool] = (self.node_id, True)
            if lineage.adopting is not None:
                view = self.membership.member(lineage.adopting)
                if view is not None and view.is_live:
                    source = (lineage.adopting, False)  # take the federation's time first
                else:
                    lineage.adopting = None
        else:
            source = (reference, False)
        if source != self._time_source:
            self._time_source = source
            self.clock.set_reference(now, source[0], source[1])
            self._events.append(TimeSourceChanged(None if source[1] else source[0], source[1]))
            self._reference_start = self._start_of(source)
        self._probe_lineage(now)

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

    def _provisional(self) -> bool:
        return not self.lineage.settled and self._time_source == (self.node_id, True)

    def _probe_lineage(self, now: float) -> None:
        self._lineage_due = None
        if not self._provisional():
            return
        peers = [
            v.node_id for v in self.membership.members() if v.is_live and v.node_id != self.node_id
        ]
        if not peers:
            return
        probe = self.lineage.probe(now, self.clock.federation_time(now), peers)
        if probe is not None:
            view = self.membership.member(probe[0])
            if view is not None:
                self._outputs.append(
                    SendDatagram(view.address, probe[1], probe[0], view.incarnation)
                )
        self._lineage_due = self.lineage.next_deadline()
