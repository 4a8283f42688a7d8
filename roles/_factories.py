"""Role factories: what a role name means on a station, and validation of a whole update.

A :class:`RoleFactory` turns one instance's options into a :class:`ProcessSpec` (an argv list,
never a shell line) and says how many instances of its role a station may run. Factories are
registered by name in a :class:`FactoryRegistry`; the role name in a configuration is the
factory's name. Built-ins (:func:`default_factories`):

``command``
    runs ``command`` (a string split like a shell would, or a list of strings), each argument a
    template where ``$name`` / ``${name}`` is an option, a station variable (``$hostname``,
    ``$room``...), ``$role`` or ``$uuid``; ``$$`` is a literal ``$``. Any extra scalar option is a
    template variable.
``record``, ``encode``, ``upload``, ``stream``
    presets with option schemas that build an ``ffmpeg``/``rsync`` argv; each also accepts a
    ``command`` template that replaces the built argv (tests use harmless commands this way).

Every factory also accepts ``env`` (extra environment variables, names from an allow-list),
``cwd``, ``restart`` (``always``: any exit is a failure and is restarted with back-off;
``on-failure``: a clean exit ends the instance; ``periodic``: a clean exit is run again after
``interval`` seconds), ``stop_grace`` (seconds between SIGTERM and SIGKILL) and ``stand_in``
(run a stand-in that prints the command it stands for, for trying a configuration on a machine
without ffmpeg or rsync).

:func:`validate_update` checks a whole configuration against the factories and the station's
policy (blocked roles, template variables, the folders roles may use, the environment variables
they may set) before anything changes, and raises the first problem (with any others appended
to its message) as a typed :class:`~roles.InvalidConfiguration`. It is the only validator: the
station's dry run (``roles.check``) and its apply both call it, and what it returns is exactly
what the supervisor runs (argv, environment and folders checked and normalised), so whatever
it accepts is applied without an error.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import shlex
import string
import sys
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import attrs

from mesh._names import check_name
from roles._config import RoleConfig
from roles._errors import (
    BlockedRole,
    InvalidConfiguration,
    InvalidOptions,
    MissingRoleFactory,
    TooManyInstances,
)

__all__ = [
    "DEFAULT_ENV_ALLOW",
    "BuildContext",
    "FactoryRegistry",
    "OptionKind",
    "OptionSpec",
    "ProcessSpec",
    "RestartPolicy",
    "RoleFactory",
    "command_factory",
    "default_factories",
    "validate_update",
]

OptionKind = Literal[
    "string", "integer", "number", "boolean", "strings", "env", "command", "path", "filename"
]
RestartPolicy = Literal["always", "on-failure", "periodic"]
_RESTART_POLICIES: tuple[RestartPolicy, ...] = ("always", "on-failure", "periodic")

_KIND_TEXT: Mapping[str, str] = {
    "string": "a string",
    "integer": "an integer from -2147483647 to 2147483647",
    "number": "a number",
    "boolean": "true or false",
    "strings": "an array of strings",
    "env": "an object of string values",
    "command": "a command: a string, or an array of strings (argv)",
    "path": "a path (a string; relative paths are under the station's data folder)",
    "filename": "a file name (a string without '/' or control characters, not '.' or '..')",
}

#: Environment variables a role may set without the station file allowing more
#: (``"env_allow"``): locale, time zone and the tools' own harmless knobs. Anything that
#: changes what runs (``LD_PRELOAD``, ``PATH``, ``PYTHONPATH``...) is refused unless the
#: station's own operator allows it.
DEFAULT_ENV_ALLOW: frozenset[str] = frozenset(
    {
        "TZ",
        "LANG",
        "LANGUAGE",
        "LC_ALL",
        "LC_CTYPE",
        "LC_MESSAGES",
        "LC_NUMERIC",
        "LC_TIME",
        "TERM",
        "NO_COLOR",
        "FFREPORT",
        "AV_LOG_FORCE_NOCOLOR",
        "AV_LOG_FORCE_COLOR",
        "RSYNC_PASSWORD",
    }
)
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
# C0 controls and DEL. Arguments after the program may hold tabs and newlines (a `sh -c`
# script); nothing may hold NUL (the OS cannot pass it) or other control characters.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_ARG_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_MAX_STOP_GRACE = 300.0
_MAX_INTERVAL = 7 * 86400.0
_MAX_INTEGER = 2**31 - 1


def _frozen_map(value: Mapping[str, str]) -> Mapping[str, str]:
    return types.MappingProxyType(dict(value))


def _map_key(value: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(value.items()))


def _str_tuple(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


@attrs.frozen
class ProcessSpec:
    """How to run one role instance: what the supervisor needs, nothing more.

    ``argv`` is run directly (no shell); ``env`` is added to the station's environment;
    ``ensure_dirs`` are created before each start (a recorder's output directory);
    ``restart``/``interval``/``stop_grace`` as described in the module docstring.
    """

    argv: tuple[str, ...] = attrs.field(converter=_str_tuple)
    env: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_map, eq=_map_key)
    cwd: str | None = None
    restart: RestartPolicy = "always"
    interval: float = 60.0
    stop_grace: float = 5.0
    ensure_dirs: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able form for the status API."""
        return {
            "argv": list(self.argv),
            "env": dict(self.env),
            "cwd": self.cwd,
            "restart": self.restart,
            "interval": self.interval,
            "stop_grace": self.stop_grace,
        }


@attrs.frozen
class OptionSpec:
    """One option of a factory's schema: ``name``, ``kind`` (see :data:`OptionKind`), whether
    it is ``required``, its ``default`` when absent, and ``help`` (used in error messages)."""

    name: str
    kind: OptionKind
    required: bool = False
    default: Any = None
    help: str = ""


def _spec_tuple(value: Iterable[OptionSpec]) -> tuple[OptionSpec, ...]:
    return tuple(value)


def _name_set(value: Iterable[str]) -> frozenset[str]:
    return frozenset(value)


def _roots(value: Iterable[str] | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(value)


@attrs.frozen
class BuildContext:
    """What a factory may use besides the options: the instance's ``role`` and ``uuid``, the
    station's template ``variables`` (``hostname``, and those of the station file), the
    folders path options must stay under (``roots``; the first one is where relative paths
    go; ``None`` checks paths without a station, only for their characters) and the extra
    environment variables the station allows (``env_allow``, added to
    :data:`DEFAULT_ENV_ALLOW`)."""

    role: str
    uuid: str
    variables: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_map, eq=_map_key)
    roots: tuple[str, ...] | None = attrs.field(default=None, converter=_roots)
    env_allow: frozenset[str] = attrs.field(default=frozenset(), converter=_name_set)


#: Builds a preset's default argv from validated options (defaults filled in).
ArgvBuilder = Callable[[Mapping[str, Any], BuildContext], list[str]]

_COMMON_OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec("env", "env", help="extra environment variables for the process"),
    OptionSpec("cwd", "path", help="working directory of the process"),
    OptionSpec(
        "restart",
        "string",
        help="'always' (restart on any exit), 'on-failure' (a clean exit ends it) or 'periodic' "
        "(run again 'interval' seconds after a clean exit)",
    ),
    OptionSpec("interval", "number", help="seconds between runs when restart is 'periodic'"),
    OptionSpec("stop_grace", "number", help="seconds between SIGTERM and SIGKILL on stop"),
    OptionSpec(
        "stand_in",
        "boolean",
        help="run a stand-in that prints the command it stands for and behaves like it "
        "(stays up, or exits 0), instead of the command: try a configuration without the tools",
    ),
)


