"""stagemesh's peer-to-peer core: wire format, membership, discovery, election, clock, node.

Public names are re-exported here from private modules (trio's habit); ``tests/test_exports.py``
checks the list.
"""

from mesh._names import InvalidName as InvalidName, check_name as check_name
from mesh._wire import (
    Envelope as Envelope,
    InvalidMessage as InvalidMessage,
    Keyring as Keyring,
    MessageTooLarge as MessageTooLarge,
    WireCodec as WireCodec,
)

__version__ = "0.1.0"
