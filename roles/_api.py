"""Every public name of the ``roles`` package, imported from the private modules that define it.

``roles/__init__.py`` loads this module on the first use of a public name, not when the package
is imported (see :mod:`mesh._public`): the node's command line imports the package's plugin
without paying for trio, the supervisor and the operator keys' cryptography. Add a new public
name here and to ``__all__`` in ``roles/__init__.py``; ``tests/test_exports.py`` checks that the
two agree.
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
    OperatorKeyError as OperatorKeyError,
    RolesError as RolesError,
    StaleOrder as StaleOrder,
    SupervisorInUse as SupervisorInUse,
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
    SupervisorSnapshot as SupervisorSnapshot,
    SupervisorStatistics as SupervisorStatistics,
    describe_exit as describe_exit,
    open_supervisor as open_supervisor,
    process_group_alive as process_group_alive,
)

_claim_public_names("roles", globals(), [n for n in globals() if not n.startswith("_")])
