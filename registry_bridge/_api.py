"""Every public name of the ``registry_bridge`` package, imported from the private modules that
define it.

``registry_bridge/__init__.py`` loads this module on the first use of a public name, not when
the package is imported (see :mod:`mesh._public`): the node's command line imports the package's
plugin without paying for the HTTP server, the templates and the database drivers. Add a new
public name here and to ``__all__`` in ``registry_bridge/__init__.py``;
``tests/test_exports.py`` checks that the two agree.
"""

from mesh._public import claim_public_names as _claim_public_names
from registry_bridge._app import create_app as create_app
from registry_bridge._bridge import (
    BridgeState as BridgeState,
    RegistryBridge as RegistryBridge,
    registry_extension_factory as registry_extension_factory,
)
from registry_bridge._client import (
    ConductorConflict as ConductorConflict,
    ConductorState as ConductorState,
    ElapsedSample as ElapsedSample,
    Heartbeat as Heartbeat,
    Peer as Peer,
    Registration as Registration,
    RegistryClient as RegistryClient,
    RegistryConflict as RegistryConflict,
    RegistryError as RegistryError,
    RegistryNotFound as RegistryNotFound,
    RegistryRejected as RegistryRejected,
    RegistryUnreachable as RegistryUnreachable,
    RelayedFrame as RelayedFrame,
)
from registry_bridge._command import RegistryCommand as RegistryCommand
from registry_bridge._database import DatabaseError as DatabaseError
from registry_bridge._errors import RegistryBridgeError as RegistryBridgeError
from registry_bridge._plugin import RegistryConfig as RegistryConfig
from registry_bridge._relaylink import RelayLink as RelayLink
from registry_bridge._relaypath import (
    PathConfig as PathConfig,
    PathStatistics as PathStatistics,
    RelayPaths as RelayPaths,
)
from registry_bridge._server import serve_registry as serve_registry
from registry_bridge._store import (
    AsyncStore as AsyncStore,
    Conflict as Conflict,
    Forbidden as Forbidden,
    NotFound as NotFound,
    RegistryStore as RegistryStore,
    StoreError as StoreError,
    Unavailable as Unavailable,
)

_claim_public_names("registry_bridge", globals(), [n for n in globals() if not n.startswith("_")])
