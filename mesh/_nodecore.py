"""The whole protocol of one node as one sans-IO state machine.

:class:`NodeCore` composes the membership core with publications (and, as they land, the
election and clock cores) and is what both drivers run: the trio runtime (:mod:`mesh._node`)
and the simulator (:mod:`mesh._sim`). It owns the routing between the cores, so neither driver
knows how a lease or a publication travels.

Member metadata carries what other cores need to know of a node, under short keys:
``j`` its join time (seconds, wall clock at start; only used to rank candidates), ``s`` / ``c``
whether it is a supernode / conductor candidate, and whatever the extensions add.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any, TypeAlias

import attrs

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
    MemberRecord,
    Message,
    Publish,
    PushPull,
    Value,
    check_value,
    update_size,
)

__all__ = ["NodeCore", "NodeEvent", "Publication"]


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


NodeEvent: TypeAlias = MemberEvent | PathConflict | Publication

_MAX_PUBLISH = 800


class NodeCore:
    """Membership plus publications for one node; drive it like :class:`Membership`."""

    def __init__(
        self,
        me: MemberRecord,
        profile: Profile,
        *,
        now: float,
        rng: random.Random,
        snapshot: Snapshot | None = None,
    ) -> None:
        self.membership = Membership(me, profile, now=now, rng=rng, snapshot=snapshot)
        self._events: list[NodeEvent] = []
        self._published = 0

    # -- identity -----------------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        """This node's id."""
        return self.membership.node_id

    @property
    def incarnation(self) -> int:
        """This node's incarnation."""
        return self.membership.incarnation

    # -- driver interface (same as Membership) -------------------------------------------------

    def add_candidate(self, now: float, address: Address) -> None:
        """Discovery proposes a peer address."""
        self.membership.add_candidate(now, address)
        self._collect()

    def handle_message(self, now: float, src: Address, sender: str, body: Message) -> None:
        """One decoded datagram."""
        self.membership.handle_message(now, src, sender, body)
        self._collect()

    def handle_stream(self, now: float, src: Address, sender: str, body: PushPull) -> PushPull:
        """One incoming push-pull; returns the reply."""
        reply = self.membership.handle_stream(now, src, sender, body)
        self._collect()
        return reply

    def handle_stream_reply(self, now: float, exchange: int, reply: PushPull | None) -> None:
        """The reply to an outgoing push-pull (``None`` if it failed)."""
        self.membership.handle_stream_reply(now, exchange, reply)
        self._collect()

    def handle_timer(self, now: float) -> None:
        """Run due timers."""
        self.membership.handle_timer(now)
        self._collect()

    def next_deadline(self) -> float:
        """When :meth:`handle_timer` is next due."""
        return self.membership.next_deadline()

    def take_outputs(self) -> list[MembershipOutput]:
        """What to send."""
        return self.membership.take_outputs()

    def take_events(self) -> list[NodeEvent]:
        """What happened."""
        out, self._events = self._events, []
        return out

    # -- application --------------------------------------------------------------------------

    def publish(self, now: float, topic: str, payload: Value) -> Publication:
        """Send *payload* on *topic* to every node (this one included: the returned
        :class:`Publication` is also emitted as an event here). Raises ValueError if the
        payload is not plain data or does not fit in one datagram."""
        check_value(payload, "payload")
        self._published += 1
        update = Publish(self.node_id, self._published, topic, payload)
        if update_size(update) > _MAX_PUBLISH:
            self._published -= 1
            raise ValueError(
                f"publication of {update_size(update)} bytes is over the {_MAX_PUBLISH}-byte "
                "limit; send large data with node.request"
            )
        self.membership.broadcast(update)
        publication = Publication(
            topic, payload, self.node_id, self._path(self.node_id), self._published
        )
        self._events.append(publication)
        return publication

    def update_meta(self, now: float, meta: Mapping[str, Value]) -> None:
        """Replace this node's metadata (it travels with a new incarnation)."""
        self.membership.update_meta(now, meta)

    def leave(self, now: float) -> None:
        """Leave the group gracefully."""
        self.membership.leave(now)

    # -- internals ----------------------------------------------------------------------------

    def _path(self, node_id: str) -> str | None:
        view = self.membership.member(node_id)
        return None if view is None else view.path

    def _collect(self) -> None:
        for event in self.membership.take_events():
            if isinstance(event, UpdateReceived):
                update = event.update
                if isinstance(update, Publish):
                    self._events.append(
                        Publication(
                            update.topic,
                            update.payload,
                            update.origin,
                            self._path(update.origin),
                            update.number,
                        )
                    )
            else:
                self._events.append(event)


def datagrams(outputs: list[Any]) -> list[SendDatagram]:
    """The datagram outputs among *outputs* (a convenience for tests)."""
    return [o for o in outputs if isinstance(o, SendDatagram)]
