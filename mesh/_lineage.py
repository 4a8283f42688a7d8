"""Whether a fresh node's own clock may define federation time, or must adopt the federation's.

A node starts with federation time 0 (its own start is the epoch). That is right for the first
node of a federation, and wrong for a node that restarts while the federation goes on: if it is
elected the time reference at once (a conductor restarted by its supervisor keeps its lease), its
young clock would drag every follower back by the federation's age.

:class:`ClockLineage` settles the question with one NTP-style probe to a live peer, made only
while the node is its own time reference and has never been synced to anyone:

- the peer is synced (it belongs to an established lineage) and its federation time is ahead of
  ours by more than ``margin``: the federation is older than this node, so it **adopts** the
  peer: follows it until its clock is synced, and only then acts as the reference (from the
  adopted time, which it keeps continuous);
- otherwise (the peer is behind, about equal, or not synced itself): this node's clock is the
  federation's; it is **settled**.

A node is also settled as soon as its clock syncs to any reference. Until it is settled, a node
that is its own reference is *provisional*: it answers clock requests with an unknown error bound
so that followers learn nothing from its young time. Sans-IO like the other cores: the caller
passes local time ``now`` and its federation time ``fed``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from mesh._wire import ClockReply, ClockRequest

__all__ = ["ClockLineage"]

_PROBE_BASE = 1 << 40  # lineage probes never collide with the clock core's (1, 2, 3, ...)


class ClockLineage:
    """The lineage check of one node (see the module docstring).

    *margin* (seconds) is how far ahead a peer's time must be to be adopted; *interval* is the
    time between probes while no answer settles the question; *reply_timeout* bounds a usable
    round trip; *samples_to_adopt* is how many samples of an adopted peer's time the node needs
    before it is settled (the peer may never say it is synced: its reference may be this node).
    """

    def __init__(
        self,
        *,
        margin: float = 0.1,
        interval: float = 0.25,
        reply_timeout: float = 1.0,
        samples_to_adopt: int = 4,
    ):
        self.margin = margin
        self.samples_to_adopt = samples_to_adopt
        """Samples of the adopted peer's time after which this node's clock holds it."""
        self.interval = interval
        self.reply_timeout = reply_timeout
        self.settled = False
        self.adopting: str | None = None
        """The peer being followed to adopt its time, until this node's clock is synced."""
        self._probe = _PROBE_BASE
        self._turn = 0
        self._pending: dict[int, tuple[str, float, float]] = {}  # probe -> (peer, t1, fed at t1)
        self._next = -math.inf

    @staticmethod
    def owns(reply: ClockReply) -> bool:
        """Whether *reply* answers a lineage probe (not one of the clock core's requests)."""
        return reply.probe > _PROBE_BASE

    def settle(self) -> None:
        """This node's clock is part of a lineage now (synced, or found to be the oldest)."""
        self.settled = True
        self.adopting = None
        self._pending.clear()

    def probe(
        self, now: float, fed: float, peers: Sequence[str]
    ) -> tuple[str, ClockRequest] | None:
        """A probe to send now to one of the live *peers* (taken in turn), if one is due."""
        if self.settled or self.adopting is not None or not peers or now < self._next:
            return None
        self._next = now + self.interval
        peer = peers[self._turn % len(peers)]
        self._turn += 1
        self._probe += 1
        for old in [p for p, (_, t1, _) in self._pending.items() if now - t1 > self.reply_timeout]:
            del self._pending[old]
        self._pending[self._probe] = (peer, now, fed)
        return peer, ClockRequest(self._probe, now)

    def next_deadline(self) -> float | None:
        """When :meth:`probe` may next return a probe (None: it will not)."""
        return None if self.settled or self.adopting is not None else self._next

    def handle_reply(self, now: float, fed: float, reply: ClockReply, sender: str) -> None:
        """Judge a peer's answer (received at local time *now*, federation time *fed*)."""
        pending = self._pending.get(reply.probe)
        if self.settled or self.adopting is not None or pending is None:
            return
        peer, t1, fed1 = pending
        rtt = (now - t1) - (reply.t3 - reply.t2)
        if sender != peer or reply.t1 != t1 or rtt < 0 or now - t1 > self.reply_timeout:
            return
        del self._pending[reply.probe]
        ahead = ((reply.t2 - fed1) + (reply.t3 - fed)) / 2
        if reply.synced and ahead > self.margin + rtt / 2:
            self.adopting = peer
            self._pending.clear()
        else:
            self.settle()
