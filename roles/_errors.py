"""The exceptions of the ``roles`` package, and how they cross a network hop.

Every error a station sends back to whoever pushed a configuration is a :class:`RolesError`.
Its message alone explains the problem (role, uuid, reason, and what to change), because the
sender cannot read the station's logs. :meth:`RolesError.to_wire` turns an error into a plain
dict (``type``, ``message``, ``role``, ``uuid``) and :func:`error_from_wire` turns that back
into the same class on the sender's side, so ``except BlockedRole`` works across nodes::

    RolesError
    ├── InvalidConfiguration        the update is refused; nothing of it was applied
    │   ├── ConfigFileError         malformed configuration (JSON file or dict): file, path, problem
    │   ├── BlockedRole             a role this station refuses to run
    │   ├── MissingRoleFactory      no factory on this station makes that role
    │   ├── TooManyInstances        more instances of a role than its factory allows
    │   └── InvalidOptions          an instance's options do not fit its factory's schema
    ├── InvalidRequest              a request that is not a configuration: unknown kind,
    │                               bad payload, unknown role instance
    ├── NotConductor                a conductor's request sent to (or from) a node that does
    │                               not conduct; names the conductor
    ├── Unauthorized                refused because of who asked: no or a bad operator
    │   └── StaleOrder              signature, open federation; or older than what runs
    ├── OperatorKeyError            an operator key file cannot be read or written (local only)
    └── SupervisorInUse             [RuntimeError] another station uses the state directory
                                    (local only)

:class:`RolesError` is a :class:`mesh.MeshError`, so ``except mesh.MeshError`` also catches what
a station raises. The two local errors never cross a network hop: they are not rebuilt by
:func:`error_from_wire` (an unknown type there becomes an :class:`InvalidConfiguration`).

Every error also has a **family**: the name the Conference Manager (the seed) documents for
it, so a client matching on ``InvalidConfiguration``, ``MissingRoleFactory`` or
``BlockedRole`` finds every refusal: ``BlockedRole`` and ``MissingRoleFactory`` are their own
family, every other :class:`InvalidConfiguration` is of family ``InvalidConfiguration``, and
other errors are their own family. :func:`error_family` gives it for a type name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from mesh._errors import MeshError

__all__ = [
    "BlockedRole",
    "ConfigFileError",
    "InvalidConfiguration",
    "InvalidOptions",
    "InvalidRequest",
    "MissingRoleFactory",
    "NotConductor",
    "OperatorKeyError",
    "RolesError",
    "StaleOrder",
    "SupervisorInUse",
    "TooManyInstances",
    "Unauthorized",
    "error_family",
    "error_from_dict",
    "error_from_wire",
    "is_roles_error",
]


class RolesError(MeshError):
    """Base of every error of the ``roles`` package; never raised itself.

    ``role`` and ``uuid`` name the role instance concerned when there is one (``None``
    otherwise); ``str(error)`` is the full human-readable message.
    """

    wire_name: ClassVar[str] = "RolesError"
    family: ClassVar[str] = "RolesError"

    def __init__(self, message: str, *, role: str | None = None, uuid: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.role = role
        self.uuid = uuid

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, role={self.role!r}, uuid={self.uuid!r})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, RolesError)
        return (self.message, self.role, self.uuid) == (other.message, other.role, other.uuid)

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.message, self.role, self.uuid))

    def to_wire(self) -> dict[str, Any]:
        """Return a msgpack/JSON-able dict that :func:`error_from_wire` turns back into this."""
        return {
            "type": self.wire_name,
            "family": self.family,
            "message": self.message,
            "role": self.role,
            "uuid": self.uuid,
        }


class InvalidConfiguration(RolesError):
    """Raised when a configuration update is refused as a whole; nothing of it was applied.

    Raised as one of its subclasses by ``Station.apply`` / ``validate_update``; raised itself
    only by :func:`error_from_wire` for an error type this side does not know.
    """

    wire_name = "InvalidConfiguration"
    family = "InvalidConfiguration"


class ConfigFileError(InvalidConfiguration):
    """Raised when a role configuration (a JSON file or a dict) is malformed.

    The message names the source (file name, or a label such as ``roles.apply payload``),
    the path inside it (``$.record.3f2a.device``) and what is wrong there.
    """

    wire_name = "ConfigFileError"

    def __init__(
        self,
        message: str,
        *,
        role: str | None = None,
        uuid: str | None = None,
        source: str | None = None,
        path: str | None = None,
        problem: str | None = None,
    ) -> None:
        super().__init__(message, role=role, uuid=uuid)
        self.source = source
        self.path = path
        self.problem = problem

    @classmethod
    def at(
        cls,
        source: str,
        path: str,
        problem: str,
        *,
        role: str | None = None,
        uuid: str | None = None,
    ) -> ConfigFileError:
        """Build the error for *problem* at *path* inside *source*."""
        return cls(
            f"{source}: at {path}: {problem}",
            role=role,
            uuid=uuid,
            source=source,
            path=path,
            problem=problem,
        )


class BlockedRole(InvalidConfiguration):
    """Raised when an update asks for a role listed in the station's ``blocked_roles``."""

    wire_name = "BlockedRole"
    family = "BlockedRole"