def _describe(role: str, uuid: str) -> str:
    return f"role {role!r} instance {uuid!r}"


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_kind(value: object, kind: OptionKind) -> bool:
    if kind in ("string", "path"):
        return isinstance(value, str)
    if kind == "filename":
        return (
            isinstance(value, str)
            and "/" not in value
            and value not in (".", "..")
            and not _CONTROL_RE.search(value)
        )
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool) and abs(value) <= _MAX_INTEGER
    if kind == "number":
        return _is_number(value) and math.isfinite(float(value))  # type: ignore[arg-type]
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "strings":
        return isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
    if kind == "env":
        return isinstance(value, Mapping) and all(isinstance(v, str) for v in value.values())
    if kind == "command":
        return (isinstance(value, str) and bool(value.strip())) or (
            isinstance(value, list | tuple)
            and len(value) > 0
            and all(isinstance(v, str) for v in value)
        )
    raise AssertionError(kind)


def _kind_of(value: object) -> str:
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "an array"
    return type(value).__name__


def _template_text(value: object) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, str | int | float):
        return str(value)
    return None


@attrs.frozen
class RoleFactory:
    """Makes instances of one role: ``name`` (the role name in configurations),
    ``max_instances`` per station (``None``: unlimited), an option ``schema``, a ``builder``
    for the default argv (``None``: the ``command`` option is required), whether options outside
    the schema are allowed (``extra_options``; they become template variables), and the
    ``restart`` policy used when the options do not choose one."""

    name: str = attrs.field(validator=lambda _i, _a, v: check_name(v, "role factory name"))
    max_instances: int | None = None
    schema: tuple[OptionSpec, ...] = attrs.field(default=(), converter=_spec_tuple)
    builder: ArgvBuilder | None = attrs.field(default=None, eq=False)
    extra_options: bool = False
    restart: RestartPolicy = "always"
    interval: float = 60.0
    description: str = ""

    def renamed(self, name: str, max_instances: int | None = None) -> RoleFactory:
        """Return this factory under another role name (and optionally another limit)."""
        return attrs.evolve(
            self,
            name=name,
            max_instances=self.max_instances if max_instances is None else max_instances,
        )

    def all_options(self) -> tuple[OptionSpec, ...]:
        """Return the schema plus the options every factory accepts (``command``, ``env``...)."""
        command = OptionSpec(
            "command",
            "command",
            required=self.builder is None,
            help="the command to run: a string or an argv array; $name is replaced by an "
            "option or a station variable",
        )
        own = {spec.name for spec in self.schema}
        return (
            *self.schema,
            *(spec for spec in (command, *_COMMON_OPTIONS) if spec.name not in own),
        )

    def build(self, options: Mapping[str, Any], context: BuildContext) -> ProcessSpec:
        """Check *options* against the schema and return the :class:`ProcessSpec` to run.

        Raises :class:`~roles.InvalidOptions` naming the role, the uuid, the option and what is
        wrong with it.
        """
        role, uuid = context.role, context.uuid
        where = _describe(role, uuid)
        specs = {spec.name: spec for spec in self.all_options()}
        values: dict[str, Any] = {}
        for name, value in options.items():
            spec = specs.get(name)
            if spec is None:
                if self.extra_options and _template_text(value) is not None:
                    values[name] = value
                    continue
                if self.extra_options:
                    raise InvalidOptions(
                        f"{where}: option {name!r} is {_kind_of(value)}; extra options of "
                        f"role factory {self.name!r} must be strings, numbers, booleans or null "
                        "(they are used as $name in the command)",
                        role=role,
                        uuid=uuid,
                    )
                close = difflib.get_close_matches(name, list(specs), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise InvalidOptions(
                    f"{where}: unknown option {name!r}{hint}; role factory {self.name!r} "
                    f"accepts: {', '.join(sorted(specs))}",
                    role=role,
                    uuid=uuid,
                )
            if value is None and not spec.required:
                continue
            if not _check_kind(value, spec.kind):
                raise InvalidOptions(
                    f"{where}: option {name!r} must be {_KIND_TEXT[spec.kind]}, found "
                    f"{value!r}" + (f" ({spec.help})" if spec.help else ""),
                    role=role,
                    uuid=uuid,
                )
            values[name] = value
        for spec in specs.values():
            if spec.name in values:
                continue
            if spec.required:
                raise InvalidOptions(
                    f"{where}: required option {spec.name!r} is missing: "
                    f"{_KIND_TEXT[spec.kind]}" + (f", {spec.help}" if spec.help else ""),
                    role=role,
                    uuid=uuid,
                )
            if spec.default is not None:
                values[spec.name] = spec.default

        for name, value in list(values.items()):
            if specs.get(name) is not None and specs[name].kind == "path":
                values[name] = _check_path(name, value, context, where)
        restart = values.pop("restart", self.restart)
        if restart not in _RESTART_POLICIES:
            raise InvalidOptions(
                f"{where}: option 'restart' is {restart!r}; it must be one of "
                f"{', '.join(_RESTART_POLICIES)}",
                role=role,
                uuid=uuid,
            )
        interval = float(values.pop("interval", self.interval))
        if not 0 < interval <= _MAX_INTERVAL:
            raise InvalidOptions(
                f"{where}: option 'interval' must be more than 0 and at most {_MAX_INTERVAL:g} "
                f"seconds, found {interval:g}",
                role=role,
                uuid=uuid,
            )
        stop_grace = float(values.pop("stop_grace", 5.0))
        if not 0 <= stop_grace <= _MAX_STOP_GRACE:
            raise InvalidOptions(
                f"{where}: option 'stop_grace' must be 0 to {_MAX_STOP_GRACE:g} seconds, "
                f"found {stop_grace:g}",
                role=role,
                uuid=uuid,
            )
        env = _check_env(values.pop("env", {}), context, where)
        cwd = values.pop("cwd", None)
        command = values.pop("command", None)
        stand_in = values.pop("stand_in", False)

        variables: dict[str, str] = dict(context.variables)
        variables.update(role=role, uuid=uuid)
        for name, value in values.items():
            text = _template_text(value)
            if text is not None:
                variables[name] = text

        if command is not None:
            argv = _fill_command(command, variables, where, role, uuid)
        else:
            assert self.builder is not None
            argv = [str(a) for a in self.builder(values, context)]
        if not argv or not argv[0]:
            raise InvalidOptions(f"{where}: the command is empty", role=role, uuid=uuid)
        _check_argv(argv, where, role, uuid)
        if stand_in:
            argv = [sys.executable, "-m", "roles._standin", restart, "--", *argv]
        ensure_dirs = tuple(
            values[name] for name in ("output_dir",) if isinstance(values.get(name), str)
        )
        return ProcessSpec(
            argv=argv,
            env=env,
            cwd=cwd,
            restart=restart,
            interval=interval,
            stop_grace=stop_grace,
            ensure_dirs=ensure_dirs,
        )

    def describe(self) -> dict[str, Any]:
        """Return a JSON-able description (name, limit, options) for ``roles.show``."""
        return {
            "name": self.name,
            "max_instances": self.max_instances,
            "description": self.description,
            "options": {
                spec.name: {
                    "kind": spec.kind,
                    "required": spec.required,
                    "default": spec.default,
                    "help": spec.help,
                }
                for spec in self.all_options()
            },
        }


def _check_path(name: str, value: str, context: BuildContext, where: str) -> str:
    """Return path option *name* normalised and checked: no control characters, and (on a
    station) resolved (symbolic links followed) under one of the station's folders."""
    role, uuid = context.role, context.uuid
    if not value or _CONTROL_RE.search(value):
        raise InvalidOptions(
            f"{where}: option {name!r} must be a path without control characters (NUL, "
            f"newline...), found {value!r}",
            role=role,
            uuid=uuid,
        )
    if context.roots is None:
        return os.path.normpath(value)
    if not context.roots:
        raise InvalidOptions(
            f"{where}: option {name!r}: this station allows no folders for its roles",
            role=role,
            uuid=uuid,
        )
    base = context.roots[0]
    resolved = os.path.realpath(os.path.join(base, value))
    for root in context.roots:
        real_root = os.path.realpath(root)
        if os.path.commonpath([real_root, resolved]) == real_root:
            return resolved
    raise InvalidOptions(
        f"{where}: option {name!r} is {value!r}, which resolves to {resolved}, outside the "
        f"folders this station lets roles use ({', '.join(context.roots)}); use a path under "
        "one of them (a relative path goes under the first), or list another folder in the "
        "station file's \"allowed_roots\"",
        role=role,
        uuid=uuid,
    )


def _check_env(value: Mapping[str, str], context: BuildContext, where: str) -> dict[str, str]:
    """Return the ``env`` option checked: names from the allow-list, no control characters."""
    role, uuid = context.role, context.uuid
    allowed = DEFAULT_ENV_ALLOW | context.env_allow
    env = dict(value)
    for key, text in env.items():
        if not _ENV_NAME_RE.match(key):
            raise InvalidOptions(
                f"{where}: option 'env' has an invalid variable name {key!r} (letters, digits "
                "and '_', not starting with a digit)",
                role=role,
                uuid=uuid,
            )
        if key not in allowed:
            raise InvalidOptions(
                f"{where}: option 'env' sets {key}, which this station does not let roles set "
                f"(allowed: {', '.join(sorted(allowed))}); the station's own operator can "
                "allow more in the station file's \"env_allow\"",
                role=role,
                uuid=uuid,
            )
        if _CONTROL_RE.search(text):
            raise InvalidOptions(
                f"{where}: option 'env' variable {key} holds control characters (NUL, "
                "newline...)",
                role=role,
                uuid=uuid,
            )
    return env


def _check_argv(argv: Sequence[str], where: str, role: str, uuid: str) -> None:
    """Refuse what the OS cannot run or what would garble logs: NUL anywhere, control
    characters in the program, control characters other than tab and newline in arguments."""
    for index, arg in enumerate(argv):
        bad = (_CONTROL_RE if index == 0 else _ARG_CONTROL_RE).search(arg)
        if bad is not None:
            what = "the program" if index == 0 else f"argument {index}"
            raise InvalidOptions(
                f"{where}: the command's {what} holds the control character "
                f"{bad.group()!r} ({arg[:40]!r}); NUL is never allowed, and only tabs and "
                "newlines in arguments after the program",
                role=role,
                uuid=uuid,
            )


def _fill_command(
    command: str | list[str] | tuple[str, ...],
    variables: Mapping[str, str],
    where: str,
    role: str,
    uuid: str,
) -> list[str]:
    if isinstance(command, str):
        try:
            parts = shlex.split(command)
        except ValueError as exc:
            raise InvalidOptions(
                f"{where}: option 'command' cannot be split into arguments: {exc}",
                role=role,
                uuid=uuid,
            ) from None
    else:
        parts = list(command)
    argv: list[str] = []
    for part in parts:
        try:
            argv.append(string.Template(part).substitute(variables))
        except KeyError as exc:
            name = exc.args[0]
            raise InvalidOptions(
                f"{where}: option 'command' uses ${name} but there is no option or station "
                f"variable {name!r} (known: {', '.join(sorted(variables))}); write $$ for a "
                "literal $",
                role=role,
                uuid=uuid,
            ) from None
        except ValueError as exc:
            raise InvalidOptions(
                f"{where}: option 'command' has a bad placeholder in {part!r} ({exc}); "
                "write $name or ${name}, and $$ for a literal $",
                role=role,
                uuid=uuid,
            ) from None
    return argv


class FactoryRegistry:
    """The role factories known to a station, by role name.

    Not thread-safe; register factories before the station starts.
    """

    def __init__(self, factories: Iterable[RoleFactory] = ()) -> None:
        self._factories: dict[str, RoleFactory] = {}
        for factory in factories:
            self.register(factory)

    def register(self, factory: RoleFactory, *, replace: bool = False) -> None:
        """Register *factory* under its name; raises ``ValueError`` if the name is taken
        (unless *replace*)."""
        if factory.name in self._factories and not replace:
            raise ValueError(f"a role factory named {factory.name!r} is already registered")
        self._factories[factory.name] = factory

    def get(self, name: str) -> RoleFactory | None:
        """Return the factory for role *name*, or ``None``."""
        return self._factories.get(name)

    def names(self) -> tuple[str, ...]:
        """Return the registered role names, sorted."""
        return tuple(sorted(self._factories))

    def copy(self) -> FactoryRegistry:
        """Return an independent registry with the same factories."""
        return FactoryRegistry(self._factories.values())

    def __contains__(self, name: object) -> bool:
        return name in self._factories

    def __len__(self) -> int:
        return len(self._factories)


# --- built-in factories -----------------------------------------------------------------------


def _record_argv(o: Mapping[str, Any], ctx: BuildContext) -> list[str]:
    pattern = f"{o['output_dir'].rstrip('/')}/{o['prefix'] or ctx.uuid}_%Y-%m-%d_%H-%M-%S"
    argv = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "warning"]
    if o.get("input_format"):
        argv += ["-f", o["input_format"]]
    argv += ["-i", o["device"], "-c", "copy", "-map", "0"]
    argv += ["-f", "segment", "-segment_time", str(o["segment_seconds"])]
    argv += ["-strftime", "1", "-reset_timestamps", "1", f"{pattern}.{o['format']}"]
    return argv


