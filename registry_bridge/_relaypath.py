"""Direct or through the registry: the path to each supernode of another site (sans-IO).

A supernode gossips with the supernodes of other sites directly over UDP when it can. Two
sites behind NATs that drop unsolicited datagrams cannot: then the datagrams go through the
registry's relay (``registry_bridge._relayapi``), which both sides reach over HTTP. This core
decides, per peer address, which path each outgoing datagram takes, from what the driver
observes; it takes ``now`` (seconds, any monotonic clock) and holds no I/O.

Rules (per peer):

- A peer starts **direct** (optimistic: most sites can reach each other).
- While direct, if datagrams were sent to it directly for :attr:`PathConfig.probe_budget`
  seconds with no direct ack in that time (the WAN probe budget: a probe, its indirect
  probes and their retries), it moves to the **relay**.
- While relayed, every :attr:`PathConfig.retry_every` seconds one datagram also goes
  directly (``both``), so a direct path that opened (a NAT rule added, a mapping made by the
  other side's traffic) is found; anything heard from the peer directly makes the next
  datagram go both ways too (so the peer's answer to a direct datagram comes back directly);
  the first direct ack moves the peer back to **direct** at once.
- A direct ack while direct keeps it direct and restarts the budget.
- A direct TCP exchange (a join, a state sync) that could not be made moves the peer to the
  relay at once; exchanges with a relayed peer go through the relay too.

What counts as a direct ack is the driver's to say: an acknowledgement from the peer that
arrived on the UDP socket (not through the relay). :meth:`RelayPaths.statistics` says how
many datagrams went each way, so the share carried by the relay can be reported.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Literal

import attrs

__all__ = ["PathConfig", "PathStatistics", "RelayPaths", "Route"]

Route = Literal["direct", "relay", "both"]
"""How one datagram goes: on the UDP socket, through the registry, or both ways."""


@attrs.frozen
class PathConfig:
    """The timing of :class:`RelayPaths` (seconds)."""

    probe_budget: float = 5.0
    """Direct sends with no direct ack for this long move a peer to the relay. Acks answer
    probes, and the supernodes probe each other every 2 s (the ``wan`` profile): two missed
    probe periods and a timeout, so a working path is not given up between two acks (at 2 s
    a gossip datagram sent just before the next ack came moved a healthy peer to the relay)."""
    retry_every: float = 2.0
    """While relayed, one datagram also goes directly this often."""

    def __attrs_post_init__(self) -> None:
        if not self.probe_budget > 0 or not self.retry_every > 0:
            raise ValueError("probe_budget and retry_every must be positive")


@attrs.frozen
class PathStatistics:
    """What went where: datagrams sent directly and through the relay, and each peer's path."""

    direct: int
    relayed: int
    routes: dict[Hashable, Literal["direct", "relay"]]
    """Each peer's path now, by the key the driver gave it."""
    switches: int
    """How many times a peer moved between direct and relay."""

    @property
    def relay_share(self) -> float:
        """The share of datagrams (0-1) that went through the relay."""
        total = self.direct + self.relayed
        return self.relayed / total if total else 0.0


@attrs.define
class _Peer:
    relayed: bool = False
    unacked_since: float | None = None
    """When the first direct send without a direct ack since was made."""
    last_direct_try: float = float("-inf")
    acked: bool = False
    """A direct ack came since the peer was last moved to the relay (or first seen)."""


class RelayPaths:
    """Per-peer choice of path (see the module's docstring). Peers are any hashable key the
    driver uses for a destination (an address)."""

    def __init__(self, config: PathConfig | None = None) -> None:
        self.config = config or PathConfig()
        self._peers: dict[Hashable, _Peer] = {}
        self._direct = 0
        self._relayed = 0
        self._switches = 0

    def route(self, now: float, peer: Hashable) -> Route:
        """The path for one datagram to *peer* sent now (recorded as sent that way)."""
        state = self._peers.setdefault(peer, _Peer())
        if not state.relayed:
            if state.unacked_since is None:
                state.unacked_since = now
            elif now - state.unacked_since >= self.config.probe_budget:
                state.relayed = True
                state.acked = False
                state.last_direct_try = now
                self._switches += 1
        if not state.relayed:
            self._direct += 1
            return "direct"
        self._relayed += 1
        if now - state.last_direct_try >= self.config.retry_every:
            state.last_direct_try = now
            self._direct += 1
            return "both"
        return "relay"

    def direct_ack(self, now: float, peer: Hashable) -> None:
        """An acknowledgement from *peer* arrived directly (on the UDP socket)."""
        state = self._peers.setdefault(peer, _Peer())
        if state.relayed:
            state.relayed = False
            self._switches += 1
        state.unacked_since = None
        state.acked = True

    def direct_heard(self, now: float, peer: Hashable) -> None:
        """Something from *peer* arrived directly: its way to us works, so while relayed the
        next datagram to it also goes directly (an ack among them brings it back at once)."""
        state = self._peers.get(peer)
        if state is not None and state.relayed:
            state.last_direct_try = float("-inf")

    def direct_failed(self, now: float, peer: Hashable) -> None:
        """A direct TCP exchange with *peer* could not be made (refused, unreachable, timed
        out): stronger evidence than missing acks, so *peer* moves to the relay at once."""
        state = self._peers.setdefault(peer, _Peer())
        if not state.relayed:
            state.relayed = True
            state.acked = False
            state.last_direct_try = now
            self._switches += 1

    def forget(self, peer: Hashable) -> None:
        """*peer* is no longer a supernode of another site: drop what is known of it."""
        self._peers.pop(peer, None)

    def relayed(self, peer: Hashable) -> bool:
        """Whether datagrams to *peer* go through the relay now."""
        state = self._peers.get(peer)
        return state is not None and state.relayed

    def confirmed_direct(self) -> list[Hashable]:
        """The peers reached directly for certain: not relayed, and a direct ack came since
        they were last relayed (a new peer starts direct only on trust)."""
        return [p for p, s in self._peers.items() if s.acked and not s.relayed]

    def statistics(self) -> PathStatistics:
        """Counts and routes so far (a frozen value)."""
        return PathStatistics(
            direct=self._direct,
            relayed=self._relayed,
            routes={p: "relay" if s.relayed else "direct" for p, s in self._peers.items()},
            switches=self._switches,
        )