class MissingRoleFactory(InvalidConfiguration):
    """Raised when an update names a role for which the station has no registered factory."""

    wire_name = "MissingRoleFactory"
    family = "MissingRoleFactory"


class TooManyInstances(InvalidConfiguration):
    """Raised when an update has more instances (uuids) of a role than its factory's limit."""

    wire_name = "TooManyInstances"


class InvalidOptions(InvalidConfiguration):
    """Raised when an instance's options are missing, unknown, of the wrong type, or make no
    command (for example a template variable with no value)."""

    wire_name = "InvalidOptions"


class InvalidRequest(RolesError):
    """Raised by ``Station.handle_request`` and the station's controls for a request that is not
    understood: an unknown kind, a malformed payload, or a role instance the station does not
    have."""

    wire_name = "InvalidRequest"
    family = "InvalidRequest"


class NotConductor(RolesError):
    """Raised by ``roles.push`` on a node that is not the conductor, and by a station given
    ``roles.apply`` by a node that is not the conductor (at the term the station knows); the
    message names the conductor's path (``conductor``, ``None`` when there is none)."""

    wire_name = "NotConductor"
    family = "NotConductor"

    def __init__(
        self,
        message: str,
        *,
        conductor: str | None = None,
        role: str | None = None,
        uuid: str | None = None,
    ) -> None:
        super().__init__(message, role=role, uuid=uuid)
        self.conductor = conductor


class Unauthorized(RolesError):
    """Raised when a change to a station is refused because of who asked, not what: no
    operator signature where one is needed, a bad or retired signature, an order for another
    station or federation, a change from a node that is not the current conductor, or remote
    changes refused on an open federation. The message says which, and what to do."""

    wire_name = "Unauthorized"
    family = "Unauthorized"


class StaleOrder(Unauthorized):
    """Raised when a signed order is older than what the station already runs (a replay, a
    stale replica of the manager's view, or a newer change made by the station's own
    operator); the message names both times."""

    wire_name = "StaleOrder"


class OperatorKeyError(RolesError):
    """Raised when an operator key file cannot be read or written; the message names the
    file, the line when there is one, and what is wrong."""

    wire_name = "OperatorKeyError"
    family = "OperatorKeyError"


class SupervisorInUse(RolesError, RuntimeError):
    """Another supervisor (another station, maybe in another process) uses this state
    directory; two would run two copies of each role instance."""

    wire_name = "SupervisorInUse"
    family = "SupervisorInUse"


_WIRE_TYPES: Mapping[str, type[RolesError]] = {
    cls.wire_name: cls
    for cls in (
        InvalidConfiguration,
        ConfigFileError,
        BlockedRole,
        MissingRoleFactory,
        TooManyInstances,
        InvalidOptions,
        InvalidRequest,
        NotConductor,
        Unauthorized,
        StaleOrder,
    )
}


def error_family(type_name: str) -> str:
    """The family (the seed's documented name) of the error type *type_name*: see the module
    docstring. An unknown type is its own family."""
    cls = _WIRE_TYPES.get(type_name)
    return cls.family if cls is not None else type_name


def is_roles_error(type_name: str) -> bool:
    """Whether *type_name* names one of this package's errors."""
    return type_name in _WIRE_TYPES


def error_from_wire(
    type_name: str, message: str, role: str | None = None, uuid: str | None = None
) -> RolesError:
    """Rebuild the typed error that :meth:`RolesError.to_wire` described.

    An unknown *type_name* (a newer peer) becomes a plain :class:`InvalidConfiguration` whose
    message starts with the type name, so nothing is lost.
    """
    cls = _WIRE_TYPES.get(type_name)
    if cls is None:
        return InvalidConfiguration(f"{type_name}: {message}", role=role, uuid=uuid)
    return cls(message, role=role, uuid=uuid)


def error_from_dict(data: Mapping[str, Any]) -> RolesError:
    """Rebuild a typed error from the dict :meth:`RolesError.to_wire` made.

    Missing or mistyped fields are tolerated (the dict crossed a network): the result is then
    a plain :class:`InvalidConfiguration` carrying whatever text there was.
    """
    type_name = data.get("type")
    message = data.get("message")
    role = data.get("role")
    uuid = data.get("uuid")
    return error_from_wire(
        type_name if isinstance(type_name, str) else "InvalidConfiguration",
        message if isinstance(message, str) else repr(message),
        role if isinstance(role, str) else None,
        uuid if isinstance(uuid, str) else None,
    )
