"""Every event a user of a node receives, in one place.

``async with node.events() as events`` yields :data:`NodeEvent` values, one of:

- :class:`MemberEvent`: a member joined, changed, was suspected, refuted, died, left or was
  forgotten (its :class:`MemberView` is the member as this node now sees it);
- :class:`PathConflict`: another live node announces this node's path;
- :class:`Publication`: a message a node published (``node.subscribe(topic)`` gets only one
  topic's);
- :class:`PostChanged`: the holder of an elected post (a supernode's, the conductor's) changed;
- :class:`SteppedDown`: this node gave up a post it held;
- :class:`TimeSourceChanged`: this node follows another federation time reference;
- :class:`ClockStepped`: federation time on this node jumped forward (its clock lineage met an
  older one).

The cores that produce them (membership, election, the node core) import them from here, so a
user finds all of them in one module and the ``mesh`` package. Plain frozen values: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, TypeAlias

import attrs

from mesh._wire import Address, Value

__all__ = [
    "ClockStepped",
    "ElectionEvent",
    "EventKind",
    "MemberEvent",
    "MemberView",
    "NodeEvent",
    "PathConflict",
    "PostChanged",
    "Publication",
    "SteppedDown",
    "TimeSourceChanged",
]


# ---------------------------------------------------------------------------------------------
# Membership


@attrs.frozen
class MemberView:
    """A member as this node sees it."""

    node_id: str
    name: str
    orchestra: str
    address: Address
    incarnation: int
    status: Literal["alive", "suspect", "dead", "left"]
    meta: Mapping[str, Value]
    since: float
    """When the member last changed status (0.0 if it was known from the start)."""

    @property
    def path(self) -> str:
        """``/<orchestra>/<name>``."""
        return f"/{self.orchestra}/{self.name}"

    @property
    def is_live(self) -> bool:
        """Alive or suspect: still counted as a member."""
        return self.status in ("alive", "suspect")


EventKind: TypeAlias = Literal["joined", "updated", "suspect", "alive", "dead", "left", "reaped"]
"""What happened to a member (:attr:`MemberEvent.kind`)."""


@attrs.frozen
class MemberEvent:
    """A member changed: ``joined`` (new, or back from dead/left), ``updated`` (address or
    metadata), ``suspect``, ``alive`` (suspicion refuted), ``dead``, ``left``, ``reaped``
    (tombstone forgotten)."""

    kind: EventKind
    member: MemberView


@attrs.frozen
class PathConflict:
    """Another live node (``holder``) announces the same path as this node. Nothing stops: both
    stay members (ids tell them apart); the driver says which of them keeps the path (see
    :func:`~mesh._membership.path_winner`)."""

    holder: MemberView


# ---------------------------------------------------------------------------------------------
# Elections


@attrs.frozen
class PostChanged:
    """The holder of ``post`` changed in this node's view.

    ``new_holder`` is None when the post fell vacant (its holder died, left or became
    ineligible); ``old_holder`` is None when a vacant (or unknown) post got a holder. ``term``
    is the term of the record now in force (of the last record when vacant, 0 if none).
    """

    post: str
    old_holder: str | None
    new_holder: str | None
    term: int


@attrs.frozen
class SteppedDown:
    """This node no longer holds ``post`` (it held it in ``term``).

    ``reason`` is ``"conflict"`` (another holder's record won: longer tenure or lower id),
    ``"handoff"`` (this node handed the post over while leaving), ``"ineligible"`` (this node
    may no longer hold the post, e.g. it lost the flag) or ``"arbiter"`` (the arbiter, the
    registry, records another conductor). ``successor`` is the new holder, if known.
    """

    post: str
    term: int
    reason: str
    successor: str | None


ElectionEvent: TypeAlias = PostChanged | SteppedDown
"""What :meth:`~mesh._election.ElectionCore.take_events` returns."""


# ---------------------------------------------------------------------------------------------
# Publications and time


@attrs.frozen
class Publication:
    """A message published by a node to every node (see ``Node.publish``)."""

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


@attrs.frozen
class ClockStepped:
    """Federation time on this node jumped forward by ``size`` seconds: its clock lineage met
    an older one (``old_lineage`` -> ``new_lineage``). The only jumps federation time makes;
    ``federation_time`` is the time right after it. Every node of a site that steps together
    does so at the same federation time."""

    size: float
    old_lineage: str
    new_lineage: str
    federation_time: float


NodeEvent: TypeAlias = (
    MemberEvent
    | PathConflict
    | Publication
    | PostChanged
    | SteppedDown
    | TimeSourceChanged
    | ClockStepped
)
"""What ``Node.events()`` yields (and :meth:`~mesh._nodecore.NodeCore.take_events` returns)."""