def _encode_argv(o: Mapping[str, Any], ctx: BuildContext) -> list[str]:
    argv = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "warning", "-y"]
    argv += ["-i", o["input"], "-c:v", o["video_codec"], "-preset", o["preset"]]
    argv += ["-c:a", o["audio_codec"], *o.get("extra_args", ()), o["output"]]
    return argv


def _upload_argv(o: Mapping[str, Any], ctx: BuildContext) -> list[str]:
    argv = ["rsync", "--archive", "--partial", f"--bwlimit={o['bwlimit_kbps']}"]
    argv += [f"--exclude={pattern}" for pattern in o.get("exclude", ())]
    argv += [o["source_dir"].rstrip("/") + "/", o["destination"]]
    return argv


def _stream_argv(o: Mapping[str, Any], ctx: BuildContext) -> list[str]:
    argv = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "warning"]
    if o.get("input_format"):
        argv += ["-f", o["input_format"]]
    argv += ["-i", o["source"], "-c:v", o["video_codec"], "-preset", o["preset"]]
    argv += ["-b:v", o["video_bitrate"], "-c:a", "aac", "-b:a", o["audio_bitrate"]]
    argv += ["-f", o["format"], o["url"]]
    return argv


def command_factory(name: str = "command", max_instances: int | None = None) -> RoleFactory:
    """Return the generic factory: runs the ``command`` option (required) as a template."""
    return RoleFactory(
        name=name,
        max_instances=max_instances,
        extra_options=True,
        description="runs 'command' (a template filled from the options); restarted on exit",
    )


