"""Timing profiles for the membership protocol: ``lan``, ``wan`` and ``loopback``.

The LAN profile is much faster than memberlist's (probe every 0.3 s instead of 1 s) because a
concert needs a crashed laptop noticed within seconds; the bandwidth this costs stays under
10 kbit/s per node at N=50 (see ``bench/membership.py``). Suspicion timeouts follow memberlist's
formula (``mult x max(1, log10 N) x probe interval``) with Lifeguard's confirmations shrinking
them from ``max`` towards ``min``.
"""

from __future__ import annotations

import math

import attrs

__all__ = ["PROFILES", "Profile", "get_profile"]


@attrs.frozen
class Profile:
    """The timing knobs of the membership protocol (seconds unless said otherwise)."""

    name: str
    probe_interval: float
    """How often a node probes one member."""
    probe_timeout: float
    """How long a direct ping waits for its ack before indirect probes are sent."""
    indirect_checks: int
    """How many members are asked to probe a silent target for us."""
    gossip_interval: float
    """How often pending updates are sent to ``gossip_fanout`` random members."""
    gossip_fanout: int
    suspicion_mult: float
    """Minimum suspicion timeout = mult x max(1, log10 N) x probe_interval."""
    suspicion_max_mult: float
    """Maximum suspicion timeout = this x minimum; confirmations shrink it towards the minimum."""
    suspicion_floor: float
    """No minimum suspicion timeout is shorter than this: in a small group the formula gives
    0.6 s, less than a laptop's 1 s stall (a busy audio machine), which would be declared dead."""
    retransmit_mult: int
    """An update is sent ``mult x ceil(log10(N + 1))`` times."""
    push_pull_interval: float
    """Full-state TCP exchange with one random member; scaled up above 32 members."""
    stream_timeout: float
    """How long a TCP exchange may take."""
    reconnect_interval: float
    """How often a dead (not left) member is tried again, to heal partitions."""
    gossip_to_dead: float
    """How long dead members still get gossip, so a falsely declared node learns and refutes."""
    tombstone_timeout: float
    """How long dead and left members are remembered."""
    awareness_max: int
    """Lifeguard's local-health multiplier ceiling: probe interval and timeout scale up to this."""
    push_pull_page: int | None = None
    """Bytes of member records one push-pull page carries on this profile's paths; ``None``:
    as many as one frame holds (:data:`mesh._membership.PUSH_PULL_BUDGET`)."""

    def suspicion_bounds(self, members: int) -> tuple[float, float]:
        """Return (min, max) suspicion timeouts for a group of *members*."""
        low = self.suspicion_mult * max(1.0, math.log10(max(members, 1))) * self.probe_interval
        low = max(low, self.suspicion_floor)
        return low, low * self.suspicion_max_mult

    def retransmit_limit(self, members: int) -> int:
        """How many times one update is sent in a group of *members*."""
        return self.retransmit_mult * max(1, math.ceil(math.log10(members + 1)))

    def push_pull_period(self, members: int) -> float:
        """The push-pull interval scaled for *members* (memberlist's rule, threshold 32)."""
        if members <= 32:
            return self.push_pull_interval
        return self.push_pull_interval * (math.ceil(math.log2(members) - math.log2(32)) + 1)


PROFILES: dict[str, Profile] = {
    "lan": Profile(
        name="lan",
        probe_interval=0.3,
        probe_timeout=0.15,
        indirect_checks=3,
        gossip_interval=0.2,
        gossip_fanout=3,
        suspicion_mult=2.0,
        suspicion_max_mult=3.0,
        suspicion_floor=1.0,
        retransmit_mult=6,
        push_pull_interval=30.0,
        stream_timeout=5.0,
        reconnect_interval=5.0,
        gossip_to_dead=15.0,
        tombstone_timeout=3600.0,
        awareness_max=8,
    ),
    "wan": Profile(
        name="wan",
        probe_interval=2.0,
        probe_timeout=1.0,
        indirect_checks=3,
        gossip_interval=0.5,
        gossip_fanout=4,
        suspicion_mult=4.0,
        suspicion_max_mult=4.0,
        suspicion_floor=4.0,
        retransmit_mult=4,
        push_pull_interval=60.0,
        stream_timeout=20.0,
        reconnect_interval=20.0,
        gossip_to_dead=60.0,
        tombstone_timeout=6 * 3600.0,
        awareness_max=8,
        # A path between venues may be the registry's relay, whose frames hold 32 KiB at most
        # (a state exchange larger than that could not cross it): pages of 24 KiB, about 150
        # members each, cross it, and arrive sooner on a slow, lossy path anyway.
        push_pull_page=24 * 1024,
    ),
    "loopback": Profile(
        name="loopback",
        probe_interval=0.2,
        probe_timeout=0.1,
        indirect_checks=2,
        gossip_interval=0.1,
        gossip_fanout=3,
        suspicion_mult=2.5,
        suspicion_max_mult=3.0,
        suspicion_floor=0.5,
        retransmit_mult=3,
        push_pull_interval=15.0,
        stream_timeout=2.0,
        reconnect_interval=2.0,
        gossip_to_dead=10.0,
        tombstone_timeout=3600.0,
        awareness_max=8,
    ),
}


def get_profile(name: str) -> Profile:
    """Return the profile called *name*; raise ValueError naming the choices otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(
            f"unknown timing profile {name!r}; choose one of {', '.join(PROFILES)}"
        ) from None
