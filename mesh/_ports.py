"""The ports stagemesh uses by default, and where a node looks when its gossip port is taken.

======================  ==========  ==============================================
what                    port        protocol
======================  ==========  ==============================================
broadcast beacons       7470        UDP, shared by every node (SO_REUSEPORT)
gossip (first node)     7471        UDP and TCP
gossip (next nodes)     7472-7479   the first free one, then any free port
registry                7480        HTTP (``stagemesh registry``)
node status API         any free    HTTP on 127.0.0.1 (``--status`` to choose)
demo dashboard          7490        HTTP on 127.0.0.1 (``stagemesh demo``)
demo beacons            7491-7492   UDP on loopback (``stagemesh demo``; not 7470)
======================  ==========  ==============================================

A node started without ``--port`` takes 7471, else the first free port of 7472-7479, else a port
the system picks (from its ephemeral range, far above these): the search never reaches the
registry's port or the beacons' port, so the tenth node on one machine cannot take 7480 and keep
a registry from starting. Nodes are found by discovery (mDNS and beacons carry the port), so a
node on a picked port is found like any other; a ``--seed`` naming port 7471 reaches the first
node, which tells the others.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_BEACON_PORT",
    "DEFAULT_GOSSIP_PORT",
    "DEFAULT_REGISTRY_PORT",
    "GOSSIP_SEARCH",
    "gossip_port_candidates",
]

DEFAULT_BEACON_PORT = 7470
DEFAULT_GOSSIP_PORT = 7471
DEFAULT_REGISTRY_PORT = 7480
GOSSIP_SEARCH = range(DEFAULT_GOSSIP_PORT, DEFAULT_REGISTRY_PORT)
"""The ports a node without ``--port`` tries, in order, before letting the system pick one."""

_SYSTEM_PICKS = 20
"""Port 0 tries: the system picks a free UDP port, whose TCP twin may still be taken (by any
connection's ephemeral port), so a pick is tried again with another."""


def gossip_port_candidates(port: int, next_free: bool) -> list[int]:
    """The ports to try binding, in order (0 = a port the system picks).

    *port* 0 means any free port; otherwise *port* alone, or with *next_free* (the node was
    given no ``--port``) :data:`GOSSIP_SEARCH` from *port* on, then ports the system picks.
    """
    if port == 0:
        return [0] * _SYSTEM_PICKS
    if not next_free:
        return [port]
    search = [p for p in GOSSIP_SEARCH if p >= port] or [port]
    return search + [0] * _SYSTEM_PICKS