def default_factories() -> FactoryRegistry:
    """Return a registry with the built-ins: ``command``, ``record``, ``encode``, ``upload``,
    ``stream`` (limits: unlimited, 4, 1, 1, 2 instances per station)."""
    record = RoleFactory(
        name="record",
        max_instances=4,
        builder=_record_argv,
        schema=(
            OptionSpec("device", "string", required=True, help="capture device or URL to record"),
            OptionSpec("output_dir", "path", required=True, help="directory for the recordings"),
            OptionSpec("format", "string", default="ts", help="container: file extension"),
            OptionSpec("input_format", "string", default="v4l2", help="ffmpeg -f of the input"),
            OptionSpec(
                "segment_seconds", "integer", default=1800, help="length of each file in seconds"
            ),
            OptionSpec("prefix", "filename", default="", help="file name prefix (default: uuid)"),
        ),
        description="records a device into dated files (ffmpeg segments)",
    )
    encode = RoleFactory(
        name="encode",
        max_instances=1,
        builder=_encode_argv,
        restart="on-failure",
        schema=(
            OptionSpec("input", "path", required=True, help="the file to encode"),
            OptionSpec("output", "path", required=True, help="the file to write"),
            OptionSpec("video_codec", "string", default="libx264"),
            OptionSpec("audio_codec", "string", default="aac"),
            OptionSpec("preset", "string", default="medium"),
            OptionSpec("extra_args", "strings", default=(), help="more ffmpeg arguments"),
        ),
        description="encodes one file (ffmpeg); done when it exits 0",
    )
    upload = RoleFactory(
        name="upload",
        max_instances=1,
        builder=_upload_argv,
        restart="periodic",
        interval=60.0,
        schema=(
            OptionSpec("source_dir", "path", required=True, help="the directory to upload"),
            OptionSpec(
                "destination", "string", required=True, help="rsync destination (host:path)"
            ),
            OptionSpec("bwlimit_kbps", "integer", default=0, help="bandwidth limit; 0: none"),
            OptionSpec("exclude", "strings", default=(), help="rsync exclude patterns"),
        ),
        description="copies recordings to storage with rsync, again every 'interval' seconds",
    )
    stream = RoleFactory(
        name="stream",
        max_instances=2,
        builder=_stream_argv,
        schema=(
            OptionSpec("source", "string", required=True, help="device or URL to stream"),
            OptionSpec("url", "string", required=True, help="where to send (rtmp://, icecast://)"),
            OptionSpec("input_format", "string", default="", help="ffmpeg -f of the input"),
            OptionSpec("format", "string", default="flv", help="output container"),
            OptionSpec("video_codec", "string", default="libx264"),
            OptionSpec("preset", "string", default="veryfast"),
            OptionSpec("video_bitrate", "string", default="2500k"),
            OptionSpec("audio_bitrate", "string", default="128k"),
        ),
        description="streams a device or the mix to a server (ffmpeg)",
    )
    return FactoryRegistry([command_factory(), record, encode, upload, stream])


