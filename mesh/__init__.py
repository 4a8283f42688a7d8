"""stagemesh's peer-to-peer core: wire format, membership, discovery, election, clock, node.

::

    async with mesh.open_node(mesh.NodeConfig(orchestra="cmu", name="rbd")) as node:
        async with node.events() as events:  # every mesh.NodeEvent of this node
            ...

Public names are re-exported here from private modules (trio's habit), listed in ``__all__``
and imported on first use (PEP 562) from ``mesh/_api.py``, so that importing a light submodule
such as ``mesh._cli`` does not import trio, zeroconf and every protocol core. Once loaded, they
show ``mesh`` as their module. ``tests/test_exports.py`` checks that ``__all__`` and
``mesh/_api.py`` agree.

Errors (each keeps the builtin base in brackets, so older handlers still catch it)::

    MeshError                 the root: ``except mesh.MeshError`` catches every one below
    ├── InvalidName           [ValueError] not 1-64 letters, digits, ``-_.`` (a federation,
    │                         orchestra, node or role name)
    ├── InvalidSeed           [ValueError] a ``--seed`` that is not ``HOST:PORT``
    ├── InterfaceError        [ValueError] a bind address or ``--interface`` this host cannot use
    ├── InvalidMessage        [ValueError] bytes that are not a valid message (``reason``)
    │   └── MessageTooLarge   a message over its size limit (never truncated)
    ├── InvalidTempo          [ValueError] a tempo out of range, or a malformed published one
    ├── NotConductor          [RuntimeError] only the conductor sets the tempo
    ├── PathInUse             another process on this host runs the same node path
    │                         (``open_node``)
    ├── PathHeld              no longer raised (a path conflict does not stop a node)
    └── RequestError          ``Node.request`` failed
        ├── NoSuchMember      [LookupError] no live member has that path
        ├── PeerUnreachable   the TCP connection failed
        ├── RequestTimeout    no reply in time
        └── RemoteError       the peer's handler failed (``error_type``, message)

The extensions' roots derive from it too, so ``except mesh.MeshError`` catches everything
stagemesh raises on purpose: ``roles.RolesError`` (a station's refusals, operator keys, its
state directory) and ``registry_bridge.RegistryBridgeError`` (the registry client, store and
database); each package's docstring draws its own tree.
"""

import typing as _typing

from mesh._public import load_public_name as _load_public_name

if _typing.TYPE_CHECKING:
    from mesh._api import *  # noqa: F403

__version__ = "0.1.0"

__all__ = [
    "CONDUCTOR",
    "PROFILES",
    "TEMPO_TOPIC",
    "BeatPosition",
    "Candidate",
    "ClaimAnswer",
    "ClaimRequest",
    "ClockConfig",
    "ClockCore",
    "ClockSnapshot",
    "ClockStepped",
    "ConductorArbiter",
    "DiscoveryConfig",
    "ElectionCore",
    "Envelope",
    "EpochOffer",
    "Extension",
    "InterfaceError",
    "InvalidMessage",
    "InvalidName",
    "InvalidSeed",
    "InvalidTempo",
    "Keyring",
    "LinkModel",
    "MemberEvent",
    "MemberView",
    "Membership",
    "MeshError",
    "MessageTooLarge",
    "NoSuchMember",
    "Node",
    "NodeConfig",
    "NodeCore",
    "NodeEvent",
    "NotConductor",
    "PathConflict",
    "PathHeld",
    "PathInUse",
    "PeerHint",
    "PeerUnreachable",
    "PostChanged",
    "Profile",
    "Publication",
    "RemoteError",
    "RequestError",
    "RequestTimeout",
    "Simulator",
    "SkewedClock",
    "SteppedDown",
    "Tempo",
    "TempoChanged",
    "TempoIgnored",
    "TempoKeeper",
    "TempoReplica",
    "TempoSegment",
    "TempoStatistics",
    "TimeSourceChanged",
    "WireCodec",
    "check_name",
    "get_profile",
    "open_node",
    "open_tempo",
    "parse_seed",
    "pick_lease",
    "supernode_post",
]


def __getattr__(name: str) -> object:
    """Load the public names on first use; cache the one asked for in this module."""
    return _load_public_name("mesh", name, __all__, globals())


def __dir__() -> list[str]:
    """The public names without loading them (for completion and ``dir(mesh)``)."""
    return sorted({*globals(), *__all__})
