"""Every public name of the ``mesh`` package, imported from the private modules that define it.

``mesh/__init__.py`` loads this module on the first use of any public name, not when the package
is imported: ``stagemesh --help``, ``status`` and ``keygen`` import ``mesh._cli`` and friends
without paying for trio, zeroconf and the protocol cores. Add a new public name here and to
``__all__`` in ``mesh/__init__.py``; ``tests/test_exports.py`` checks that the two agree. Loading
this module shows ``mesh`` as the module of every class and function it exports.
"""

from mesh._clock import (
    ClockConfig as ClockConfig,
    ClockCore as ClockCore,
    ClockSnapshot as ClockSnapshot,
    SkewedClock as SkewedClock,
)
from mesh._discovery import (
    DiscoveryConfig as DiscoveryConfig,
    InvalidSeed as InvalidSeed,
    PeerHint as PeerHint,
    parse_seed as parse_seed,
)
from mesh._election import (
    CONDUCTOR as CONDUCTOR,
    Candidate as Candidate,
    ClaimAnswer as ClaimAnswer,
    ClaimRequest as ClaimRequest,
    ConductorArbiter as ConductorArbiter,
    ElectionCore as ElectionCore,
    pick_lease as pick_lease,
    supernode_post as supernode_post,
)
from mesh._errors import MeshError as MeshError
from mesh._events import (
    ClockStepped as ClockStepped,
    MemberEvent as MemberEvent,
    MemberView as MemberView,
    NodeEvent as NodeEvent,
    PathConflict as PathConflict,
    PostChanged as PostChanged,
    Publication as Publication,
    SteppedDown as SteppedDown,
    TimeSourceChanged as TimeSourceChanged,
)
from mesh._extensions import Extension as Extension
from mesh._interfaces import InterfaceError as InterfaceError
from mesh._membership import Membership as Membership
from mesh._names import InvalidName as InvalidName, check_name as check_name
from mesh._node import (
    Node as Node,
    NodeConfig as NodeConfig,
    NoSuchMember as NoSuchMember,
    PathHeld as PathHeld,
    PeerUnreachable as PeerUnreachable,
    RemoteError as RemoteError,
    RequestError as RequestError,
    RequestTimeout as RequestTimeout,
    open_node as open_node,
)
from mesh._nodecore import EpochOffer as EpochOffer, NodeCore as NodeCore
from mesh._profiles import PROFILES as PROFILES, Profile as Profile, get_profile as get_profile
from mesh._public import claim_public_names as _claim_public_names
from mesh._sim import LinkModel as LinkModel, Simulator as Simulator
from mesh._state import PathInUse as PathInUse
from mesh._tempo import (
    TEMPO_TOPIC as TEMPO_TOPIC,
    BeatPosition as BeatPosition,
    InvalidTempo as InvalidTempo,
    NotConductor as NotConductor,
    Tempo as Tempo,
    TempoChanged as TempoChanged,
    TempoIgnored as TempoIgnored,
    TempoReplica as TempoReplica,
    TempoSegment as TempoSegment,
)
from mesh._tempo_node import (
    TempoKeeper as TempoKeeper,
    TempoStatistics as TempoStatistics,
    open_tempo as open_tempo,
)
from mesh._wire import (
    Envelope as Envelope,
    InvalidMessage as InvalidMessage,
    Keyring as Keyring,
    MessageTooLarge as MessageTooLarge,
    WireCodec as WireCodec,
)

_claim_public_names("mesh", globals(), [n for n in globals() if not n.startswith("_")])
