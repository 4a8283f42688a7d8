"""The receiving edge of the gossip port, sans-IO: bytes in, a checked envelope or a counted
refusal out.

:class:`Inbound` runs every check a message must pass before any core sees it, in this order:

1. the codec (:class:`~mesh._wire.WireCodec`): size, magic, version, the receiver's id prefix
   (``misdirected``), the key and the tag (``bad tag``) before the body is decoded, then the
   body's shape and every field's bounds (``malformed``...);
2. the federation, and that a datagram's sender is not this node itself (``own``: a node
   hears its own datagrams only if someone sends them back; over TCP a node may ask itself,
   as a command-line tool does through the conductor's own API);
3. the binding: a bound message must name an incarnation of this node between the one it
   started with and its current one (``stale receiver``: bound to an earlier run of this node,
   a capture replayed after a restart, or a sender whose view of us is behind; ``future
   receiver``: an incarnation this node never announced); an unbound one (first contact) is
   accepted only as a join push-pull arriving over TCP (``unbound`` otherwise);
4. the replay guard (:class:`~mesh._wire.ReplayGuard`): a sequence number seen before, or too
   old for the window, or from an older incarnation of the sender, or (signed federations) a
   ``sent_at`` more than :data:`MAX_AGE` seconds from this node's clock.

Every refusal is counted by its reason in :attr:`Inbound.rejected` (the transport adds its own
stream-level reasons there) and shown in the status API. Nothing here raises to the caller but
:class:`~mesh._wire.InvalidMessage` from the ``check_*`` methods, which the caller counts.

Before any of that, :class:`SourceBudget` decides whether a datagram is looked at at all: each
source address may have :data:`SOURCE_RATE` datagrams a second checked (bursts of
:data:`SOURCE_BURST`); beyond that its datagrams are dropped unread (``source limit``). A flood
from one host then costs the node a ``recvfrom`` per datagram instead of a decode, so the node
drains its socket faster than one core can fill it, and its peers' datagrams are not lost in
the kernel's queue behind the junk.
"""

from __future__ import annotations

from collections import Counter
from typing import TypeAlias

from mesh._wire import (
    MAX_DATAGRAM,
    Envelope,
    InvalidMessage,
    PushPull,
    ReplayGuard,
    WireCodec,
)

__all__ = [
    "MAX_AGE",
    "SOURCE_BURST",
    "SOURCE_RATE",
    "Binding",
    "Inbound",
    "SourceBudget",
    "binding",
]

MAX_AGE = 300.0
"""Signed messages sent further than this (seconds, wall clock) from the receiver's now are
refused: the bound on how far apart the hosts' clocks may be."""

SOURCE_RATE = 2000.0
"""Datagrams a second checked from one IP address. A member sends a peer a few dozen a
second (probes, acks, gossip, clock polls); 50 nodes on one host (tests, demos: one address)
stay under it."""
SOURCE_BURST = 2000.0
"""How many datagrams one address may have checked at once after a quiet time."""
MAX_SOURCES = 4096
"""Addresses tracked at once; the one heard from least recently is forgotten first."""


Binding: TypeAlias = tuple[str, int] | None
"""Who a message is for: the receiver's node id and incarnation, or ``None`` (first contact)."""


def binding(to: str | None, *incarnations: int) -> Binding:
    """The binding of a message to *to*: its id and the newest of the *incarnations* the
    sender knows of it (the core's view, the member's record, what it sent us; -1: unknown);
    ``None`` for nobody or when none is known. The node and the simulator bind with it."""
    if to is None:
        return None
    known = max(incarnations, default=-1)
    return (to, known) if known >= 0 else None


class SourceBudget:
    """A token bucket per source address (sans-IO: the caller passes ``now``, seconds on any
    monotonic clock). Bounded: at most *max_sources* addresses are tracked."""

    def __init__(
        self,
        rate: float = SOURCE_RATE,
        burst: float = SOURCE_BURST,
        max_sources: int = MAX_SOURCES,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.max_sources = max_sources
        self._buckets: dict[str, tuple[float, float]] = {}  # source -> (tokens, at)

    def allow(self, source: str, now: float) -> bool:
        """Whether one more datagram from *source* may be checked now (spends a token)."""
        bucket = self._buckets.pop(source, None)  # re-inserted last: least recent first
        if bucket is None:
            if len(self._buckets) >= self.max_sources:
                del self._buckets[next(iter(self._buckets))]
            tokens = self.burst
        else:
            tokens, at = bucket
            tokens = min(self.burst, tokens + (now - at) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[source] = (tokens - 1.0 if allowed else tokens, now)
        return allowed


class Inbound:
    """The checks of every message this node receives (see the module docstring).

    *boot_incarnation* is the incarnation the node started with; the driver keeps
    :attr:`incarnation` equal to its current one.
    """

    def __init__(
        self, codec: WireCodec, federation: str, node_id: str, boot_incarnation: int
    ) -> None:
        self.codec = codec
        self.federation = federation
        self.node_id = node_id
        self.boot_incarnation = boot_incarnation
        self.incarnation = boot_incarnation
        self.guard = ReplayGuard(max_age=MAX_AGE if codec.keyring is not None else None)
        self.rejected: Counter[str] = Counter()

    def reject(self, reason: str) -> None:
        """Count one refused input under *reason*."""
        self.rejected[reason] += 1

    def datagram(self, data: bytes, now: float) -> Envelope | None:
        """One UDP datagram at wall-clock time *now*: the envelope if it passes every check,
        else ``None`` (counted)."""
        try:
            env = self.codec.decode(data, MAX_DATAGRAM, self.node_id)
            self.check(env, now, unbound_ok=False)
        except InvalidMessage as exc:
            self.reject(exc.reason)
            return None
        return env

    def check_frame(self, payload: bytes, now: float, *, request: bool) -> Envelope:
        """One TCP frame's message (after its prefix was checked with
        ``codec.frame_length``): a *request* from a peer that connected to us, or the reply
        to ours. Raises :class:`InvalidMessage` (the caller counts it)."""
        env = self.codec.decode_frame(payload, self.node_id)
        body = env.body
        first_contact = request and isinstance(body, PushPull) and body.join and not body.reply
        self.check(env, now, unbound_ok=first_contact, own_ok=True)
        return env

    def check(self, env: Envelope, now: float, *, unbound_ok: bool, own_ok: bool = False) -> None:
        """Steps 2 to 4 of the module docstring for a decoded *env*; raise
        :class:`InvalidMessage` if it fails one."""
        if env.federation != self.federation:
            raise InvalidMessage("federation", f"from federation {env.federation!r}")
        if env.sender == self.node_id and not own_ok:
            raise InvalidMessage("own", "sent with this node's own id")
        if env.to is None:
            if not unbound_ok:
                raise InvalidMessage("unbound", f"{type(env.body).__name__} names no receiver")
        elif env.to_incarnation < self.boot_incarnation:
            raise InvalidMessage(
                "stale receiver",
                f"bound to incarnation {env.to_incarnation}; this run started at "
                f"{self.boot_incarnation}",
            )
        elif env.to_incarnation > self.incarnation:
            raise InvalidMessage(
                "future receiver",
                f"bound to incarnation {env.to_incarnation}; this node is at {self.incarnation}",
            )
        self.guard.check(env, now)