def validate_update(
    config: RoleConfig,
    factories: FactoryRegistry,
    *,
    blocked_roles: Iterable[str] = (),
    variables: Mapping[str, str] | None = None,
    roots: Sequence[str] | None = None,
    env_allow: Iterable[str] = (),
) -> dict[tuple[str, str], ProcessSpec]:
    """Check a whole configuration and return the process spec of every live instance.

    *roots* are the folders path options must stay under (the first takes relative paths;
    ``None`` checks paths only for their characters, for a check made without a station);
    *env_allow* extends :data:`DEFAULT_ENV_ALLOW`. Checks, role by role in name order: blocked
    roles, missing factories, instance limits, then each instance's options, paths,
    environment and final argv. Raises the first problem found as :class:`~roles.BlockedRole`,
    :class:`~roles.MissingRoleFactory`, :class:`~roles.TooManyInstances` or
    :class:`~roles.InvalidOptions`; when there are more, their messages are appended to its
    message (so one round trip shows them all). Changes nothing anywhere.
    """
    blocked = frozenset(blocked_roles)
    variables = dict(variables or {})
    root_list = None if roots is None else tuple(roots)
    allow = frozenset(env_allow)
    problems: list[InvalidConfiguration] = []
    specs: dict[tuple[str, str], ProcessSpec] = {}
    active = config.active()
    for role in active.roles():
        uuids = active.instances(role)
        listed = ", ".join(repr(u) for u in uuids)
        if role in blocked:
            problems.append(
                BlockedRole(
                    f"role {role!r} is blocked on this station (blocked roles: "
                    f"{', '.join(sorted(blocked))}), so instance(s) {listed} cannot run here; "
                    f"remove role {role!r} from this station's configuration or run it on "
                    "another station",
                    role=role,
                    uuid=uuids[0],
                )
            )
            continue
        factory = factories.get(role)
        if factory is None:
            close = difflib.get_close_matches(role, list(factories.names()), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(
                MissingRoleFactory(
                    f"role {role!r} (instance(s) {listed}) has no role factory on this "
                    f"station{hint}; known roles: {', '.join(factories.names()) or 'none'}",
                    role=role,
                    uuid=uuids[0],
                )
            )
            continue
        limit = factory.max_instances
        if limit is not None and len(uuids) > limit:
            problems.append(
                TooManyInstances(
                    f"role {role!r} has {len(uuids)} instances ({listed}) but its factory "
                    f"allows at most {limit} per station; remove {len(uuids) - limit} of them",
                    role=role,
                    uuid=uuids[limit],
                )
            )
            continue
        for uuid in uuids:
            entry = active.get(role, uuid)
            assert entry is not None
            try:
                context = BuildContext(
                    role=role, uuid=uuid, variables=variables, roots=root_list, env_allow=allow
                )
                specs[(role, uuid)] = factory.build(entry.options, context)
            except InvalidOptions as exc:
                problems.append(exc)
    if problems:
        first = problems[0]
        if len(problems) > 1:
            rest = "; ".join(str(p) for p in problems[1:])
            raise type(first)(
                f"{first} (and {len(problems) - 1} more problem(s): {rest})",
                role=first.role,
                uuid=first.uuid,
            )
        raise first
    return specs
