"""The HTTP registry (JSON API, legacy text API, HTML pages, SQLite or PostgreSQL store) and
the node-side bridge."""

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


def __getattr__(name: str) -> object:
    """Load the public names on first use (from ``registry_bridge/_api.py``); cache the one
    asked for."""
    return _load_public_name("registry_bridge", name, __all__, globals())


def __dir__() -> list[str]:
    """The public names without loading them (for completion and ``dir(registry_bridge)``)."""
    return sorted({*globals(), *__all__})
