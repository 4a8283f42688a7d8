"""The HTTP registry (JSON API, legacy text API, HTML pages, SQLite or PostgreSQL store) and the node-side bridge."""  # noqa: E501

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

__all__ = [
    "AsyncStore",
    "BridgeState",
    "ConductorConflict",
    "ConductorState",
    "Conflict",
    "ElapsedSample",
    "Forbidden",
    "Heartbeat",
    "NotFound",
    "PathConfig",
    "PathStatistics",
    "Peer",
    "Registration",
    "RegistryBridge",
    "RegistryClient",
    "RegistryCommand",
    "RegistryConfig",
    "RegistryConflict",
    "RegistryError",
    "RegistryNotFound",
    "RegistryRejected",
    "RegistryStore",
    "RegistryUnreachable",
    "RelayLink",
    "RelayPaths",
    "RelayedFrame",
    "StoreError",
    "Unavailable",
    "create_app",
    "registry_extension_factory",
    "serve_registry",
]

_claim_public_names("registry_bridge", globals(), __all__)
