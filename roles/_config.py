"""Role configurations: role -> uuid -> options, each option set with a millisecond timestamp.

This is EventStreamr's ``station_config.json`` scheme (its Python port, "Conference Manager")::

    {
      "record": {
        "3f2a9c1e-hall-a": {"timestamp": 1718000000000, "device": "/dev/video0",
                            "output_dir": "recordings"}
      },
      "upload": {"u1": {"timestamp": 1718000000000, "source_dir": "recordings",
                        "destination": "storage:/archive"}}
    }

Two configurations merge per (role, uuid): the entry with the newer ``timestamp`` wins; on a
tie the entry whose canonical JSON sorts last wins (so every node picks the same one); an
entry present on one side only is kept. A removed instance is a *tombstone*
(``{"timestamp": ..., "_deleted": true}``) so a removal can win a merge too. Merging is
commutative, associative and idempotent, so configurations can travel in gossip.

Sans-IO: nothing here touches the network or the clock; :func:`load_role_config` and
:func:`load_station_file` only read one file.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
import types
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import attrs

from mesh._names import InvalidName, check_name
from roles._errors import ConfigFileError

__all__ = [
    "RoleConfig",
    "RoleEntry",
    "StationFile",
    "canonical_json",
    "check_station_path",
    "load_role_config",
    "load_station_file",
    "parse_json",
    "parse_role_config",
    "read_json_file",
    "read_text_file",
]

#: Keys of an entry that are not options.
TIMESTAMP_KEY = "timestamp"
DELETED_KEY = "_deleted"

_OPTION_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}\Z")
_SIMPLE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+\Z")
# JSON numbers beyond 2**53 do not survive every JSON parser; timestamps stay well below.
_MAX_TIMESTAMP = 2**53


def _freeze(value: Any) -> Any:
    """Return an immutable deep copy of a JSON-like value (dicts -> mapping proxies)."""
    if isinstance(value, Mapping):
        return types.MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    """Return a plain (dict/list) deep copy of a value made by :func:`_freeze`."""
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_thaw(v) for v in value]
    return value


def canonical_json(value: Any) -> str:
    """Return the canonical JSON text of a JSON-like value (sorted keys, no spaces).

    Used to break timestamp ties deterministically and to compute digests.
    """
    return json.dumps(
        _thaw(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def _freeze_options(value: Mapping[str, Any]) -> Mapping[str, Any]:
    frozen = _freeze(dict(value))
    assert isinstance(frozen, Mapping)
    return frozen


@attrs.frozen
class RoleEntry:
    """One role instance's configuration: its options and the time they were set.

    ``timestamp`` is milliseconds since the Unix epoch (EventStreamr's unit); ``deleted``
    marks a tombstone (the instance was removed at ``timestamp``; ``options`` is then empty).
    ``options`` is an immutable deep copy; :meth:`plain_options` gives a mutable one.
    """

    timestamp: int
    options: Mapping[str, Any] = attrs.field(
        factory=dict, converter=_freeze_options, eq=canonical_json, repr=lambda o: repr(_thaw(o))
    )
    deleted: bool = False

    @classmethod
    def tombstone(cls, timestamp: int) -> RoleEntry:
        """Return the entry that says "this instance was removed at *timestamp*"."""
        return cls(timestamp=timestamp, options={}, deleted=True)

    def plain_options(self) -> dict[str, Any]:
        """Return the options as a plain, mutable dict (a deep copy)."""
        result = _thaw(self.options)
        assert isinstance(result, dict)
        return result

    def to_dict(self) -> dict[str, Any]:
        """Return the entry in file form: the options plus ``timestamp`` (and ``_deleted``)."""
        if self.deleted:
            return {TIMESTAMP_KEY: self.timestamp, DELETED_KEY: True}
        return {TIMESTAMP_KEY: self.timestamp, **self.plain_options()}

    def sort_key(self) -> tuple[int, str]:
        """Return the key by which merges choose: newer timestamp, then canonical JSON."""
        return (self.timestamp, canonical_json(self.to_dict()))

    def same_options(self, other: RoleEntry) -> bool:
        """Return whether *other* would run the same thing (ignores the timestamp)."""
        return self.deleted == other.deleted and canonical_json(self.options) == canonical_json(
            other.options
        )


def _sorted_entries(
    entries: Iterable[tuple[str, str, RoleEntry]],
) -> tuple[tuple[str, str, RoleEntry], ...]:
    result = tuple(sorted(entries, key=lambda e: (e[0], e[1])))
    for before, after in itertools.pairwise(result):
        if before[:2] == after[:2]:
            raise ValueError(f"duplicate role instance {before[0]}/{before[1]}")
    return result


@attrs.frozen
class RoleConfig:
    """A station's role configuration: role -> uuid -> :class:`RoleEntry` (frozen).

    ``entries`` holds ``(role, uuid, entry)`` triples sorted by role then uuid, tombstones
    included; :meth:`active` drops the tombstones and is what a station runs.
    """

    entries: tuple[tuple[str, str, RoleEntry], ...] = attrs.field(
        default=(), converter=_sorted_entries
    )
    _digest: list[str] = attrs.field(factory=list, init=False, eq=False, repr=False)

    # --- reading -------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[tuple[str, str, RoleEntry]]:
        return iter(self.entries)

    def __contains__(self, key: object) -> bool:
        return any((role, uuid) == key for role, uuid, _ in self.entries)

    def get(self, role: str, uuid: str) -> RoleEntry | None:
        """Return the entry of (*role*, *uuid*), tombstones included, or ``None``."""
        for r, u, entry in self.entries:
            if r == role and u == uuid:
                return entry
        return None

    def keys(self) -> tuple[tuple[str, str], ...]:
        """Return the (role, uuid) pairs of every entry, tombstones included."""
        return tuple((role, uuid) for role, uuid, _ in self.entries)

    def roles(self) -> tuple[str, ...]:
        """Return the names of roles with at least one live (non-tombstone) instance."""
        return tuple(sorted({role for role, _, entry in self.entries if not entry.deleted}))

    def instances(self, role: str) -> tuple[str, ...]:
        """Return the uuids of the live instances of *role*."""
        return tuple(u for r, u, e in self.entries if r == role and not e.deleted)

    def active(self) -> RoleConfig:
        """Return this configuration without tombstones: what a station actually runs."""
        return RoleConfig(tuple(e for e in self.entries if not e[2].deleted))

    def as_mapping(self) -> dict[str, dict[str, RoleEntry]]:
        """Return role -> uuid -> entry as new (mutable) dicts."""
        result: dict[str, dict[str, RoleEntry]] = {}
        for role, uuid, entry in self.entries:
            result.setdefault(role, {})[uuid] = entry
        return result

    # --- changing (each returns a new value) ------------------------------------------------

    def with_entry(self, role: str, uuid: str, entry: RoleEntry) -> RoleConfig:
        """Return a copy with (*role*, *uuid*) set to *entry* (replacing any old entry)."""
        check_name(role, "role")
        check_name(uuid, "uuid")
        kept = (e for e in self.entries if e[:2] != (role, uuid))
        return RoleConfig((*kept, (role, uuid, entry)))

    def with_removed(self, role: str, uuid: str, timestamp: int) -> RoleConfig:
        """Return a copy where (*role*, *uuid*) is a tombstone dated *timestamp*."""
        return self.with_entry(role, uuid, RoleEntry.tombstone(timestamp))

    def without(self, role: str, uuid: str) -> RoleConfig:
        """Return a copy with no entry at all for (*role*, *uuid*) (not even a tombstone)."""
        return RoleConfig(tuple(e for e in self.entries if e[:2] != (role, uuid)))

    def merge(self, other: RoleConfig) -> RoleConfig:
        """Return the merge of two configurations.

        Per (role, uuid): the entry with the newer timestamp wins; on equal timestamps the one
        whose canonical JSON sorts last wins; an entry on one side only is kept. Commutative,
        associative and idempotent.
        """
        merged: dict[tuple[str, str], RoleEntry] = {(r, u): e for r, u, e in self.entries}
        for role, uuid, entry in other.entries:
            mine = merged.get((role, uuid))
            if mine is None or entry.sort_key() > mine.sort_key():
                merged[(role, uuid)] = entry
        return RoleConfig(tuple((r, u, e) for (r, u), e in merged.items()))

    # --- transport ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Return the file/transport form (plain dicts, msgpack- and JSON-able)."""
        result: dict[str, dict[str, dict[str, Any]]] = {}
        for role, uuid, entry in self.entries:
            result.setdefault(role, {})[uuid] = entry.to_dict()
        return result

    def digest(self) -> str:
        """Return a short hash (16 hex digits) of the canonical form: equal configs, equal
        digests. Lets a manager tell which configuration a station's answer was about.
        Computed once per value (configurations are frozen)."""
        if not self._digest:
            text = canonical_json(self.to_dict())
            self._digest.append(hashlib.sha256(text.encode()).hexdigest()[:16])
        return self._digest[0]

    @classmethod
    def from_dict(
        cls, data: object, *, source: str = "role configuration", default_timestamp: int = 0
    ) -> RoleConfig:
        """Decode the file/transport form, checking everything.

        Raises :class:`~roles.ConfigFileError` naming *source*, the path inside it and the
        problem. An entry without ``timestamp`` gets *default_timestamp* (EventStreamr counted
        a missing timestamp as 0).
        """
        return RoleConfig(_decode_roles(data, source, "$", default_timestamp))


def check_station_path(path: object) -> str:
    """Return *path* if it is a node path ``/<orchestra>/<name>``, else raise ``ValueError``
    (:class:`mesh.InvalidName` for a bad name in it)."""
    if not isinstance(path, str) or not path.startswith("/") or path.count("/") != 2:
        raise ValueError(f"a station path looks like /<orchestra>/<name>, not {path!r}")
    _, orchestra, name = path.split("/")
    check_name(orchestra, "orchestra")
    check_name(name, "node name")
    return path


def _path(parent: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    if _SIMPLE_KEY_RE.match(key):
        return f"{parent}.{key}"
    return f"{parent}[{json.dumps(key)}]"


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _check_json_value(value: object, source: str, path: str, role: str, uuid: str) -> None:
    if value is None or isinstance(value, bool | int | str):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigFileError.at(
                source, path, f"{value} is not a finite number", role=role, uuid=uuid
            )
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_json_value(item, source, _path(path, i), role, uuid)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ConfigFileError.at(
                    source, path, f"key {key!r} is not a string", role=role, uuid=uuid
                )
            _check_json_value(item, source, _path(path, key), role, uuid)
        return
    raise ConfigFileError.at(
        source, path, f"{_type_name(value)} is not a JSON value", role=role, uuid=uuid
    )


def _uuid_problem(uuid: object, exc: InvalidName) -> str:
    """Why *uuid* is refused, and what to write instead (EventStreamr allowed ``"uuid - 1"``)."""
    if not isinstance(uuid, str) or not uuid.strip() or len(uuid) > 64:
        return str(exc)
    bad = "".join(sorted({c for c in uuid if not (c.isascii() and (c.isalnum() or c in "._-"))}))
    suggestion = re.sub(r"-{2,}", "-", re.sub(r"[^A-Za-z0-9._-]", "-", uuid)).strip("-")
    return (
        f"instance uuid {uuid!r} holds {bad!r}; an instance uuid may hold only letters, "
        "digits, '-', '_' and '.' (1-64 characters), because it becomes part of file names "
        "($uuid, recording prefixes), command arguments and gossiped metadata, where spaces "
        f"and other characters would be split or misread; write {suggestion or 'uuid-1'!r}"
    )


def _decode_entry(
    data: object, source: str, path: str, role: str, uuid: str, default_timestamp: int
) -> RoleEntry:
    if not isinstance(data, Mapping):
        raise ConfigFileError.at(
            source,
            path,
            f"expected an object of options with a 'timestamp', found {_type_name(data)}",
            role=role,
            uuid=uuid,
        )
    timestamp: object = data.get(TIMESTAMP_KEY, default_timestamp)
    ts_path = _path(path, TIMESTAMP_KEY)
    if isinstance(timestamp, float) and timestamp.is_integer():
        timestamp = int(timestamp)
    if isinstance(timestamp, bool) or not isinstance(timestamp, int):
        raise ConfigFileError.at(
            source,
            ts_path,
            f"'timestamp' must be an integer (milliseconds since the Unix epoch), "
            f"found {_type_name(timestamp)} {timestamp!r}",
            role=role,
            uuid=uuid,
        )
    if not 0 <= timestamp <= _MAX_TIMESTAMP:
        raise ConfigFileError.at(
            source,
            ts_path,
            f"'timestamp' {timestamp} is out of range (0 to {_MAX_TIMESTAMP} milliseconds)",
            role=role,
            uuid=uuid,
        )
    deleted = data.get(DELETED_KEY, False)
    if not isinstance(deleted, bool):
        raise ConfigFileError.at(
            source,
            _path(path, DELETED_KEY),
            f"'{DELETED_KEY}' must be true or false, found {_type_name(deleted)}",
            role=role,
            uuid=uuid,
        )
    options: dict[str, Any] = {}
    for key, value in data.items():
        if key in (TIMESTAMP_KEY, DELETED_KEY):
            continue
        key_path = _path(path, key) if isinstance(key, str) else path
        if not isinstance(key, str) or not _OPTION_NAME_RE.match(key):
            raise ConfigFileError.at(
                source,
                key_path,
                f"option name {key!r} is not valid: it must start with a letter and hold only "
                "letters, digits and '_' (at most 64), so it can be used as $name in a command",
                role=role,
                uuid=uuid,
            )
        _check_json_value(value, source, key_path, role, uuid)
        options[key] = value
    if deleted and options:
        raise ConfigFileError.at(
            source,
            path,
            f"a removed instance ('{DELETED_KEY}': true) must have no options, found "
            f"{', '.join(sorted(options))}",
            role=role,
            uuid=uuid,
        )
    return RoleEntry(timestamp=timestamp, options=options, deleted=deleted)


def _decode_roles(
    data: object, source: str, path: str, default_timestamp: int
) -> list[tuple[str, str, RoleEntry]]:
    if not isinstance(data, Mapping):
        raise ConfigFileError.at(
            source,
            path,
            f"expected an object mapping role -> uuid -> options, found {_type_name(data)}",
        )
    entries: list[tuple[str, str, RoleEntry]] = []
    for role, instances in data.items():
        role_path = _path(path, role) if isinstance(role, str) else path
        try:
            check_name(role, "role name")
        except InvalidName as exc:
            raise ConfigFileError.at(source, role_path, str(exc)) from None
        if not isinstance(instances, Mapping):
            raise ConfigFileError.at(
                source,
                role_path,
                f"expected an object mapping uuid -> options for role {role!r}, "
                f"found {_type_name(instances)}",
                role=role,
            )
        for uuid, entry in instances.items():
            uuid_path = _path(role_path, uuid) if isinstance(uuid, str) else role_path
            try:
                check_name(uuid, "instance uuid")
            except InvalidName as exc:
                raise ConfigFileError.at(
                    source, uuid_path, _uuid_problem(uuid, exc), role=role
                ) from None
            entries.append(
                (role, uuid, _decode_entry(entry, source, uuid_path, role, uuid, default_timestamp))
            )
    return entries


def parse_json(text: str, source: str) -> object:
    """Decode JSON *text* read from *source*: the one JSON reader of ``roles/`` (config files,
    saved state, orders, process records).

    Raises :class:`~roles.ConfigFileError` naming *source* and the line and column.
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigFileError.at(
            source, f"line {exc.lineno} column {exc.colno}", f"invalid JSON: {exc.msg}"
        ) from None
    except RecursionError:
        raise ConfigFileError.at(source, "$", "invalid JSON: nested too deeply") from None


def parse_role_config(text: str, *, source: str, default_timestamp: int = 0) -> RoleConfig:
    """Parse the JSON text of a bare role configuration (role -> uuid -> options).

    Raises :class:`~roles.ConfigFileError` naming *source*, the place and the problem.
    """
    return RoleConfig.from_dict(
        parse_json(text, source), source=source, default_timestamp=default_timestamp
    )


def read_text_file(path: str | os.PathLike[str], what: str = "the file") -> str:
    """The UTF-8 text of *path*; raises :class:`~roles.ConfigFileError` naming it and what
    went wrong (:class:`FileNotFoundError` passes through, for callers to whom a missing file
    means "nothing saved yet")."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise
    except UnicodeDecodeError as exc:
        raise ConfigFileError.at(os.fspath(path), "$", f"not UTF-8 text: {exc.reason}") from None
    except OSError as exc:
        raise ConfigFileError.at(
            os.fspath(path), "$", f"cannot read {what}: {exc.strerror or exc}"
        ) from None


def _read_existing(path: str | os.PathLike[str]) -> str:
    try:
        return read_text_file(path)
    except FileNotFoundError as exc:
        raise ConfigFileError.at(
            os.fspath(path), "$", f"cannot read the file: {exc.strerror or exc}"
        ) from None


def read_json_file(path: str | os.PathLike[str], what: str = "the file") -> object:
    """:func:`read_text_file` then :func:`parse_json`."""
    return parse_json(read_text_file(path, what), os.fspath(path))


def load_role_config(path: str | os.PathLike[str], *, default_timestamp: int = 0) -> RoleConfig:
    """Load a bare role configuration file (EventStreamr's ``station_config.json``).

    Raises :class:`~roles.ConfigFileError` naming the file, the path inside it and the problem.
    """
    return parse_role_config(
        _read_existing(path), source=os.fspath(path), default_timestamp=default_timestamp
    )


def _frozen_strings(value: Mapping[str, str]) -> Mapping[str, str]:
    return types.MappingProxyType(dict(value))


def _abs_paths(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


_STATION_KEYS = ("roles", "blocked_roles", "variables", "allowed_roots", "env_allow")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


@attrs.frozen
class StationFile:
    """What a station file holds: the station's local policy and its starting roles.

    ``blocked_roles``: roles this station refuses to run whatever it is told;
    ``variables``: extra ``$name`` values for command templates (e.g. ``room``);
    ``allowed_roots``: absolute folders (besides the station's own data folder) where path
    options (``output_dir``, ``cwd``...) may point;
    ``env_allow``: environment variable names roles may set besides the default allow-list;
    ``roles``: the starting :class:`RoleConfig`.
    """

    roles: RoleConfig = RoleConfig()
    blocked_roles: frozenset[str] = frozenset()
    variables: Mapping[str, str] = attrs.field(
        factory=dict, converter=_frozen_strings, eq=lambda v: sorted(v.items())
    )
    allowed_roots: tuple[str, ...] = attrs.field(default=(), converter=_abs_paths)
    env_allow: frozenset[str] = frozenset()

    def to_dict(self) -> dict[str, Any]:
        """Return the file form."""
        return {
            "blocked_roles": sorted(self.blocked_roles),
            "variables": dict(self.variables),
            "allowed_roots": list(self.allowed_roots),
            "env_allow": sorted(self.env_allow),
            "roles": self.roles.to_dict(),
        }

    @classmethod
    def from_dict(
        cls, data: object, *, source: str = "station file", default_timestamp: int = 0
    ) -> StationFile:
        """Decode ``{"blocked_roles": [...], "variables": {...}, "allowed_roots": [...],
        "env_allow": [...], "roles": {...}}``.

        Raises :class:`~roles.ConfigFileError` naming *source*, the path and the problem.
        """
        if not isinstance(data, Mapping):
            raise ConfigFileError.at(
                source,
                "$",
                f"expected an object with 'roles' (and optionally 'blocked_roles', "
                f"'variables', 'allowed_roots', 'env_allow'), found {_type_name(data)}",
            )
        unknown = sorted(str(k) for k in data if k not in _STATION_KEYS)
        if unknown:
            raise ConfigFileError.at(
                source,
                _path("$", unknown[0]),
                f"unknown key {unknown[0]!r}; a station file has {', '.join(_STATION_KEYS)} "
                "(a bare role configuration goes under 'roles')",
            )
        blocked = _string_list(data, "blocked_roles", source)
        for i, name in enumerate(blocked):
            try:
                check_name(name, "blocked role")
            except InvalidName as exc:
                raise ConfigFileError.at(source, f"$.blocked_roles[{i}]", str(exc)) from None
        variables = data.get("variables", {})
        if not isinstance(variables, Mapping):
            raise ConfigFileError.at(
                source,
                "$.variables",
                f"expected an object of strings, found {_type_name(variables)}",
            )
        for key, value in variables.items():
            if not isinstance(key, str) or not _OPTION_NAME_RE.match(key):
                raise ConfigFileError.at(
                    source,
                    _path("$.variables", str(key)),
                    f"variable name {key!r} must start with a letter and hold only letters, "
                    "digits and '_'",
                )
            if not isinstance(value, str):
                raise ConfigFileError.at(
                    source,
                    _path("$.variables", key),
                    f"expected a string, found {_type_name(value)}",
                )
        roots = []
        for i, root in enumerate(_string_list(data, "allowed_roots", source)):
            if not os.path.isabs(root) or _CONTROL_RE.search(root):
                raise ConfigFileError.at(
                    source,
                    f"$.allowed_roots[{i}]",
                    f"{root!r} must be an absolute folder path without control characters",
                )
            roots.append(os.path.normpath(root))
        env_allow = _string_list(data, "env_allow", source)
        for i, name in enumerate(env_allow):
            if not _ENV_NAME_RE.match(name):
                raise ConfigFileError.at(
                    source,
                    f"$.env_allow[{i}]",
                    f"{name!r} is not an environment variable name (letters, digits, '_')",
                )
        roles = RoleConfig(
            _decode_roles(data.get("roles", {}), source, "$.roles", default_timestamp)
        )
        return cls(
            roles=roles,
            blocked_roles=frozenset(blocked),
            variables=variables,
            allowed_roots=tuple(roots),
            env_allow=frozenset(env_allow),
        )


def _string_list(data: Mapping[str, Any], key: str, source: str) -> list[str]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigFileError.at(
            source, f"$.{key}", f"expected an array of strings, found {_type_name(value)}"
        )
    return value


def load_station_file(path: str | os.PathLike[str], *, default_timestamp: int = 0) -> StationFile:
    """Load a station file (see :class:`StationFile`).

    Raises :class:`~roles.ConfigFileError` naming the file, the path inside it and the problem.
    """
    source = os.fspath(path)
    return StationFile.from_dict(
        parse_json(_read_existing(path), source), source=source, default_timestamp=default_timestamp
    )
