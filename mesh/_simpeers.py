"""Single protocol cores as simulator nodes: a clock core or an election core alone.

A whole node runs in the simulator as its :class:`~mesh._nodecore.NodeCore`. A test or a
harness that proves one core (the clock's agreement, the election's) runs that core alone, with
the rest of the node modelled: the adapters here give it the driver-facing interface of
:class:`mesh._sim.SimCore`, so it gets the project's simulator (virtual time, skewed local
clocks, the :class:`~mesh._sim.LinkModel`, crashes, restarts, stalls and partitions) instead of
an event loop of its own. Streams are never opened between such cores; a candidate address
means nothing to them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from mesh._clock import ClockCore
from mesh._election import ElectionCore, ElectionEvent
from mesh._membership import SendDatagram
from mesh._wire import (
    Address,
    ClockReply,
    ClockRequest,
    Gossip,
    Lease,
    MemberRecord,
    Message,
    PushPull,
)

__all__ = ["ClockPeer", "ElectionPeer", "PeerDirectory", "Spread"]


class PeerDirectory:
    """The names the cores call each other by (a clock's reference name, say ``"n0"``) and the
    simulated node behind each: the addressing a node's membership would do."""

    def __init__(self) -> None:
        self.records: dict[str, MemberRecord] = {}
        """Name -> the node's record (its id and address)."""
        self.names: dict[str, str] = {}
        """Node id -> name."""

    def add(self, name: str, record: MemberRecord) -> None:
        """Know *record* as *name* (again: a restart keeps both)."""
        self.records[name] = record
        self.names[record.node_id] = name


class _Timed(Protocol):
    def handle_timer(self, now: float) -> None: ...

    def next_deadline(self) -> float | None: ...


CoreT = TypeVar("CoreT", bound=_Timed)


class _SingleCore(Generic[CoreT]):
    """What every adapter answers alike: the core's timer, no streams, no candidates,
    incarnation 0 unless set."""

    core: CoreT
    node_id: str
    incarnation: int = 0

    def handle_timer(self, now: float) -> None:
        """The core's timer (a clock's poll, an election's claim or re-announcement)."""
        self.core.handle_timer(now)

    def next_deadline(self) -> float:
        """The core's next timer (infinity: none)."""
        deadline = self.core.next_deadline()
        return math.inf if deadline is None else deadline

    def add_candidate(self, now: float, address: Address) -> None:
        """Nothing to join: the caller models membership."""

    def handle_stream(self, now: float, src: Address, sender: str, body: PushPull) -> PushPull:
        """Never called: these cores open no streams."""
        raise TypeError(f"{type(self).__name__} takes no streams")

    def handle_stream_reply(self, now: float, exchange: int, reply: PushPull | None) -> None:
        """Never called: these cores open no streams."""


class ClockPeer(_SingleCore[ClockCore]):
    """A :class:`~mesh._clock.ClockCore` as a simulator node: the requests it sends and the
    replies it gives are its datagrams (to the node *directory* names), its polls its timer.
    Its local time is the simulated node's clock (``add_node(..., clock=SkewedClock(...))``)."""

    def __init__(self, core: ClockCore, node_id: str, directory: PeerDirectory) -> None:
        self.core = core
        self.node_id = node_id
        self.directory = directory
        self._out: list[SendDatagram] = []

    def handle_message(self, now: float, src: Address, sender: str, body: Message) -> None:
        """A request is answered at once; a reply is taken into the estimate (the core judges
        it: late, unknown or from another node than the one asked is counted and dropped)."""
        if isinstance(body, ClockRequest):
            self._out.append(SendDatagram(src, self.core.handle_request(now, body), sender))
        elif isinstance(body, ClockReply):
            self.core.handle_reply(now, body, sender=self.directory.names.get(sender, sender))

    def take_outputs(self) -> list[SendDatagram]:
        """The replies, then the core's requests addressed to the nodes they name."""
        for name, request in self.core.take_outputs():
            record = self.directory.records[name]
            self._out.append(SendDatagram(record.address, request, record.node_id))
        out, self._out = self._out, []
        return out

    def take_events(self) -> list[Any]:
        """A clock core emits no events (its state is read with ``snapshot``)."""
        return []


Spread = Callable[[list[Lease]], list[SendDatagram]]
"""How an election node's lease records go out: the gossip datagrams carrying them (whom to,
how many rounds is the caller's model of gossip)."""


class ElectionPeer(_SingleCore[ElectionCore]):
    """An :class:`~mesh._election.ElectionCore` as a simulator node: the lease records it gives
    out go out as the datagrams *spread* makes of them, the updates of a :class:`Gossip` it
    receives are taken in, its claims and re-announcements are its timer. Its membership view
    is the caller's (``core.update_member(s)``, in a ``sim.call_node`` to act at the node's
    time). A core with an arbiter is not for this adapter: its claim requests need a driver
    of the arbiter (:mod:`mesh._simregistry`)."""

    def __init__(self, core: ElectionCore, spread: Spread) -> None:
        self.core = core
        self.node_id = core.self_id
        self.spread = spread

    def handle_message(self, now: float, src: Address, sender: str, body: Message) -> None:
        """Take in the lease records a gossip datagram carries."""
        if isinstance(body, Gossip):
            for update in body.updates:
                if isinstance(update, Lease):
                    self.core.handle_lease(now, update)

    def take_outputs(self) -> list[SendDatagram]:
        """The core's lease records, as *spread* sends them."""
        leases = self.core.take_outputs()
        if not leases:
            return []
        if not all(isinstance(lease, Lease) for lease in leases):
            raise TypeError("an arbitrated election core needs a driver of its arbiter")
        return self.spread(leases)  # type: ignore[arg-type]

    def take_events(self) -> list[ElectionEvent]:
        """The core's events (posts changed, step-downs)."""
        return self.core.take_events()
