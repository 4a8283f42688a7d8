"""The root of the ``registry_bridge`` package's errors, and the registry store's errors, each
carrying the HTTP status the layer above should use::

RegistryBridgeError (a mesh.MeshError; the tree is drawn in the package's docstring)
+-- StoreError (400, bad input)
    +-- Forbidden (403)
    +-- NotFound (404)
    +-- Conflict (409, may carry a ``detail`` mapping)
    +-- Unavailable (503, the database stopped answering; nothing was done)
"""

from __future__ import annotations

from typing import Any

from mesh._errors import MeshError
from mesh._names import InvalidName, check_name

__all__ = [
    "Conflict",
    "Forbidden",
    "NotFound",
    "RegistryBridgeError",
    "StoreError",
    "Unavailable",
    "checked_name",
]


class RegistryBridgeError(MeshError):
    """Base class of the errors the ``registry_bridge`` package raises: the registry client's
    (:class:`~registry_bridge.RegistryError`, on the node's side), the store's
    (:class:`StoreError`, on the registry's) and a database that cannot be used
    (:class:`~registry_bridge.DatabaseError`). Never raised itself."""


class StoreError(RegistryBridgeError):
    """Raised by :class:`RegistryStore` for input it refuses (a bad name, field or value)."""

    status = 400

    def __init__(self, message: str, detail: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class Forbidden(StoreError):
    """Raised when a caller acts on what it does not own: a legacy ``unregister`` of a
    registration made with a token, or a conductor change by a registration that neither
    holds the post nor claims a free one for itself."""

    status = 403


class NotFound(StoreError):
    """Raised when the named federation, orchestra or registration token does not exist."""

    status = 404


class Conflict(StoreError):
    """Raised when a create finds the name taken, a path is held by another live registration
    (a JSON one with another or no ``node_id``, or a JSON one for a legacy ``register``), or a
    conductor compare-and-set sees another term."""

    status = 409


class Unavailable(StoreError):
    """Raised when the database stopped answering during a call (PostgreSQL restarting, the
    connection lost, the write lock not had within 10 s). Nothing of the call was
    acknowledged; the caller may try again."""

    status = 503


def checked_name(value: object, what: str) -> str:
    """*value* if it is a valid name, else :class:`StoreError` saying why."""
    try:
        return check_name(value, what)
    except InvalidName as exc:
        raise StoreError(str(exc)) from None
