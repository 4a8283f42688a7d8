"""The HTTP registry (JSON API, legacy text API, HTML pages, SQLite or PostgreSQL store) and
the node-side bridge.

Errors::

    RegistryBridgeError         the root, a ``mesh.MeshError``: catches every one below
    ├── RegistryError           what ``RegistryClient`` (the node's side) raises
    │   ├── RegistryUnreachable no answer (connection refused, timeout, bad reply, 5xx)
    │   └── RegistryRejected    a 4xx answer (``status``, the registry's ``message``)
    │       ├── RegistryNotFound 404: unknown federation, orchestra or expired token
    │       └── RegistryConflict 409: the name exists, or another live node holds the path
    │           └── ConductorConflict the conductor compare-and-set saw another term
    ├── StoreError              what ``RegistryStore`` refuses (HTTP 400; ``status``)
    │   ├── Forbidden           403: acting on what the caller does not own
    │   ├── NotFound            404: no such federation, orchestra or token
    │   ├── Conflict            409: the name or path is taken, another conductor term
    │   └── Unavailable         503: the database stopped answering; nothing was done
    └── DatabaseError           the database cannot be used (bad URL, unreachable, refused
                                credentials, a schema at another version)
"""

import typing as _typing

from mesh._public import load_public_name as _load_public_name

if _typing.TYPE_CHECKING:
    from registry_bridge._api import *  # noqa: F403

__all__ = [
    "AsyncStore",
    "BridgeState",
    "ConductorConflict",
    "ConductorState",
    "Conflict",
    "DatabaseError",
    "ElapsedSample",
    "Forbidden",
    "Heartbeat",
    "NotFound",
    "PathConfig",
    "PathStatistics",
    "Peer",
    "Registration",
    "RegistryBridge",
    "RegistryBridgeError",
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


def __getattr__(name: str) -> object:
    """Load the public names on first use (from ``registry_bridge/_api.py``); cache the one
    asked for."""
    return _load_public_name("registry_bridge", name, __all__, globals())


def __dir__() -> list[str]:
    """The public names without loading them (for completion and ``dir(registry_bridge)``)."""
    return sorted({*globals(), *__all__})
