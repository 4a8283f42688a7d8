"""stagemesh's peer-to-peer core: wire format, membership, discovery, election, clock, node.

Public names are re-exported here from private modules (trio's habit); ``tests/test_exports.py``
checks the list.
"""

from mesh._extensions import Extension as Extension
from mesh._membership import (
    MemberEvent as MemberEvent,
    MemberView as MemberView,
    PathConflict as PathConflict,
)
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
from mesh._nodecore import Publication as Publication
from mesh._wire import (
    Envelope as Envelope,
    InvalidMessage as InvalidMessage,
    Keyring as Keyring,
    MessageTooLarge as MessageTooLarge,
    WireCodec as WireCodec,
)

__version__ = "0.1.0"
