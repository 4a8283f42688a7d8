"""Conference stations: role configurations, role factories, the process supervisor.

A station runs *roles* (record, encode, upload, stream, or any command) as supervised child
processes, following a role configuration (role -> uuid -> options with a millisecond
timestamp) that the conductor pushes. See ``docs/roles.md``.

Errors (all carry a message that alone explains the problem to whoever sent the update)::

    RolesError
    ├── InvalidConfiguration
    │   ├── ConfigFileError
    │   ├── BlockedRole
    │   ├── MissingRoleFactory
    │   ├── TooManyInstances
    │   └── InvalidOptions
    ├── InvalidRequest
    ├── NotConductor            roles.push sent to (or roles.apply sent by) a non-conductor
    └── Unauthorized            no or a bad operator signature; open federation
        └── StaleOrder          older than what the station runs (a replay)

Who may change a station: its own operator through the node's local API, and operators whose
signed orders (:class:`Order`, signed with an :class:`OperatorKey`) the conductor relays and
the station verifies; see :class:`RemoteAuthority`.
"""

from mesh._public import claim_public_names as _claim_public_names
from roles._authority import RemoteAuthority as RemoteAuthority
from roles._config import (
    RoleConfig as RoleConfig,
    RoleEntry as RoleEntry,
    StationFile as StationFile,
    canonical_json as canonical_json,
    check_station_path as check_station_path,
    load_role_config as load_role_config,
    load_station_file as load_station_file,
    parse_role_config as parse_role_config,
)
from roles._desired import (
    DesiredState as DesiredState,
    StationAnswer as StationAnswer,
)
from roles._errors import (
    BlockedRole as BlockedRole,
    ConfigFileError as ConfigFileError,
    InvalidConfiguration as InvalidConfiguration,
    InvalidOptions as InvalidOptions,
    InvalidRequest as InvalidRequest,
    MissingRoleFactory as MissingRoleFactory,
    NotConductor as NotConductor,
    RolesError as RolesError,
    StaleOrder as StaleOrder,
    TooManyInstances as TooManyInstances,
    Unauthorized as Unauthorized,
    error_family as error_family,
    error_from_dict as error_from_dict,
    error_from_wire as error_from_wire,
)
from roles._extension import (
    DESIRED_FILE_NAME as DESIRED_FILE_NAME,
    MANAGER_KINDS as MANAGER_KINDS,
    META_BUDGET as META_BUDGET,
    RolesExtension as RolesExtension,
    push_config as push_config,
    remote_error as remote_error,
    roles_extension_factory as roles_extension_factory,
    station_dir as station_dir,
    station_meta as station_meta,
)
from roles._factories import (
    DEFAULT_ENV_ALLOW as DEFAULT_ENV_ALLOW,
    BuildContext as BuildContext,
    FactoryRegistry as FactoryRegistry,
    OptionSpec as OptionSpec,
    ProcessSpec as ProcessSpec,
    RoleFactory as RoleFactory,
    command_factory as command_factory,
    default_factories as default_factories,
    validate_update as validate_update,
)
from roles._history import StationState as StationState
from roles._identity import (
    StationIdentity as StationIdentity,
    read_identity as read_identity,
)
from roles._operator import (
    OperatorKey as OperatorKey,
    OperatorKeyError as OperatorKeyError,
    OperatorKeyring as OperatorKeyring,
    OperatorPublicKey as OperatorPublicKey,
    Order as Order,
)
from roles._plugin import RolesConfig as RolesConfig
from roles._station import (
    DATA_DIR_NAME as DATA_DIR_NAME,
    REQUEST_KINDS as REQUEST_KINDS,
    STATE_FILE_NAME as STATE_FILE_NAME,
    ApplyResult as ApplyResult,
    Station as Station,
    StationPolicy as StationPolicy,
    open_station as open_station,
)
from roles._supervisor import (
    BackoffPolicy as BackoffPolicy,
    ProcessStatus as ProcessStatus,
    Supervisor as Supervisor,
    SupervisorEvent as SupervisorEvent,
    SupervisorInUse as SupervisorInUse,
    SupervisorSnapshot as SupervisorSnapshot,
    SupervisorStatistics as SupervisorStatistics,
    describe_exit as describe_exit,
    open_supervisor as open_supervisor,
    process_group_alive as process_group_alive,
)

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

_claim_public_names("roles", globals(), __all__)
