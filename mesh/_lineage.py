"""Clock lineages: when two clocks that kept time apart meet, which one is the federation's.

A node's clock starts at 0: its own start is an epoch, and its time is the first of a new
**lineage** of federation time, named by an id (``lineage_id``) that the node announces in its
member metadata. Nodes that follow one another share a lineage. Two lineages meet when a node
learns of a peer (or an outside clock, the registry) whose lineage differs from its own: a node
joining a running federation, a restarted node, two sites that kept time separately while the
registry was down or the network between them was cut.

The **older lineage** (the one whose epoch is earlier: it shows the larger federation time at
the same instant) is the federation's, and never moves. The younger one steps once, forward, to
it: a follower when it starts to follow an older reference, a site's reference (with every node
that follows it, at the same announced moment) when it finds an older peer or an older registry.

:class:`LineageProbes` measures how far a peer's federation time is ahead of ours, with
NTP-style probes (four timestamps, one round trip; probe numbers above 2^40, so they never mix
with the clock core's), and :func:`should_join` decides.
Sans-IO like the other cores: the caller passes local time ``now`` and its federation time
``fed``.

:class:`EpochSeal` signs and checks the federation's time as it passes through the registry:
in a keyed federation a node hands the registry its epoch with an HMAC tag by the federation
key, and takes an epoch and lineage from the registry only with a tag that a key of its own
verifies (registering needs no secret, so anyone may offer the registry an epoch). The tag
also covers the registry's **generation** of the federation (a random value it replaces at
every reset), so a handover captured before a reset does not verify after it. The registry
keeps several handovers (:class:`Handover`) and a node takes the oldest one it verifies.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import struct

import attrs

from mesh._wire import TAG_SIZE, ClockReply, ClockRequest, Keyring

__all__ = [
    "MAX_DECISION_BOUND",
    "TIE_ZONE",
    "EpochSeal",
    "Handover",
    "LineageProbes",
    "Meeting",
    "lineage_id",
    "should_join",
]

_PROBE_BASE = 1 << 40  # lineage probes never collide with the clock core's (1, 2, 3, ...)

MAX_DECISION_BOUND = 0.005
"""A probe whose round trip leaves more uncertainty than this (seconds) decides nothing between
two nodes (another probe follows): :func:`should_join` then needs only a small tie zone."""

_MARGIN = 0.001  # seconds of extra margin in every decision


def lineage_id(node_id: str, started: float) -> str:
    """The id of the lineage a node founds when it starts: its node id's first 10 digits and
    its start time in milliseconds (hex), unique per run of a node."""
    return f"{node_id[:10]}{round(started * 1000) & 0xFFFFFFFF:08x}"


_EPOCH_CONTEXT = b"stagemesh epoch tag v2\x00"  # no wire or frame tag covers bytes like these


@attrs.frozen
class Handover:
    """One epoch handed over at the registry, as it hands it back: the registry-clock reading
    at federation time 0 (``epoch``), the ``lineage`` it belongs to and the ``tag`` it came
    with (``None``: unsigned, or the registry's own epoch). The registry cannot check tags, so
    it keeps several (a stranger's offer does not hide a member's)."""

    epoch: float
    lineage: str
    tag: str | None = None


@attrs.frozen
class EpochSeal:
    """The federation key applied to the federation's time at the registry.

    A tag is ``"<key id>.<hex>"``: HMAC-SHA256 (truncated to 128 bits, as on the wire) by the
    key *key id* of the keyring, over a domain-separated encoding of the federation, the
    registry's generation of it (replaced at every reset: a tag of an earlier generation fits
    no later one), the epoch (the registry's clock reading at federation time 0, as the 8 bytes
    of a double), the lineage and the key id. A node signs with the keyring's primary key and
    verifies with any key it holds (a key being rotated in or out), so only a holder of the
    federation key can name the federation's time, and a tag fits no other generation, epoch,
    lineage or federation.
    """

    federation: str
    keyring: Keyring

    def _mac(self, key_id: int, generation: str, epoch: float, lineage: str) -> str:
        fed, gen, lin = self.federation.encode(), generation.encode(), lineage.encode()
        data = b"".join(
            (
                _EPOCH_CONTEXT,
                struct.pack("!BI", key_id, len(fed)),
                fed,
                struct.pack("!I", len(gen)),
                gen,
                struct.pack("!I", len(lin)),
                lin,
                struct.pack("!d", epoch),
            )
        )
        return hmac.new(self.keyring.keys[key_id], data, hashlib.sha256).digest()[:TAG_SIZE].hex()

    def tag(self, generation: str, epoch: float, lineage: str) -> str:
        """The tag of *epoch* in *lineage* at the registry's *generation*, by the primary
        key."""
        key_id = self.keyring.primary
        return f"{key_id}.{self._mac(key_id, generation, epoch, lineage)}"

    def verifies(self, generation: str, epoch: float, lineage: str, tag: str | None) -> bool:
        """Whether *tag* is a tag of *epoch* in *lineage* at *generation* by a key of the
        keyring (``False`` for no tag, a malformed one, or one by a key this node does not
        hold)."""
        if tag is None:
            return False
        key_id, _, mac = tag.partition(".")
        if not (key_id.isascii() and key_id.isdigit() and len(key_id) <= 3):
            return False
        if int(key_id) not in self.keyring.keys or not mac.isascii():
            return False
        return hmac.compare_digest(self._mac(int(key_id), generation, epoch, lineage), mac)


@attrs.frozen
class Meeting:
    """What one probe found: ``ahead`` is the peer's federation time minus ours (seconds), good
    to ``bound`` (half the round trip, the peer's own error ignored: a lineage is what its
    members say it is)."""

    peer: str
    ahead: float
    bound: float


TIE_ZONE = 2 * MAX_DECISION_BOUND + _MARGIN
"""How far ahead of its reference a node may be and still join the reference's lineage (the
two are then the same age, within what the probes can tell)."""


def should_join(ahead: float, bound: float, *, reference: bool) -> bool:
    """Whether a node should step to a peer's lineage, the peer's federation time measured
    *ahead* seconds ahead of its own (within *bound*): when the peer's lineage is clearly
    older, or, for the node's own time *reference*, about as old (a tie: the node then joins
    its reference's lineage without a step; a reference never joins a follower's in a tie).

    Of a node and its reference measuring each other, at least one joins the other: the
    reference joins when the node is clearly older; the node joins unless it is older by more
    than the tie zone, which is wider than both probes' errors together.
    """
    if ahead > bound + _MARGIN:
        return True
    # A probe less certain than MAX_DECISION_BOUND (a slow network) widens the tie zone alike.
    tie = max(TIE_ZONE, 2 * bound + _MARGIN)
    return reference and ahead >= -(bound + _MARGIN + tie)


class LineageProbes:
    """NTP-style probes of other clocks' federation time (see the module docstring).

    *interval* is the least time between two probes of one peer; *reply_timeout* bounds a
    usable round trip.
    """

    def __init__(self, *, interval: float = 0.25, reply_timeout: float = 1.0) -> None:
        self.interval = interval
        self.reply_timeout = reply_timeout
        self._probe = _PROBE_BASE
        self._pending: dict[int, tuple[str, float, float]] = {}  # probe -> (peer, t1, fed at t1)
        self._last: dict[str, float] = {}  # peer -> when it was last probed

    @staticmethod
    def owns(message: ClockRequest | ClockReply) -> bool:
        """Whether *message* is (or answers) a lineage probe, not one of the clock core's."""
        return message.probe > _PROBE_BASE

    def due(self, now: float, peer: str) -> bool:
        """Whether *peer* may be probed now."""
        return now >= self.next_due(peer)  # the same sum as next_due: a timer set there fires

    def probe(self, now: float, fed: float, peer: str) -> ClockRequest | None:
        """A probe of *peer* to send now, if one is due."""
        if not self.due(now, peer):
            return None
        self._last[peer] = now
        self._probe += 1
        for old in [p for p, (_, t1, _) in self._pending.items() if now - t1 > self.reply_timeout]:
            del self._pending[old]
        self._pending[self._probe] = (peer, now, fed)
        return ClockRequest(self._probe, now)

    def stamp(self, now: float, fed: float, request: ClockRequest) -> ClockRequest:
        """*request* with ``t1`` moved to *now*, the moment it is sent (and our federation time
        then remembered), so local work before sending is not counted as delay."""
        pending = self._pending.get(request.probe)
        if pending is None or pending[1] != request.t1 or now < request.t1:
            return request
        self._pending[request.probe] = (pending[0], now, fed)
        return ClockRequest(request.probe, now)

    def next_due(self, peer: str) -> float:
        """When *peer* may next be probed."""
        return self._last.get(peer, -math.inf) + self.interval

    def forget_pending(self) -> None:
        """Drop every probe in flight (this node's federation time just stepped: an answer
        would straddle the step)."""
        self._pending.clear()

    def handle_reply(
        self, now: float, fed: float, reply: ClockReply, sender: str
    ) -> Meeting | None:
        """Judge a peer's answer (received at local time *now*, federation time *fed*); None
        for an unknown, stale, misdirected or impossible one."""
        pending = self._pending.get(reply.probe)
        if pending is None:
            return None
        peer, t1, fed1 = pending
        rtt = (now - t1) - (reply.t3 - reply.t2)
        if sender != peer or reply.t1 != t1 or rtt < 0 or now - t1 > self.reply_timeout:
            return None
        del self._pending[reply.probe]
        ahead = ((reply.t2 - fed1) + (reply.t3 - fed)) / 2
        return Meeting(peer, ahead, rtt / 2)
