"""Conference stations: role configurations, role factories, the process supervisor.

A station runs *roles* (record, encode, upload, stream, or any command) as supervised child
processes, following a role configuration (role -> uuid -> options with a millisecond
timestamp) that the conductor pushes. See ``docs/roles.md``.

Errors (each carries a message that alone explains the problem, to whoever sent the update)::

    RolesError
    ├── InvalidConfiguration
    │   ├── ConfigFileError
    │   ├── BlockedRole
    │   ├── MissingRoleFactory
    │   ├── TooManyInstances
    │   └── InvalidOptions
    ├── InvalidRequest
    ├── NotConductor            roles.push sent to (or roles.apply sent by) a non-conductor
    ├── Unauthorized            no or a bad operator signature; open federation
    │   └── StaleOrder          older than what the station runs (a replay)
    ├── OperatorKeyError        an operator key file cannot be read or written
    └── SupervisorInUse         [RuntimeError] another station uses the state directory

``RolesError`` is a ``mesh.MeshError``: ``except mesh.MeshError`` catches these too.

Who may change a station: its own operator through the node's local API, and operators whose
signed orders (:class:`Order`, signed with an :class:`OperatorKey`) the conductor relays and
the station verifies; see :class:`RemoteAuthority`.
"""

import typing as _typing

from mesh._public import load_public_name as _load_public_name

if _typing.TYPE_CHECKING:
    from roles._api import *  # noqa: F403

__all__ = [
    "DATA_DIR_NAME",
    "DEFAULT_ENV_ALLOW",
    "DESIRED_FILE_NAME",
    "MANAGER_KINDS",
    "META_BUDGET",
    "REQUEST_KINDS",
    "STATE_FILE_NAME",
    "ApplyResult",
    "BackoffPolicy",
    "BlockedRole",
    "BuildContext",
    "ConfigFileError",
    "DesiredState",
    "FactoryRegistry",
    "InvalidConfiguration",
    "InvalidOptions",
    "InvalidRequest",
    "MissingRoleFactory",
    "NotConductor",
    "OperatorKey",
    "OperatorKeyError",
    "OperatorKeyring",
    "OperatorPublicKey",
    "OptionSpec",
    "Order",
    "ProcessSpec",
    "ProcessStatus",
    "RemoteAuthority",
    "RoleConfig",
    "RoleEntry",
    "RoleFactory",
    "RolesConfig",
    "RolesError",
    "RolesExtension",
    "StaleOrder",
    "Station",
    "StationAnswer",
    "StationFile",
    "StationIdentity",
    "StationPolicy",
    "StationState",
    "Supervisor",
    "SupervisorEvent",
    "SupervisorInUse",
    "SupervisorSnapshot",
    "SupervisorStatistics",
    "TooManyInstances",
    "Unauthorized",
    "canonical_json",
    "check_station_path",
    "command_factory",
    "default_factories",
    "describe_exit",
    "error_family",
    "error_from_dict",
    "error_from_wire",
    "load_role_config",
    "load_station_file",
    "open_station",
    "open_supervisor",
    "parse_role_config",
    "process_group_alive",
    "push_config",
    "read_identity",
    "remote_error",
    "roles_extension_factory",
    "station_dir",
    "station_meta",
    "validate_update",
]


def __getattr__(name: str) -> object:
    """Load the public names on first use (from ``roles/_api.py``); cache the one asked for."""
    return _load_public_name("roles", name, __all__, globals())


def __dir__() -> list[str]:
    """The public names without loading them (for completion and ``dir(roles)``)."""
    return sorted({*globals(), *__all__})
